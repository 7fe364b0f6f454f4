"""PageSet: an immutable set of 4 KiB frame numbers that stays fast at millions of pages.

Every balloon payload names pages: PFN arrays (``__virtio32`` frame numbers, PROTOCOL.md §3),
v3 bitmaps (bit ``n`` is page ``start_pfn + n``), hybrid pfn+order records and free-page
ranges.  A PageSet is what they all decode to and what every encoder starts from.

Two forms, one set (equality, hashing and every operation ignore which one holds it):

* **extents** (:mod:`.extentarrays`): sorted, merged, non-adjacent inclusive extents in two
  read-only ``uint64`` arrays -- the balloon's usual shapes (an inflate of 7 GiB is a few
  hundred extents, a bitmap of free pages a few thousand).  Measured against pyroaring
  (bench/RESULTS.md), extents win on them and need no compiled dependency.
* **extents + bit blocks** (:mod:`.bitblocks`): where pages alternate (a bitmap of ``0x55``
  bytes is one extent per page, 16 bytes per bit on the wire), the dense part is held as
  512-frame blocks of bits and the rest as extents that touch none of those blocks.  The
  producers (:meth:`PageSet.from_bitmap`, the wire decoders, set algebra) pick the form by
  :func:`~.bitblocks.dense_is_cheaper`, so memory follows the input (issue 12: <= 16x).
  The blocks may be *scaled* (:mod:`.scaledblocks`): a bit for a unit of ``2**k`` frames,
  for bitmaps whose bits name pages above 4 KiB (v3 misc, hybrid order >= 1).

Counting, membership, ``min``/``max``, the text form and set algebra work on either form
without expanding it; ``starts``/``lasts``/``counts`` and the encoders expand blocks into
extents on demand (cached), which is what their callers asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from . import bitblocks as bb
from . import extentarrays as xa
from . import scaledblocks as sb
from .bitblocks import Blocks
from .errors import DecodeError, EncodeError, UsageError
from .extentarrays import MAX_FRAME, U64, WordOrder

__all__ = [
    "MAX_FRAME",
    "Extent",
    "FramesWithDuplicates",
    "PageSet",
    "count_duplicates",
]

#: Default cap on arrays a PageSet materialises (frames, bits, blocks): 2**28 entries is a
#: 1 TiB guest in 4 KiB frames and 2 GiB of uint64 - beyond that the caller must opt in.
DEFAULT_LIMIT = 1 << 28


class Extent(NamedTuple):
    """``npages`` consecutive frames from ``first`` (the JSON form ``[first, count]``; the
    field is not called ``count`` because that would shadow ``tuple.count``)."""

    first: int
    npages: int


@dataclass(frozen=True, slots=True)
class FramesWithDuplicates:
    """What :meth:`PageSet.from_frames_counted` found in a frame array.

    ``duplicates`` is how many entries repeat an earlier one (``len(arr) - len(pages)``);
    ``duplicated`` the frames that appear more than once.  Decoders turn a non-zero count into
    the "page twice in one message" finding.
    """

    pages: PageSet
    duplicates: int
    duplicated: PageSet



#: Frame arrays at least this long whose span is at most DENSE_SPAN_FACTOR times their
#: length take the counting path (a byte per frame of the span instead of a sort).
DENSE_MIN = 4096
DENSE_SPAN_FACTOR = 16
DENSE_MAX_SPAN = 1 << 28


def _dense_path(a: npt.NDArray[Any]) -> FramesWithDuplicates | None:
    """Counting sort for frame arrays that cover a bounded span (an inflate: millions of
    PFNs inside a guest's few million frames).  Marking each frame in a byte array is O(n)
    scattered writes, several times faster than an O(n log n) sort, and the run edges then
    come from one compare over the span - the same pass as :meth:`PageSet.from_bitmap`."""
    n = a.size
    if n < DENSE_MIN:
        return None
    lo = int(a.min())
    hi = int(a.max())
    span = hi - lo + 1
    if span > DENSE_SPAN_FACTOR * n or span > DENSE_MAX_SPAN:
        return None
    # index without subtracting when the span starts near 0 (saves a pass over the frames)
    off = 0 if lo <= span else lo
    idx = a if off == 0 else a - a.dtype.type(off)
    flags = np.zeros(span + (lo - off), dtype=np.uint8)
    flags[idx] = 1
    ndup = n - int(np.count_nonzero(flags))
    pages = PageSet._from_bit_flags(flags, off, 1)
    if ndup:
        counts = np.bincount(idx.astype(np.intp), minlength=flags.size)
        dupped = PageSet._from_bit_flags((counts > 1).view(np.uint8), off, 1)
    else:
        dupped = PageSet()
    return FramesWithDuplicates(pages, ndup, dupped)


# --------------------------------------------------------------------------- PageSet


class PageSet:
    """An immutable set of 4 KiB frame numbers (uint64): merged extents, plus bit blocks
    where pages alternate (see the module docstring)."""

    __slots__ = ("_blk", "_full", "_lasts", "_starts")

    #: extents; when ``_blk`` is set, only those outside every block of ``_blk``
    _starts: U64
    _lasts: U64
    _blk: Blocks | None
    #: the whole set as extents, once asked for (only ever set when ``_blk`` is)
    _full: tuple[U64, U64] | None

    # ---- construction -------------------------------------------------------------

    def __init__(self) -> None:
        """The empty set; use the ``from_*`` constructors for anything else."""
        self._starts = xa.EMPTY
        self._lasts = xa.EMPTY
        self._blk = None
        self._full = None

    @classmethod
    def _trusted(cls, starts: U64, lasts: U64) -> PageSet:
        """Wrap arrays already sorted, merged and non-adjacent (no checks)."""
        self = cls.__new__(cls)
        self._starts = xa.ro(starts)
        self._lasts = xa.ro(lasts)
        self._blk = None
        self._full = None
        return self

    @classmethod
    def _from_parts(cls, starts: U64, lasts: U64, blk: Blocks | None) -> PageSet:
        """Extents (merged, touching no block of ``blk``) plus blocks, in the cheaper form."""
        if blk is None:
            return cls._trusted(starts, lasts)
        if (blk.shift and not sb.fits(blk)) or not bb.dense_is_cheaper(bb.run_count(blk),
                                                                       len(blk)):
            return cls._trusted(*bb.runs_to_extents(starts, lasts, blk))
        self = cls._trusted(starts, lasts)
        self._blk = blk
        return self

    @classmethod
    def from_le_bits(cls, bits: npt.NDArray[np.uint8], base: int, nbits: int) -> PageSet:
        """Frames ``base + i`` for each set bit ``i < nbits`` of a little-endian bit string
        (bit ``i`` is bit ``i % 8`` of byte ``i // 8``: a v3 bitmap of le words), in
        whichever form is smaller.  DecodeError if a set bit lies beyond frame 2**64-1."""
        return cls.from_le_units(bits, base, nbits)

    @classmethod
    def from_le_units(cls, bits: npt.NDArray[np.uint8], base: int, nbits: int,
                      shift: int = 0, phase: int = 0) -> PageSet:
        """:meth:`from_le_bits` for pages of ``2**shift`` frames: set bit ``i < nbits``
        marks the frames ``phase + (base + i) * 2**shift`` to ``phase + (base + i + 1) *
        2**shift - 1`` (v3 misc: ``base`` start_pfn, phase 0; hybrid order k: ``base``
        start_pfn >> k, ``phase`` start_pfn mod 2**k).  Held as scaled bit blocks when they
        are smaller than the extents (:mod:`.scaledblocks`).  ``0 <= phase < 2**shift``;
        DecodeError if a marked frame lies beyond 2**64-1."""
        if not isinstance(shift, int) or not 0 <= shift <= 63 or not isinstance(phase, int) \
                or not 0 <= phase < 1 << shift:
            raise UsageError(f"bad scale shift={shift!r} phase={phase!r}", field="unit")
        raw = np.asarray(bits, dtype=np.uint8).reshape(-1)
        nbits = min(nbits, raw.size * 8)
        full, rem = divmod(nbits, 8)
        k = bb.last_nonzero(raw[:full])
        top = k * 8 + int(raw[k]).bit_length() - 1 if k >= 0 else -1
        if rem and raw[full] & ((1 << rem) - 1):
            top = full * 8 + (int(raw[full]) & ((1 << rem) - 1)).bit_length() - 1
        if top < 0:
            return cls()
        last = phase + ((base + top + 1) << shift) - 1
        if last > MAX_FRAME:
            raise DecodeError(f"bitmap marks frames up to {last}, beyond 2**64-1",
                              field="base")
        blk = bb.from_le_bits(raw, base, top + 1)  # in units
        if blk is not None and shift:
            blk = bb.Blocks(blk.idx, blk.bits, shift, phase)
        return cls._from_parts(xa.EMPTY, xa.EMPTY, blk)

    @classmethod
    def from_blocks(cls, idx: npt.NDArray[np.uint64], rows: npt.NDArray[np.uint8],
                    shift: int = 0, phase: int = 0) -> PageSet:
        """Frames ``idx[r] * 512 + j`` for each set bit ``j`` (bit ``j % 8`` of byte
        ``j // 8``) of row ``r`` of ``rows`` ((n, 64) uint8); ``idx`` sorted, unique, below
        2**55.  In whichever form is smaller.  With ``shift``/``phase`` each bit is the unit
        ``u = idx[r] * 512 + j``, the ``2**shift`` frames from ``phase + u * 2**shift``
        (every set unit must lie inside 0..2**64-1; :mod:`.scaledblocks`)."""
        return cls._from_parts(xa.EMPTY, xa.EMPTY,
                               bb.make(idx.astype(np.uint64), rows, shift, phase))

    @property
    def is_dense(self) -> bool:
        """True when part of the set is held as bit blocks (a fact about memory only)."""
        return self._blk is not None

    def _iter_runs(self) -> Iterator[tuple[U64, U64]]:
        """The canonical extents in pieces (one piece for the extents form)."""
        if self._blk is None:
            yield self._starts, self._lasts
        elif self._full is not None:
            yield self._full
        else:
            yield from bb.iter_runs(self._starts, self._lasts, self._blk)

    def _extents(self) -> tuple[U64, U64]:
        """The whole set as extents (expanded once, then cached)."""
        if self._blk is None:
            return self._starts, self._lasts
        if self._full is None:
            s, last = bb.runs_to_extents(self._starts, self._lasts, self._blk)
            self._full = (xa.ro(s), xa.ro(last))
        return self._full

    @classmethod
    def empty(cls) -> PageSet:
        return cls()

    @classmethod
    def from_range(cls, first: int, count: int) -> PageSet:
        """``count`` frames from ``first`` (count 0 gives the empty set)."""
        if not isinstance(first, int) or not isinstance(count, int) or count < 0 or first < 0:
            raise UsageError(f"bad range first={first!r} count={count!r}", field="range")
        if count == 0:
            return cls()
        if first + count - 1 > MAX_FRAME:
            raise UsageError("range extends beyond frame 2**64-1", field="range")
        return cls._trusted(
            np.array([first], dtype=np.uint64), np.array([first + count - 1], dtype=np.uint64)
        )

    @classmethod
    def from_frames(cls, arr: Any) -> PageSet:
        """Frames in any order, duplicates allowed (see :meth:`from_frames_counted`)."""
        return cls.from_frames_counted(arr).pages

    @classmethod
    def from_frames_counted(cls, arr: Any) -> FramesWithDuplicates:
        """Like :meth:`from_frames`, also counting repeated frames (one sort serves both)."""
        a = xa.frames_1d(arr, "frames")
        if a.size == 0:
            return FramesWithDuplicates(cls(), 0, cls())
        dense = _dense_path(a)
        if dense is not None:
            return dense
        s = np.sort(a) if a.size > 1 and not bool(np.all(a[1:] >= a[:-1])) else a
        starts, lasts, dup = xa.runs_from_sorted(s)
        ndup = int(np.count_nonzero(dup))
        if ndup:
            # frames seen more than once: already sorted, so their runs directly (recursing
            # through from_frames went one level deeper per copy: 500 copies of one PFN
            # raised RecursionError)
            d_starts, d_lasts, _ = xa.runs_from_sorted(s[1:][dup])
            dupped = cls._trusted(d_starts, d_lasts)
        else:
            dupped = cls()
        return FramesWithDuplicates(cls._trusted(starts, lasts), ndup, dupped)

    @classmethod
    def from_starts_counts(cls, starts: Any, counts: Any) -> PageSet:
        """Array form of :meth:`from_extents`: any order, overlaps allowed, counts >= 1."""
        s = xa.as_uint64(starts, "starts").reshape(-1)
        c = xa.as_uint64(counts, "counts").reshape(-1)
        if s.shape != c.shape:
            raise UsageError(f"{s.size} starts but {c.size} counts", field="counts")
        if c.size and int(c.min()) == 0:
            i = int(np.argmin(c))
            raise UsageError(f"extent {i} has count 0", field=f"extents[{i}].count")
        # first + count - 1 <= 2**64-1  <=>  count - 1 <= MAX - first  (no overflow)
        over = (c - np.uint64(1)) > (np.uint64(MAX_FRAME) - s)
        if bool(over.any()):
            i = int(np.argmax(over))
            raise UsageError(
                f"extent {i} [{int(s[i])}, {int(c[i])}] extends beyond frame 2**64-1",
                field=f"extents[{i}]",
            )
        lasts = s + (c - np.uint64(1))
        return cls._trusted(*xa.merge(s, lasts))

    @classmethod
    def from_extents(cls, extents: Any) -> PageSet:
        """``[[first, count], ...]`` (the JSON form) in any order; overlaps are merged."""
        if isinstance(extents, PageSet):
            return extents
        if isinstance(extents, np.ndarray):
            a: npt.NDArray[Any] = extents
        else:
            try:
                seq = list(extents)
            except TypeError:
                raise UsageError(
                    "extents must be a list of [first, count]", field="extents"
                ) from None
            if not seq:
                return cls()
            # plain pairs (JSON) pass in one cheap test; anything else is looked at one by one
            ok = all(type(e) is list and len(e) == 2 for e in seq)
            for i, e in enumerate(() if ok else seq):
                if not isinstance(e, (list, tuple)) or len(e) != 2:
                    raise UsageError(
                        f"extent {i} is not a [first, count] pair: {e!r}", field=f"extents[{i}]"
                    )
            a = xa.as_uint64(seq, "extents")
        if a.size == 0:
            return cls()
        if a.ndim != 2 or a.shape[1] != 2:
            raise UsageError(f"extents must have shape (n, 2), got {a.shape}", field="extents")
        u = xa.as_uint64(a, "extents")
        return cls.from_starts_counts(u[:, 0], u[:, 1])

    @classmethod
    def from_text(cls, text: str) -> PageSet:
        """The compact text form ``0-1023,4096,8192-8195`` (inclusive ranges, any order).

        The empty string is the empty set.  Errors name the character offset.
        """
        if not isinstance(text, str):
            raise UsageError("page text must be a str", field="text")
        if xa.TEXT_RE.fullmatch(text) is None:
            off, what = xa.text_error_offset(text)
            got = repr(text[off]) if off < len(text) else "end of text"
            raise UsageError(
                f"malformed page list: expected {what} at character {off}, got {got}",
                field="text",
                offset=off,
            )
        if not text:
            return cls()
        firsts: list[int] = []
        lasts: list[int] = []
        for m in xa.ITEM_RE.finditer(text):
            if max(len(m.group(1)), len(m.group(2) or "")) > 20:  # > 2**64-1 for sure; and
                raise UsageError(  # int() of over 4,300 digits is a ValueError
                    f"frame above 2**64-1 at character {m.start()}", field="text",
                    offset=m.start())
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) is not None else a
            if a > b:
                raise UsageError(
                    f"range {a}-{b} runs backwards at character {m.start()}",
                    field="text",
                    offset=m.start(),
                )
            if b > MAX_FRAME:
                raise UsageError(
                    f"frame {b} above 2**64-1 at character {m.start()}",
                    field="text",
                    offset=m.start(),
                )
            firsts.append(a)
            lasts.append(b)
        return cls._trusted(
            *xa.merge(np.array(firsts, dtype=np.uint64), np.array(lasts, dtype=np.uint64))
        )

    @classmethod
    def from_bitmap(
        cls,
        bits: bytes | bytearray | memoryview | npt.NDArray[np.uint8],
        base: int = 0,
        word_size: int = 64,
        word_order: WordOrder = "little",
        unit: int = 1,
        nbits: int | None = None,
    ) -> PageSet:
        """Frames marked in a bitmap of ``unsigned long`` words (PROTOCOL.md §2, v3/hybrid).

        Bit ``n`` is bit ``n % word_size`` of word ``n // word_size``, words in
        ``word_order``; a set bit ``n`` marks the ``unit`` frames from ``base + n * unit``
        (v3: unit 1; hybrid: ``2**(page_shift-12)``).  ``nbits`` limits the bits read (the
        rest are ignored).  A trailing partial word is read from the bytes present (in a
        big-endian word those are its high-order bits); callers that care report it.
        """
        wbytes = xa.check_word(word_size, word_order)
        if not isinstance(base, int) or not 0 <= base <= MAX_FRAME:
            raise UsageError(f"base {base!r} outside 0..2**64-1", field="base")
        if not isinstance(unit, int) or unit < 1:
            raise UsageError(f"unit must be a positive int, not {unit!r}", field="unit")
        if isinstance(bits, np.ndarray):
            raw = bits.reshape(-1).view(np.uint8) if bits.dtype.itemsize == 1 else None
            if raw is None:
                raise UsageError("bitmap array must be uint8", field="bitmap")
        else:
            try:
                raw = np.frombuffer(bits, dtype=np.uint8)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"bitmap is not a byte buffer: {exc}", field="bitmap") from None
        if nbits is not None:
            if not isinstance(nbits, int) or nbits < 0:
                raise UsageError(f"nbits must be >= 0, not {nbits!r}", field="nbits")
            if nbits > raw.size * 8:
                raise DecodeError(
                    f"nbits {nbits} exceeds the {raw.size * 8} bits present", field="bitmap"
                )
        if xa.ORDER_ALIASES[word_order] == "big" and raw.size:
            rem = raw.size % wbytes
            if rem:
                raw = np.concatenate((raw, np.zeros(wbytes - rem, dtype=np.uint8)))
            raw = raw.reshape(-1, wbytes)[:, ::-1].reshape(-1)
        if unit == 1:  # straight from the packed bits: no byte per bit, blocks if dense
            return cls.from_le_bits(raw, base, raw.size * 8 if nbits is None else nbits)
        if unit & (unit - 1) == 0 and unit.bit_length() - 1 <= sb.MAX_SHIFT:
            # pages of 2**k frames: from the packed bits too, as scaled blocks if dense
            k = unit.bit_length() - 1
            return cls.from_le_units(raw, base >> k, raw.size * 8 if nbits is None else nbits,
                                     k, base & (unit - 1))
        flags = np.unpackbits(raw, bitorder="little")
        if nbits is not None:
            flags = flags[:nbits]
        return cls._from_bit_flags(flags, base, unit)

    @classmethod
    def _from_bit_flags(cls, flags: npt.NDArray[np.uint8], base: int, unit: int) -> PageSet:
        """Runs of ones in a 0/1 byte array -> extents (the diff finds run edges, so the
        cost follows the number of runs, not the number of set bits)."""
        n = flags.size
        if n == 0:
            return cls()
        edges = np.flatnonzero(flags[1:] != flags[:-1]) + 1
        # run starts are the edges where the new value is 1, plus 0 if the first bit is set
        if flags[0]:
            edges = np.concatenate(([0], edges))
        if flags[-1]:
            edges = np.concatenate((edges, [n]))
        if edges.size == 0:
            return cls()
        rs = edges[0::2].astype(np.uint64)
        re_ = edges[1::2].astype(np.uint64)  # exclusive, in bits
        top = base + int(re_[-1]) * unit - 1
        if top > MAX_FRAME:
            raise DecodeError(f"bitmap marks frames up to {top}, beyond 2**64-1", field="base")
        b = np.uint64(base)
        u = np.uint64(unit)
        return cls._trusted(b + rs * u, b + re_ * u - np.uint64(1))

    # ---- accessors ------------------------------------------------------------------
    # ---- accessors ------------------------------------------------------------------

    @property
    def starts(self) -> U64:
        """First frame of each extent (read-only uint64, sorted)."""
        return self._extents()[0]

    @property
    def lasts(self) -> U64:
        """Last frame (inclusive) of each extent (read-only uint64)."""
        return self._extents()[1]

    @property
    def counts(self) -> U64:
        """Frames per extent (uint64; wraps to 0 only for the full 2**64-frame range)."""
        s, last = self._extents()
        return last - s + np.uint64(1)

    @property
    def n_extents(self) -> int:
        if self._full is not None:
            return int(self._full[0].size)
        return bb.merged_run_count(self._starts, self._lasts, self._blk)

    def page_count(self) -> int:
        """Number of frames as a Python int (no 2**63 limit, unlike ``len``)."""
        n = bb.popcount(self._blk) if self._blk is not None else 0
        if self._starts.size == 0:
            return n
        return n + int((self._lasts - self._starts).sum(dtype=np.uint64)) + self._starts.size

    def __len__(self) -> int:
        return self.page_count()

    def __bool__(self) -> bool:
        return self._starts.size > 0 or self._blk is not None

    def __iter__(self) -> Iterator[Extent]:
        for starts, lasts in self._iter_runs():
            for s, last in zip(starts.tolist(), lasts.tolist(), strict=True):
                yield Extent(s, last - s + 1)

    def head(self, n: int) -> list[Extent]:
        """The first ``n`` extents (without listing the rest)."""
        out: list[Extent] = []
        for starts, lasts in self._iter_runs():
            k = n - len(out)
            out += [Extent(s, last - s + 1)
                    for s, last in zip(starts[:k].tolist(), lasts[:k].tolist(), strict=True)]
            if len(out) >= n:
                break
        return out

    def extents(self) -> list[list[int]]:
        """The JSON form: sorted, merged ``[[first, count], ...]`` of Python ints."""
        return [[s, last - s + 1] for starts, lasts in self._iter_runs()
                for s, last in zip(starts.tolist(), lasts.tolist(), strict=True)]

    def to_text(self) -> str:
        """Canonical text form: ``a-b`` for runs, ``a`` for single frames, ``,``-joined."""
        return "".join(self.iter_text())

    def iter_text(self, chunk: int = 1 << 15) -> Iterator[str]:
        """:meth:`to_text` in pieces of at most ``chunk`` runs each (concatenated, they are
        the text): a set of millions of runs can be printed without holding its text."""
        first = True
        for starts, lasts in self._iter_runs():
            for i in range(0, starts.size, chunk):
                part = ",".join(
                    str(s) if s == last else f"{s}-{last}"
                    for s, last in zip(starts[i:i + chunk].tolist(),
                                       lasts[i:i + chunk].tolist(), strict=True)
                )
                yield part if first else "," + part
                first = False

    def min(self) -> int:
        if not self:
            raise UsageError("min() of an empty page set", field="pages")
        lo = [int(self._starts[0])] if self._starts.size else []
        return min(lo + ([bb.min_frame(self._blk)] if self._blk is not None else []))

    def max(self) -> int:
        if not self:
            raise UsageError("max() of an empty page set", field="pages")
        hi = [int(self._lasts[-1])] if self._starts.size else []
        return max(hi + ([bb.max_frame(self._blk)] if self._blk is not None else []))

    def __contains__(self, frame: object) -> bool:
        if isinstance(frame, (bool, np.bool_)) or not isinstance(frame, (int, np.integer)):
            return False
        f = int(frame)
        if not 0 <= f <= MAX_FRAME or not self:
            return False
        return bool(self.contains_frames(np.array([f], dtype=np.uint64))[0])

    def contains_frames(self, frames: Any) -> npt.NDArray[np.bool_]:
        """Vectorised membership for an array of frames."""
        f = xa.as_uint64(frames, "frames")
        out = np.zeros(f.shape, dtype=bool)
        if self._starts.size:
            i = np.searchsorted(self._starts, f, side="right").astype(np.intp) - 1
            out |= (i >= 0) & (f <= self._lasts[np.maximum(i, 0)])
        if self._blk is not None:
            out |= bb.contains(self._blk, f.reshape(-1)).reshape(f.shape)
        return out

    def to_frames(self, limit: int = DEFAULT_LIMIT, dtype: Any = np.uint64) -> U64:
        """All frames as a sorted array (refuses more than ``limit`` frames).

        ``dtype`` may be a narrower unsigned type (``np.uint32`` for the spec's 32-bit PFN
        arrays) when every frame fits it: one pass instead of a uint64 pass plus a cast.
        """
        total = self.page_count()
        if total > limit:
            raise UsageError(
                f"{total} frames exceed the limit of {limit} for to_frames()", field="pages"
            )
        dt = np.dtype(dtype)
        if total == 0:
            return np.zeros(0, dtype=dt)
        if dt != np.uint64 and self.max() > np.iinfo(dt).max:
            raise UsageError(f"frame {self.max()} does not fit {dt}", field="pages")
        starts, lasts = self._extents()
        counts = (lasts - starts + np.uint64(1)).astype(np.intp)
        out = np.ones(total, dtype=dt)
        out[0] = starts[0]
        if counts.size > 1:
            pos = np.cumsum(counts[:-1])
            # the step from the last frame of one extent to the first of the next
            out[pos] = starts[1:] - lasts[:-1]
        return np.cumsum(out, dtype=dt)

    def window(self, first: int, count: int) -> PageSet:
        """The frames in ``[first, first + count)``."""
        return self & PageSet.from_range(first, count)

    # ---- set algebra ------------------------------------------------------------------

    def _coerce(self, other: object) -> PageSet | None:
        return other if isinstance(other, PageSet) else None

    def _binop(self, o: PageSet, op: str) -> PageSet:
        """``op`` on two sets of which at least one holds blocks: both are re-cut onto the
        union of their blocks, then extents meet extents and bits meet bits (the two parts
        of each side cover disjoint frames, so the operation splits).  Blocks of two scales,
        or extents that cut a scaled block's unit, have no common cut: then the scaled
        operands take the extents form (same set) and the operation is redone."""
        scale = sb.common_scale(self._blk, o._blk)
        universe = bb.union_idx(self._blk, o._blk)
        a = b = None
        if scale is not None:
            a = sb.spread(self._starts, self._lasts, self._blk, universe, *scale)
            if a is not None:
                b = sb.spread(o._starts, o._lasts, o._blk, universe, *scale)
        if scale is None or a is None or b is None:
            x, y = self._unscaled(), o._unscaled()
            return x | y if op == "or" else x & y if op == "and" else x - y
        as_, al, arows = a
        bs, bl, brows = b
        es, el = _extent_op(op, as_, al, bs, bl)
        if op == "or":
            arows |= brows
        elif op == "and":
            arows &= brows
        else:
            arows &= ~brows
        del brows
        return PageSet._from_parts(es, el, bb.make(universe, arows, *scale))

    def _unscaled(self) -> PageSet:
        """This set without scaled blocks (its extents form if it holds them)."""
        if self._blk is None or not self._blk.shift:
            return self
        return PageSet._trusted(*self._extents())

    def __or__(self, other: object) -> PageSet:
        o = self._coerce(other)
        if o is None:
            return NotImplemented
        if not o:
            return self
        if not self:
            return o
        if self._blk is not None or o._blk is not None:
            return self._binop(o, "or")
        return PageSet._trusted(*_extent_op("or", self._starts, self._lasts, o._starts,
                                            o._lasts))

    def __and__(self, other: object) -> PageSet:
        o = self._coerce(other)
        if o is None:
            return NotImplemented
        if not o or not self:
            return PageSet()
        if self._blk is not None or o._blk is not None:
            return self._binop(o, "and")
        return PageSet._trusted(*xa.intersect(self._starts, self._lasts, o._starts, o._lasts))

    def __sub__(self, other: object) -> PageSet:
        o = self._coerce(other)
        if o is None:
            return NotImplemented
        if not o or not self:
            return self
        if self._blk is not None or o._blk is not None:
            return self._binop(o, "sub")
        return PageSet._trusted(*_extent_op("sub", self._starts, self._lasts, o._starts,
                                            o._lasts))

    def __xor__(self, other: object) -> PageSet:
        o = self._coerce(other)
        if o is None:
            return NotImplemented
        return (self - o) | (o - self)

    def issubset(self, other: PageSet) -> bool:
        return not (self - other)

    def __le__(self, other: object) -> bool:
        o = self._coerce(other)
        if o is None:
            return NotImplemented
        return self.issubset(o)

    def isdisjoint(self, other: PageSet) -> bool:
        return not (self & other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PageSet):
            return NotImplemented
        if self._blk is None and other._blk is None:
            return bool(
                np.array_equal(self._starts, other._starts)
                and np.array_equal(self._lasts, other._lasts)
            )
        if self.page_count() != other.page_count():
            return False
        return _same_runs(self._iter_runs(), other._iter_runs())

    def __hash__(self) -> int:
        # the same for both forms of one set (so not the arrays' bytes)
        if not self:
            return hash(())
        return hash((self.page_count(), self.n_extents, self.min(), self.max()))

    def __repr__(self) -> str:
        n = self.n_extents
        if n <= 8:
            return f"PageSet.from_text({self.to_text()!r})"
        return (
            f"<PageSet {self.page_count()} frames in {n} extents, "
            f"{self.min()}..{self.max()}>"
        )

    # ---- encodings --------------------------------------------------------------------

    def to_bitmap(
        self,
        base: int,
        nbits: int,
        word_size: int = 64,
        word_order: WordOrder = "little",
        unit: int = 1,
        clip: bool = False,
        limit: int = 1 << 30,
    ) -> bytes:
        """The inverse of :meth:`from_bitmap`: ``ceil(nbits / word_size)`` whole words.

        Bit ``n`` is set when frames ``base + n*unit .. base + (n+1)*unit - 1`` are in the
        set.  Frames outside the window are an EncodeError unless ``clip`` is true; with
        ``unit > 1`` every block must be wholly in or out of the set.
        """
        wbytes = xa.check_word(word_size, word_order)
        if not isinstance(base, int) or not 0 <= base <= MAX_FRAME:
            raise UsageError(f"base {base!r} outside 0..2**64-1", field="base")
        if not isinstance(nbits, int) or not 0 <= nbits <= limit:
            raise UsageError(f"nbits {nbits!r} outside 0..{limit}", field="nbits")
        if not isinstance(unit, int) or unit < 1:
            raise UsageError(f"unit must be a positive int, not {unit!r}", field="unit")
        nwords = -(-nbits // word_size)
        span = nbits * unit
        if span == 0:
            inside = PageSet()
        elif not self or (self.min() >= base and self.max() < base + span):
            inside = self  # the common case: no intersection pass over every extent
        else:
            hi = min(base + span, MAX_FRAME + 1)
            inside = self & PageSet.from_range(base, hi - base)
        if not clip and inside.page_count() != self.page_count():
            outside = self - inside
            raise EncodeError(
                f"frame {outside.min()} lies outside the bitmap window [{base}, {base + span})",
                field="bitmap",
            )
        in_s, in_l = inside._extents()
        s = in_s - np.uint64(base)
        e = in_l - np.uint64(base) + np.uint64(1)  # exclusive, < 2**64 here
        if unit > 1:
            u = np.uint64(unit)
            bad = ((s % u) != 0) | ((e % u) != 0)
            if bool(bad.any()):
                i = int(np.argmax(bad))
                raise EncodeError(
                    f"extent at frame {int(in_s[i])} does not cover whole "
                    f"{unit}-frame blocks",
                    field="bitmap",
                )
            s = s // u
            e = e // u
        marks = np.zeros(nwords * word_size + 1, dtype=np.int8)
        # extents are non-adjacent, so no start coincides with another extent's end
        marks[s.astype(np.intp)] = 1
        marks[e.astype(np.intp)] = -1
        flags = np.cumsum(marks[:-1], dtype=np.int8).view(np.uint8)
        packed = np.packbits(flags, bitorder="little")
        if xa.ORDER_ALIASES[word_order] == "big" and packed.size:
            packed = packed.reshape(-1, wbytes)[:, ::-1].reshape(-1)
        return packed.tobytes()

    def aligned_blocks(
        self, max_order: int, limit: int = DEFAULT_LIMIT
    ) -> tuple[U64, npt.NDArray[np.uint8]]:
        """Decompose into naturally aligned power-of-two blocks of order <= ``max_order``.

        Returns ``(starts, orders)`` sorted by start: block ``i`` is the ``2**orders[i]``
        frames from ``starts[i]``, with ``starts[i] % 2**orders[i] == 0``.  The decomposition
        is the greedy one (largest aligned block at each point), which is also the one with
        fewest blocks - the hybrid encoder's pfn+order records (Dave Hansen's review,
        2016-10-26: "pack the pfn and page order into a single 64-bit word").

        Each extent ``[s, e)`` is cut at its most aligned points: a head that climbs from
        ``s`` to the first ``2**max_order`` boundary (one block per set bit of the distance,
        ascending), a middle of whole ``2**max_order`` blocks, and a tail that descends to
        ``e``.  Extents that contain no such boundary are cut at the point with the most
        trailing zeros instead.  Frames must be below 2**63.
        """
        if not isinstance(max_order, int) or not 0 <= max_order <= 63:
            raise UsageError(f"max_order must be 0..63, not {max_order!r}", field="max_order")
        if not self:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint8)
        if self.max() >= 1 << 63:
            raise UsageError("aligned_blocks() needs frames below 2**63", field="pages")
        s, last = self._extents()
        return xa.aligned_blocks(s, last, max_order, limit)


def _extent_op(op: str, as_: U64, al: U64, bs: U64, bl: U64) -> tuple[U64, U64]:
    """``or``/``and``/``sub`` of two merged extent lists."""
    if op == "or":
        if not bs.size:
            return as_, al
        if not as_.size:
            return bs, bl
        return xa.merge(np.concatenate((as_, bs)), np.concatenate((al, bl)))
    if op == "and":
        return xa.intersect(as_, al, bs, bl)
    if not bs.size or not as_.size:
        return as_, al
    cs, cl = xa.complement(bs, bl)
    return xa.intersect(as_, al, cs, cl)


def _same_runs(a: Iterator[tuple[U64, U64]], b: Iterator[tuple[U64, U64]]) -> bool:
    """Whether two streams of extent pieces (cut at different places) are the same extents."""
    bufs: list[list[U64]] = [[xa.EMPTY, xa.EMPTY], [xa.EMPTY, xa.EMPTY]]
    its = (a, b)
    while True:
        for k in (0, 1):
            while bufs[k][0].size == 0:
                nxt = next(its[k], None)
                if nxt is None:
                    break
                bufs[k] = [nxt[0], nxt[1]]
        na, nb = bufs[0][0].size, bufs[1][0].size
        if na == 0 or nb == 0:
            return na == nb
        n = min(na, nb)
        if not (np.array_equal(bufs[0][0][:n], bufs[1][0][:n])
                and np.array_equal(bufs[0][1][:n], bufs[1][1][:n])):
            return False
        bufs = [[x[n:] for x in buf] for buf in bufs]


def count_duplicates(frames: Any) -> int:
    """How many entries of ``frames`` repeat an earlier one ("page twice in one message")."""
    return PageSet.from_frames_counted(frames).duplicates


def union_all(sets: Iterable[PageSet]) -> PageSet:
    """Union of many sets in one merge (cheaper than folding ``|``)."""
    ss = [p for p in sets if p]
    if len(ss) < 2:  # nothing to merge (a swept hybrid set stays swept: wire/hybridset.py)
        return ss[0] if ss else PageSet()
    dense = [p for p in ss if p.is_dense]
    if dense:  # the dense ones fold (their blocks stay blocks); the rest merge at once
        out = union_all(p for p in ss if not p.is_dense)
        for p in dense:
            out = out | p
        return out
    return PageSet._trusted(
        *xa.merge(np.concatenate([p.starts for p in ss]), np.concatenate([p.lasts for p in ss]))
    )


class PageAccumulator:
    """A page set built by many unions and differences, without quadratic cost.

    Folding ``acc = acc | pages`` over 7,168 inflate buffers re-merges the growing set every
    time; this keeps added sets pending and merges them in one :func:`union_all` when a
    difference or a read needs the exact set (or when many are pending).  Frame arrays
    (:meth:`add_frames`: a PFN buffer's frames) stay arrays until then and become one set in
    one :meth:`PageSet.from_frames` (a counting sort for an inflate's dense frames): no set
    per buffer (issue 13).
    """

    FLUSH_AT = 4096

    def __init__(self, initial: PageSet | None = None) -> None:
        self._value = initial if initial is not None else PageSet()
        self._pending: list[PageSet] = []
        self._frames: list[npt.NDArray[Any]] = []

    def add(self, pages: PageSet) -> None:
        if pages:
            self._pending.append(pages)
            if len(self._pending) >= self.FLUSH_AT:
                self._flush()

    def add_frames(self, frames: npt.NDArray[Any]) -> None:
        """Add the frames of a 1-D unsigned integer array (any order, repeats allowed)."""
        if frames.size:
            self._frames.append(frames)
            if len(self._frames) >= self.FLUSH_AT:
                self._flush()

    def remove(self, pages: PageSet) -> None:
        if pages:
            self._flush()
            self._value = self._value - pages

    def _flush(self) -> None:
        if self._frames:
            frames = self._frames
            self._frames = []
            dt = np.result_type(*{f.dtype for f in frames})
            self._pending.append(PageSet.from_frames(np.concatenate(frames, dtype=dt)))
        if self._pending:
            self._value = union_all([self._value, *self._pending])
            self._pending = []

    @property
    def value(self) -> PageSet:
        self._flush()
        return self._value
