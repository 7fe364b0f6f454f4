"""The pages of hybrid records as runs, and as a set that is swept rather than built.

:func:`hybrid_extents` turns records into their runs (an extent per plain record, one per run
of set bits in a bitmap record).  Held whole, those runs are 16 bytes each: records of
several scales whose phases no widening joins (order 3 at 8 phases, order 20 at 4 phases: a
run per bit of ``0x55`` words) cost 107x to 225x the input that way; the union of records
at unrelated phases has no one-scale bit-block form at all, and extents next to bit blocks
turn the whole set into extents when one cuts a unit (one plain order-0 record among ``0x55``
records of order 3: 344x; issue 12).

:class:`HybridPageSet` keeps the records instead -- their start, order and bmap_len (10 bytes
a record) next to the message's own words -- and answers the reads a decoded message needs
(:meth:`~.pageset.PageSet.page_count`, ``n_extents``, ``min``/``max``, the runs for its text
and JSON, ``head``) by sweeping the records in start order, :data:`SWEEP_CHUNK` runs at a time:
each chunk's runs are merged with what the chunks before left open, and every run that ends
before the next record starts is final.  What stays open is bounded by the records that
reach past that start (a run of order ``k`` there is at least ``2**k`` frames long and lies
within ``504 * 2**k`` frames of it: at most ~505 runs per order), so the sweep's memory is
a constant, not the union's.  A sweep that ends with few runs (at most one extent per 16
bytes of the message) keeps them: the set is then in the extents form.  Any other use (set
algebra, ``starts``, membership) builds the set once in its ordinary form (``resolve``),
exactly as before; the set is the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .. import bitblocks as bb
from .. import extentarrays as xa
from ..pageset import PageSet, _same_runs
from . import bulk
from .hybridbits import gather, record_words

U64 = NDArray[np.uint64]

#: runs merged at a time by the sweep (records at most that many runs together hold; ~4 MB
#: of scratch)
SWEEP_CHUNK = 1 << 16
#: the decoder sweeps (rather than builds) a message whose records are extents only (no
#: scale of bit blocks pays) when they would cost more than this many bytes per input byte
#: (and always when extents would meet blocks: see wire/hybrid.py)
SWEEP_AT = 0.5


def hybrid_extents(words: U64, heads: NDArray[np.intp], recs: NDArray[np.intp],
                   start: U64, unit: U64, blen: U64) -> tuple[U64, U64]:
    """The pages of records ``recs`` as (first frame, count) in record order: a plain
    record is one block; in a bitmap record consecutive set bits are consecutive blocks,
    one extent per run (runs never cross from one record into the next)."""
    plain = recs[blen[recs] == 0]
    bm = recs[blen[recs] != 0]
    starts_l = [start[plain]]
    counts_l = [unit[plain]]
    for c0 in range(0, bm.size, 1 << 15):  # a fixed scratch: 2.3 MB of words at a time
        b = bm[c0:c0 + (1 << 15)]
        # the records' words laid end to end with a zero word after each record
        stream = np.zeros((b.size, 9), dtype=np.uint64)
        record_words(words, heads, b, blen, out=stream[:, :8])
        # read in place (a native uint64 array is "le" words on a little-endian host)
        first, run = bulk.bitmap_runs(stream.reshape(-1).astype("<u8", copy=False), 64, "le")
        del stream
        r = (first // np.uint64(9 * 64)).astype(np.intp)
        first -= r.astype(np.uint64) * np.uint64(9 * 64)  # block index in its record
        u = unit[b][r]
        # no overflow possible, so no check: start_pfn < 2^52, a block is at most 2^51 frames
        # (page_shift <= 63) and a bit index is < 8 * 63, so start + (bit + 1) * block < 2^61
        starts_l.append(start[b][r] + first * u)
        counts_l.append(run * u)
    if len(starts_l) == 1:  # plain records only: no second copy
        return starts_l[0].astype(np.uint64, copy=False), counts_l[0].astype(np.uint64,
                                                                             copy=False)
    return gather(starts_l), gather(counts_l)


def sweep_runs(words: U64, heads: NDArray[np.intp], start: U64, order: NDArray[np.uint8],
               blen: NDArray[np.uint8], chunk: int = SWEEP_CHUNK
               ) -> Iterator[tuple[U64, U64]]:
    """The union of the records' pages as canonical extents (first, last frame; sorted,
    merged, non-adjacent), in pieces, ascending: records in start order, as many at a time
    as hold at most ``chunk`` runs (record ``i``: head at ``words[heads[i]]``, ``start[i]``,
    ``2**order[i]`` frames a block, ``blen[i]`` bitmap bytes).  Memory: the start order (8
    bytes a record, none when the records are in order) plus a scratch of ``chunk`` runs
    and the open runs (see the module docstring)."""
    n = int(start.size)
    ordered = n < 2 or bool(np.all(start[1:] >= start[:-1]))
    by_start = None if ordered else np.argsort(start, kind="stable")
    held_s, held_l = xa.EMPTY, xa.EMPTY
    for c0, c1 in _spans(blen, by_start, chunk):
        recs = np.arange(c0, c1) if by_start is None else by_start[c0:c1]
        s, c = hybrid_extents(words, heads[recs], np.arange(c1 - c0), start[recs],
                              np.left_shift(np.uint64(1), order[recs].astype(np.uint64)),
                              blen[recs].astype(np.uint64))
        s, last = xa.merge(np.concatenate((held_s, s)),
                           np.concatenate((held_l, s + c - np.uint64(1))))
        if c1 == n:
            held_s, held_l = s, last
            break
        nxt = int(start[c1 if by_start is None else by_start[c1]])
        # final: runs that end before the frame just below the next record's start (a run
        # ending there would join a run of that record)
        k = int(np.searchsorted(last, np.uint64(nxt - 1), side="left")) if nxt else 0
        if k:
            yield s[:k], last[:k]
        held_s, held_l = s[k:], last[k:]
    if held_s.size:
        yield held_s, held_l


def _spans(blen: NDArray[np.uint8], by_start: NDArray[np.intp] | None, runs: int
           ) -> Iterator[tuple[int, int]]:
    """``(c0, c1)``: consecutive spans of the start order (``by_start``, or the records'
    own order) whose records hold at most ``runs`` runs together (a plain record one, a
    bitmap record at most ``4 * bmap_len``), or one record each where one holds more."""
    n = int(blen.size)
    for w0 in range(0, n, 1 << 16):
        w1 = min(n, w0 + (1 << 16))
        b = blen[w0:w1] if by_start is None else blen[by_start[w0:w1]]
        cap = np.cumsum(np.maximum(b.astype(np.int64) * 4, 1))
        cuts = np.searchsorted(cap, np.arange(runs, int(cap[-1]), runs), side="right")
        edges = np.unique(np.concatenate(([0], cuts, [w1 - w0]))).tolist()
        for a, z in pairwise(edges):  # unique: every span holds a record
            yield w0 + a, w0 + z


class HybridPageSet(PageSet):
    """A :class:`~.pageset.PageSet` of hybrid records, swept instead of built (see the
    module docstring): the reads that stream (runs, text, JSON, ``head``, counts, ``min``/
    ``max``, truth, hash) sweep the records; anything else (``is_dense`` too: a fact about
    the ordinary form) resolves the set once, through ``resolve``, and reads that.
    Equality compares runs (never resolves)."""

    __slots__ = ("_rec", "_resolve", "_stats")

    _rec: tuple[U64, NDArray[np.intp], U64, NDArray[np.uint8], NDArray[np.uint8]] | None
    _resolve: Callable[[], PageSet] | None
    #: (frames, runs, min, max), once swept
    _stats: tuple[int, int, int, int] | None

    def __init__(self, words: U64, heads: NDArray[np.intp], start: U64,
                 order: NDArray[np.uint8], blen: NDArray[np.uint8],
                 resolve: Callable[[], PageSet]) -> None:
        """The records' arrays as :func:`sweep_runs` takes them (held, not copied);
        ``resolve()`` builds the same set in the ordinary form."""
        # the base slots (_starts, _lasts, _blk, _full) stay unset until resolved
        self._rec = (words, heads, start, order, blen)
        self._resolve = resolve
        self._stats = None

    def __getattr__(self, name: str) -> Any:
        """The base form's slots, built on first use (only unset slots come here)."""
        if name not in ("_starts", "_lasts", "_blk", "_full") or self._resolve is None:
            raise AttributeError(name)
        ps = self._resolve()
        self._starts, self._lasts, self._blk = ps._starts, ps._lasts, ps._blk
        self._full = ps._full
        self._rec = self._resolve = None
        return getattr(self, name)

    def _iter_runs(self) -> Iterator[tuple[U64, U64]]:
        if self._rec is None:
            yield from super()._iter_runs()
            return
        frames = runs = 0
        lo = hi = -1
        # the runs are kept while they cost at most a byte per byte of the words: a union of
        # few runs (heavily overlapping records) becomes the extents form, read no more
        keep: list[tuple[U64, U64]] | None = []
        cap = self._rec[0].nbytes // bb.EXTENT_COST
        for s, last in sweep_runs(*self._rec):
            if lo < 0:
                lo = int(s[0])
            hi = int(last[-1])
            runs += int(s.size)
            # a piece's runs are disjoint frames below 2**62: no uint64 overflow
            frames += int((last - s).sum(dtype=np.uint64)) + int(s.size)
            if keep is not None and runs <= cap:
                keep.append((s, last))
            else:
                keep = None
            yield s, last
        self._stats = (frames, runs, lo, hi)  # swept to the end: the counts come free
        if keep is not None and self._rec is not None:
            self._starts = xa.ro(np.concatenate([k[0] for k in keep]) if keep else xa.EMPTY)
            self._lasts = xa.ro(np.concatenate([k[1] for k in keep]) if keep else xa.EMPTY)
            self._blk = self._full = None
            self._rec = self._resolve = None

    def _swept(self) -> tuple[int, int, int, int]:
        """(frames, runs, min, max) of the swept set (-1 for the ends of an empty one)."""
        if self._stats is None:
            for _ in self._iter_runs():
                pass
        assert self._stats is not None
        return self._stats

    @property
    def n_extents(self) -> int:
        return self._swept()[1] if self._rec is not None else super().n_extents

    def page_count(self) -> int:
        return self._swept()[0] if self._rec is not None else super().page_count()

    def __bool__(self) -> bool:
        return self._swept()[1] > 0 if self._rec is not None else super().__bool__()

    def __eq__(self, other: object) -> bool:
        if self._rec is None or not isinstance(other, PageSet):
            return super().__eq__(other)
        # run by run, both swept or read in pieces (also when ``other`` is on the left:
        # Python asks the subclass first)
        return (self.page_count() == other.page_count()
                and _same_runs(self._iter_runs(), other._iter_runs()))

    __hash__ = PageSet.__hash__

    def min(self) -> int:
        if self._rec is None or not self:
            return super().min()
        return self._swept()[2]

    def max(self) -> int:
        if self._rec is None or not self:
            return super().max()
        return self._swept()[3]


__all__ = ["SWEEP_AT", "SWEEP_CHUNK", "HybridPageSet", "hybrid_extents", "sweep_runs"]
