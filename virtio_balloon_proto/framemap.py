"""Mutable frame sets whose updates cost what changed, not what is held (issue 13).

A :class:`~.pageset.PageSet` is immutable: ``balloon = balloon | pages`` re-merges the whole
balloon on every inflate, so a replay of B buffers into a balloon of P frames costs O(B * P).
A :class:`FrameMap` is the mutable counterpart for the replay loop and the oracle: one byte per
4 KiB frame below ``span`` (guest RAM: what a balloon can legitimately hold), plus a PageSet
for frames at or above it (what only a broken device or driver names; exact, just slower).
Adding, removing or looking up a set of ``k`` frames costs O(k) (big extents as slices, small
ones as one vectorised fancy index); the size is kept as a counter.

:class:`FrameJournal` adds "what changed since I last asked" on top: the reference device
reports its balloon as a delta per step (``observe_changes``), and a full export only at
checkpoints.

Memory: one byte per frame up to the highest frame held (a 128 GiB guest: 33.5 MB per map);
``span`` is where the map starts (it grows, doubling, when a higher frame is added) and is
capped at :data:`MAX_SPAN` frames (256 GiB of guest RAM); frames above the cap live in the
PageSet part, so a hostile frame number costs a set entry, never a huge allocation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from .extentarrays import U64
from .pageset import PageSet, union_all

#: frames held in the byte map at most (256 GiB of 4 KiB frames: 64 MiB of map)
MAX_SPAN = 1 << 26
#: an extent at least this long is handled as one slice, shorter ones as a fancy index
_SLICE_AT = 64
#: the empty set FrameJournal answers (PageSets are immutable: one serves every answer)
_NONE = PageSet.empty()


def _split(ps: PageSet, span: int) -> tuple[bool, PageSet]:
    """(whether ``ps`` has frames below span, its frames at or above span).  Reads only the
    ends of ``ps`` (a block-form or swept set is not expanded into extents); the part above
    is ``ps`` itself unless the set straddles the span (a hostile mix: then a window)."""
    if not ps or span <= 0:
        return False, ps
    if ps.max() < span:
        return True, _NONE
    if ps.min() >= span:
        return False, ps
    return True, _Window(ps, span, 1 << 64)


class _Window(PageSet):
    """The frames of ``base`` in ``[first, stop)``, read by clipping ``base``'s runs: the
    part of a block-form or swept set on one side of a byte map's span, not built (a hostile
    order-20 record names 2**20 frames per 8 bytes: as extents, the part above the span of a
    7 MiB buffer is ~470 MB).  The reads that stream (runs, counts, ends, truth, hash) clip
    ``base``'s runs; anything else (set algebra with a non-empty set, ``starts``, membership)
    builds ``base.window(...)`` once and reads that, as :class:`~.wire.hybridset.
    HybridPageSet` does."""

    __slots__ = ("_base", "_first", "_frames", "_stats", "_stop")

    _base: PageSet | None
    #: (frames, runs, min, max), once swept
    _stats: tuple[int, int, int, int] | None
    #: how many frames the window holds, when the FrameMap counted them (no sweep then)
    _frames: int | None

    def __init__(self, base: PageSet, first: int, stop: int) -> None:
        # the base slots (_starts, _lasts, _blk, _full) stay unset until built
        self._base, self._first, self._stop = base, first, stop
        self._stats = self._frames = None

    def __getattr__(self, name: str) -> Any:
        """The base form's slots, built on first use (only unset slots come here)."""
        if name not in ("_starts", "_lasts", "_blk", "_full") or self._base is None:
            raise AttributeError(name)
        ps = self._base.window(self._first, self._stop - self._first)
        self._starts, self._lasts, self._blk = ps._starts, ps._lasts, ps._blk
        self._full = ps._full
        self._base = None
        return getattr(self, name)

    def _iter_runs(self) -> Iterator[tuple[U64, U64]]:
        if self._base is None:
            yield from super()._iter_runs()
            return
        lo, top = np.uint64(self._first), np.uint64(self._stop - 1)
        frames = runs = 0
        first = last_frame = -1
        for s, last in self._base._iter_runs():
            if not s.size or last[-1] < lo:
                continue
            if s[0] > top:
                break
            a = int(np.searchsorted(last, lo))  # the first run ending at or above lo
            b = int(np.searchsorted(s, top, side="right"))  # runs starting at or below top
            s, last = s[a:b], last[a:b]
            if not s.size:
                continue
            if s[0] < lo:
                s = s.copy()
                s[0] = lo
            if last[-1] > top:
                last = last.copy()
                last[-1] = top
            if first < 0:
                first = int(s[0])
            last_frame = int(last[-1])
            runs += int(s.size)
            frames += int((last - s).sum(dtype=np.uint64)) + int(s.size)
            yield s, last
        self._stats = (frames, runs, first, last_frame)

    def _swept(self) -> tuple[int, int, int, int]:
        """(frames, runs, min, max) (-1 for the ends of an empty window)."""
        if self._stats is None:
            for _ in self._iter_runs():
                pass
        assert self._stats is not None
        return self._stats

    @property
    def n_extents(self) -> int:
        return self._swept()[1] if self._base is not None else super().n_extents

    def page_count(self) -> int:
        if self._base is None:
            return super().page_count()
        return self._frames if self._frames is not None else self._swept()[0]

    def __bool__(self) -> bool:
        base = self._base
        if base is None:
            return super().__bool__()
        if self._frames is not None:
            return self._frames > 0
        if not base:
            return False
        if self._stop == 1 << 64:  # one-sided windows: the ends of the base tell
            return base.max() >= self._first
        if self._first == 0:
            return base.min() < self._stop
        return self._swept()[1] > 0

    def min(self) -> int:
        if self._base is None or not self:
            return super().min()
        return self._swept()[2]

    def max(self) -> int:
        if self._base is None or not self:
            return super().max()
        return self._swept()[3]


#: runs handled at a time by the chunked paths (the frames of the short ones as one intp
#: array: at most 63 frames a run, so a few MiB of scratch at most)
_CHUNK_RUNS = 1 << 13


def _runs_below(ps: PageSet, span: int) -> Iterator[tuple[U64, U64]]:
    """The runs of ``ps`` clipped to frames below ``span``, ascending, in pieces of at most
    :data:`_CHUNK_RUNS` runs, read through ``ps._iter_runs()``: a block-form set is unpacked
    a chunk of blocks at a time and a swept hybrid set is swept, never expanded whole."""
    sp = np.uint64(span)
    for s, last in ps._iter_runs():
        if not s.size:
            continue
        if s[0] >= sp:
            return
        cut = s.size if last[-1] < sp else int(np.searchsorted(s, sp))
        for i in range(0, cut, _CHUNK_RUNS):
            a, b = s[i:min(cut, i + _CHUNK_RUNS)], last[i:min(cut, i + _CHUNK_RUNS)]
            yield a, (np.minimum(b, sp - np.uint64(1)) if b[-1] >= sp else b)
        if cut < s.size or last[-1] >= sp:
            return


_Pieces = tuple[npt.NDArray[np.intp], list[tuple[int, int]]]

#: the last few :func:`_pieces_below` answers for a set held whole below the span, by
#: PageSet (immutable: the answer cannot go stale) and its top frame; the oracle and the
#: journal ask twice for the same set within a step
_PIECES: list[tuple[PageSet, int, _Pieces]] = []
_PIECES_KEPT = 4
_PIECES_MAX = 1 << 16


def _pieces_below(ps: PageSet, span: int) -> Iterator[_Pieces]:
    """The frames of ``ps`` below ``span`` in pieces: per chunk of runs, the frames of the
    short extents (one intp array, ascending, read-only) and the long extents as
    ``(start, stop)`` slices.  Memory O(chunk), whatever the set holds (issue 12)."""
    for held, top, answer in _PIECES:
        if held is ps and top < span:
            yield answer
            return
    first: _Pieces | None = None
    n = 0
    for s, last in _runs_below(ps, span):
        answer = _pieces_of(s, last)
        answer[0].flags.writeable = False
        n += 1
        if n == 1:
            first = answer
        yield answer
    if n == 1 and first is not None and first[0].size <= _PIECES_MAX and ps.max() < span:
        # one chunk, the whole set: a step's pages, never a whole balloon's frames
        _PIECES.append((ps, ps.max(), first))
        if len(_PIECES) > _PIECES_KEPT:
            del _PIECES[0]


def _pieces_of(st: U64, la: U64) -> _Pieces:
    if la is st:  # every extent one frame (scattered pages): the starts
        return st.astype(np.intp), []
    starts = st.astype(np.intp)
    counts = (la - st).astype(np.intp) + 1
    big = counts >= _SLICE_AT
    slices: list[tuple[int, int]] = []
    if big.any():
        slices = [(s, s + c) for s, c in zip(starts[big].tolist(), counts[big].tolist(),
                                              strict=True)]
        starts, counts = starts[~big], counts[~big]
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.intp), slices
    if total == counts.size:  # every short extent one frame: the starts
        return starts, slices
    # frames = start of each extent repeated count times, plus the offset inside it
    offs = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return offs + np.arange(total, dtype=np.intp), slices


def _frames_of(ps: PageSet, span: int, chunks: int) -> list[npt.NDArray[np.intp]]:
    """Every frame of the first ``chunks`` chunks of :func:`_pieces_below`, as arrays."""
    out: list[npt.NDArray[np.intp]] = []
    for k, (idx, slices) in enumerate(_pieces_below(ps, span)):
        if k == chunks:
            break
        if idx.size:
            out.append(idx)
        out += [np.arange(s, e, dtype=np.intp) for s, e in slices]
    return out


def extent_list(ps: PageSet) -> list[list[int]]:
    """``ps.extents()`` (the JSON form ``[[first, count], ...]`` of Python ints), built by numpy
    in one ``tolist`` instead of a Python loop over the extents (3x faster at 10^5 extents)."""
    if not ps:
        return []
    out: list[list[int]] = np.column_stack((ps.starts, ps.counts)).tolist()
    return out


class FrameMap:
    """A mutable set of 4 KiB frames (see module docstring).  ``len()`` is O(1)."""

    __slots__ = ("_count", "_map", "_over", "span")

    def __init__(self, span: int = 0) -> None:
        # ``span`` is a hint: at most 1 Mi frames are allocated up front, the rest on demand
        # (guest RAM at 8 TiB must not cost a 64 MiB map for a balloon of a few pages)
        self.span = max(0, min(int(span), MAX_SPAN, 1 << 20))
        self._map = np.zeros(self.span, dtype=np.uint8)
        self._over = PageSet.empty()
        self._count = 0

    def __len__(self) -> int:
        return self._count + len(self._over)

    def __bool__(self) -> bool:
        return len(self) > 0

    # --- updates ------------------------------------------------------------------------------
    def _grow(self, ps: PageSet) -> None:
        """Widen the byte map to cover ``ps`` (up to MAX_SPAN), doubling.  Reads the ends of
        ``ps`` only, unless it straddles MAX_SPAN (then its runs below, in pieces)."""
        if self.span >= MAX_SPAN or ps.max() < self.span:
            return
        if ps.min() >= MAX_SPAN:
            return  # only frames above the cap: the PageSet part takes them
        top = ps.max()
        if top >= MAX_SPAN:
            for _, last in _runs_below(ps, MAX_SPAN):
                top = int(last[-1])
        self._widen(min(top + 1, MAX_SPAN))

    def _widen(self, top: int) -> None:
        if top <= self.span:
            return
        span = min(MAX_SPAN, max(top, 2 * self.span, 1 << 16))
        grown = np.zeros(span, dtype=np.uint8)
        grown[:self.span] = self._map
        moved = self._over.window(self.span, span - self.span) if self._over else self._over
        self._map, self.span = grown, span
        if moved:
            self._over = self._over - moved
            self._count += len(moved)
            for s, n in moved:
                self._map[s:s + n] = 1

    def add(self, ps: PageSet) -> int:
        """Put the frames of ``ps`` in; returns how many were not in before."""
        if ps:
            self._grow(ps)
        low, high = _split(ps, self.span)
        new = below = 0
        for idx, slices in _pieces_below(ps, self.span) if low else ():
            below += int(idx.size)
            if idx.size:
                new += int(idx.size - np.count_nonzero(self._map[idx]))
                self._map[idx] = 1
            for s, e in slices:
                below += e - s
                seg = self._map[s:e]
                new += (e - s) - int(np.count_nonzero(seg))
                seg[:] = 1
        self._count += new
        if isinstance(high, _Window):  # its size, from what the map took: no sweep
            high._frames = ps.page_count() - below
        if high:
            before = len(self._over)
            self._over = self._over | high
            new += len(self._over) - before
        return new

    def add_frames(self, frames: npt.NDArray[np.unsignedinteger[Any]]) -> int:
        """:meth:`add` of a 1-D unsigned array of frames, each at most once (a PFN buffer
        without repeats: :meth:`~.codecs.DecodedBuffer.frames`) -- one fancy index, no set;
        returns how many were not in before."""
        if not frames.size:
            return 0
        top = int(frames.max())
        if top >= self.span:
            self._widen(min(top + 1, MAX_SPAN))
            if top >= self.span:  # beyond MAX_SPAN: the set part takes those
                return self.add(PageSet.from_frames(frames))
        new = int(frames.size - np.count_nonzero(self._map[frames]))
        self._map[frames] = 1
        self._count += new
        return new

    def remove(self, ps: PageSet) -> int:
        """Take the frames of ``ps`` out; returns how many were in."""
        low, high = _split(ps, self.span)
        gone = 0
        for idx, slices in _pieces_below(ps, self.span) if low else ():
            if idx.size:
                gone += int(np.count_nonzero(self._map[idx]))
                self._map[idx] = 0
            for s, e in slices:
                seg = self._map[s:e]
                gone += int(np.count_nonzero(seg))
                seg[:] = 0
        self._count -= gone
        if high and self._over:
            before = len(self._over)
            self._over = self._over - high
            gone += before - len(self._over)
        return gone

    def set_to(self, ps: PageSet, value: int) -> tuple[npt.NDArray[np.intp] | PageSet, PageSet]:
        """Put the frames of ``ps`` in (``value`` 1) or take them out (0); returns the frames
        that changed: those below the span (an intp array, or the part of ``ps`` below the
        span itself when all of it changed: the usual inflate), and those above (a PageSet)."""
        if value and ps:
            self._grow(ps)
        low, high = _split(ps, self.span)
        parts: list[npt.NDArray[np.intp]] = []
        total = n = 0
        done = 0  # leading chunks that changed whole: their frames are not kept (yet)
        for k, (idx, slices) in enumerate(_pieces_below(ps, self.span) if low else ()):
            size = int(idx.size) + sum(e - s for s, e in slices)
            total += size
            hits: list[npt.NDArray[np.intp]] = []
            if idx.size:
                hit = idx[self._map[idx] != value]
                if hit.size:
                    self._map[hit] = value
                    hits.append(hit)
            for s, e in slices:
                seg = self._map[s:e]
                hit = np.flatnonzero(seg != value)
                if hit.size:
                    seg[hit] = value
                    hits.append(hit + s)
            got = sum(int(h.size) for h in hits)
            n += got
            if done == k and got == size:
                done += 1  # still all changed: the answer may be the set itself
                continue
            if done > 0:  # the first chunk not changed whole: list the chunks before it
                parts += _frames_of(ps, self.span, done)
                done = -1
            parts += hits
        self._count += n if value else -n
        changed: npt.NDArray[np.intp] | PageSet
        if isinstance(high, _Window):
            high._frames = ps.page_count() - total
        if n and n == total:
            if high:
                changed = _Window(ps, 0, self.span)
                changed._frames = total
            else:
                changed = ps
        else:
            changed = (parts[0] if len(parts) == 1 else np.concatenate(parts) if parts
                       else np.zeros(0, dtype=np.intp))
        moved = PageSet.empty()
        if high and value:
            moved = high - self._over
            self._over = self._over | high
        elif high and self._over:
            moved = high & self._over
            self._over = self._over - high
        return changed, moved

    def set_frames_to(self, frames: npt.NDArray[np.unsignedinteger[Any]],
                      value: int) -> npt.NDArray[np.intp] | None:
        """:meth:`set_to` of a 1-D array of DISTINCT frames, by one fancy index (a PFN buffer
        without repeats: no page set built); returns the frames that changed.  None, with
        nothing done, when the byte map cannot take them all: a frame at or above
        :data:`MAX_SPAN`, or (``value`` 0) at or above the span, where the set part may hold
        it -- use :meth:`set_to` then.  Repeated frames would be counted twice."""
        if not frames.size:
            return np.zeros(0, dtype=np.intp)
        top = int(frames.max())
        if top >= (MAX_SPAN if value else self.span):
            return None
        if top >= self.span:
            self._widen(top + 1)  # moves the set part's frames below the new span into it
        idx = frames.astype(np.intp)
        hit: npt.NDArray[np.intp] = idx[self._map[idx] != value]
        if hit.size:
            self._map[hit] = value
            self._count += int(hit.size) if value else -int(hit.size)
        return hit

    # --- queries ------------------------------------------------------------------------------
    def mask(self, ps: PageSet) -> PageSet:
        """The frames of ``ps`` that are in the map (``ps & self``), in O(len(ps))."""
        low, high = _split(ps, self.span)
        parts: list[PageSet] = []
        for idx, slices in _pieces_below(ps, self.span) if low else ():
            if idx.size:
                hit = idx[self._map[idx] != 0]
                if hit.size:
                    parts.append(PageSet.from_frames(hit.astype(np.uint64)))
            for s, e in slices:
                hit = np.flatnonzero(self._map[s:e])
                if hit.size:
                    parts.append(PageSet.from_frames((hit + s).astype(np.uint64)))
        if high and self._over:
            parts.append(high & self._over)
        return union_all(parts)

    def count_in(self, ps: PageSet) -> int:
        """``len(ps & self)`` without building the set."""
        low, high = _split(ps, self.span)
        n = 0
        for idx, slices in _pieces_below(ps, self.span) if low else ():
            if idx.size:
                n += int(np.count_nonzero(self._map[idx]))
            for s, e in slices:
                n += int(np.count_nonzero(self._map[s:e]))
        if high and self._over:
            n += len(high & self._over)
        return n

    def differs(self, other: FrameMap, where: PageSet) -> PageSet:
        """The frames of ``where`` in exactly one of ``self`` and ``other`` -- in O(len(where)),
        and without building a set when there are none (the usual answer)."""
        self._widen(other.span)
        other._widen(self.span)
        low, high = _split(where, self.span)
        hits: list[npt.NDArray[np.intp]] = []
        for idx, slices in _pieces_below(where, self.span) if low else ():
            if idx.size:
                d = idx[self._map[idx] != other._map[idx]]
                if d.size:
                    hits.append(d)
            for s, e in slices:
                d = np.flatnonzero(self._map[s:e] != other._map[s:e])
                if d.size:
                    hits.append(d + s)
        out = PageSet.from_frames(np.concatenate(hits).astype(np.uint64)) if hits else None
        if high and (self._over or other._over):
            x = (high & self._over) ^ (high & other._over)
            out = x if out is None else out | x
        return out if out is not None else PageSet.empty()

    def differs_frames(self, other: FrameMap,
                       frames: npt.NDArray[np.unsignedinteger[Any]]) -> PageSet:
        """:meth:`differs` where ``where`` is a 1-D array of frames (a PFN buffer's, as
        :meth:`add_frames` takes them): one fancy index, no set built for ``where``."""
        if not frames.size:
            return PageSet.empty()
        self._widen(other.span)
        other._widen(self.span)
        if int(frames.max()) >= self.span:  # the set parts may hold some: the general path
            return self.differs(other, PageSet.from_frames(frames))
        idx = frames.astype(np.intp)
        d = idx[self._map[idx] != other._map[idx]]
        return PageSet.from_frames(d.astype(np.uint64)) if d.size else PageSet.empty()

    def to_pageset(self) -> PageSet:
        """The whole set as a PageSet: O(span), for checkpoints and messages only."""
        low = PageSet.empty()
        if self._count:
            # the runs of the byte map: memory O(runs), not a uint64 per frame held (a full
            # 128 GiB balloon was 2 x 268 MB of frame arrays at the checkpoint)
            low = PageSet._from_bit_flags(self._map, 0, 1)
        return low | self._over if self._over else low

    def replace(self, ps: PageSet) -> PageSet:
        """Make the map hold exactly ``ps``; returns the frames that changed (a full
        observation at a checkpoint: O(span + len(ps)))."""
        cur = self.to_pageset()
        changed = cur ^ ps
        self.remove(cur - ps)
        self.add(ps - cur)
        return changed


class FrameJournal:
    """A FrameMap that also answers "what changed since the last :meth:`changes` call".

    Each update keeps the frames it really changed (a frame is only ever changed from out to
    in or back), so :meth:`changes` costs O(frames changed since the last call) and needs no
    second map of the previous state: a frame changed an odd number of times since then is
    in the answer (added if it is in the map now, removed if not), an even number is not.
    """

    __slots__ = ("_changed", "_kinds", "_log", "now")

    def __init__(self, span: int = 0, *, log: bool = True) -> None:
        self.now = FrameMap(span)
        #: False: keep no change log (a holder that never asks for changes: ``trace synth``'s
        #: device, whose log would grow by 8 bytes a frame for the whole run)
        self._log = log
        #: the frames each update changed, in update order (arrays of frames below the map's
        #: span, or page sets)
        self._changed: list[npt.NDArray[np.intp] | PageSet] = []
        #: the directions of the updates since the last call: 1 added, 0 removed
        self._kinds: set[int] = set()

    def _note(self, low: npt.NDArray[np.intp] | PageSet, high: PageSet, value: int) -> int:
        n = len(low) if isinstance(low, PageSet) else int(low.size)
        if not self._log:
            return n + len(high)
        if n:
            self._changed.append(low)
            self._kinds.add(value)
        if high:
            self._changed.append(high)
            self._kinds.add(value)
            n += len(high)
        return n

    def add(self, ps: PageSet) -> int:
        return self._note(*self.now.set_to(ps, 1), 1)

    def remove(self, ps: PageSet) -> int:
        return self._note(*self.now.set_to(ps, 0), 0)

    def set_frames(self, frames: npt.NDArray[np.unsignedinteger[Any]], value: int) -> int:
        """:meth:`add` (``value`` 1) or :meth:`remove` (0) of a 1-D array of distinct frames
        (a PFN buffer without repeats), through :meth:`FrameMap.set_frames_to`."""
        hit = self.now.set_frames_to(frames, value)
        if hit is None:
            ps = PageSet.from_frames(frames)
            return self.add(ps) if value else self.remove(ps)
        return self._note(hit, _NONE, value)

    def changes(self) -> tuple[PageSet, PageSet]:
        """(frames added, frames removed) since the previous call (or creation), netted: a
        frame added and removed again in between is in neither.  O(frames changed).  An
        empty answer is one shared empty PageSet (a replay holds one per step)."""
        if not self._log:
            raise RuntimeError("this FrameJournal keeps no change log (log=False)")
        parts, kinds = self._changed, self._kinds
        self._changed, self._kinds = [], set()
        if not kinds:
            return _NONE, _NONE
        sets = [p for p in parts if isinstance(p, PageSet)]
        arrays = [p for p in parts if not isinstance(p, PageSet)]
        if arrays:
            sets.append(PageSet.from_frames(
                (arrays[0] if len(arrays) == 1 else np.concatenate(arrays)).astype(np.uint64)))
        if len(kinds) == 1:
            # one direction only: no frame changed twice (an added frame is in the map, so a
            # later add cannot change it again), the frames are the answer as they are
            ps = sets[0] if len(sets) == 1 else union_all(sets)
            return (ps, _NONE) if 1 in kinds else (_NONE, ps)
        # both directions: keep the frames changed an odd number of times
        parity = PageSet.empty()
        for p in parts:
            parity = parity ^ (p if isinstance(p, PageSet)
                               else PageSet.from_frames(p.astype(np.uint64)))
        added = self.now.mask(parity)
        return added or _NONE, (parity - added) or _NONE
