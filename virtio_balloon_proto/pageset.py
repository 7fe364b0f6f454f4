"""PageSet: an immutable set of 4 KiB frame numbers that stays fast at millions of pages.

Every balloon payload names pages: PFN arrays (``__virtio32`` frame numbers, PROTOCOL.md §3),
v3 bitmaps (bit ``n`` is page ``start_pfn + n``), hybrid pfn+order records and free-page
ranges.  A PageSet is what they all decode to and what every encoder starts from.

Representation: two read-only ``uint64`` numpy arrays, ``starts`` and ``lasts`` (inclusive),
holding sorted, merged, non-adjacent extents.  Inclusive ends keep frame ``2**64 - 1``
representable without overflow.  Every operation is a handful of whole-array numpy calls; no
Python loop runs per frame (per extent only where the caller asks for Python objects:
``extents()``, ``to_text()``, iteration).

Measured against pyroaring (bench/RESULTS.md): extents win on the balloon's shapes (long runs:
an inflate of 7 GiB is a few hundred extents, a bitmap of free pages a few thousand) and need
no compiled dependency; roaring only wins on random sparse sets, which no driver produces.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from .errors import DecodeError, EncodeError, UsageError

__all__ = [
    "MAX_FRAME",
    "Extent",
    "FramesWithDuplicates",
    "PageSet",
    "count_duplicates",
]

#: The largest frame number a PageSet holds (frames are uint64).
MAX_FRAME = (1 << 64) - 1

#: Default cap on arrays a PageSet materialises (frames, bits, blocks): 2**28 entries is a
#: 1 TiB guest in 4 KiB frames and 2 GiB of uint64 - beyond that the caller must opt in.
DEFAULT_LIMIT = 1 << 28

U64 = npt.NDArray[np.uint64]
WordOrder = Literal["little", "big", "le", "be"]

_EMPTY = np.zeros(0, dtype=np.uint64)
_EMPTY.flags.writeable = False


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


# --------------------------------------------------------------------------- helpers


def _ro(a: npt.NDArray[Any]) -> U64:
    # callers pass freshly computed arrays (fancy indexing and arithmetic copy), so freezing
    # them in place cannot affect anyone else's data
    out = np.ascontiguousarray(a, dtype=np.uint64)
    out.flags.writeable = False
    return out


def _as_uint64(arr: Any, field: str) -> U64:
    """Convert ``arr`` (any integer array or iterable of ints) to a 1-D uint64 array.

    Refuses negatives, floats, bools and values above 2**64-1 with a UsageError naming
    ``field`` instead of letting numpy wrap or truncate them.
    """
    if isinstance(arr, np.ndarray):
        a: npt.NDArray[Any] = arr
    else:
        if isinstance(arr, (bytes, bytearray, memoryview, str)):
            raise UsageError("expected integers, got bytes/str", field=field)
        seq = arr if isinstance(arr, (list, tuple)) else _listify(arr, field)
        try:
            a = np.asarray(seq)
            if a.dtype.kind not in "iu":
                # numpy turns ints beyond int64 mixed with others into float64 (lossy) and
                # bools into ints: redo as objects, which the exact check below inspects
                a = np.asarray(seq, dtype=object)
        except (TypeError, ValueError, OverflowError) as exc:
            raise UsageError(f"not an array of integers: {exc}", field=field) from None
    if a.dtype == object:
        # Python ints beyond int64 (or mixed with negatives) land here; check them exactly.
        flat = a.reshape(-1)
        for i, v in enumerate(flat.tolist()):
            if type(v) is not int:
                raise UsageError(f"entry {i} is {type(v).__name__}, not int", field=field)
            if not 0 <= v <= MAX_FRAME:
                raise UsageError(f"entry {i} = {v} outside 0..2**64-1", field=field)
        return flat.astype(np.uint64).reshape(a.shape)
    if a.size == 0:
        return np.zeros(a.shape, dtype=np.uint64)
    if a.dtype.kind == "u":
        return a.astype(np.uint64, copy=False)
    if a.dtype.kind == "i":
        lo = int(a.min())
        if lo < 0:
            i = int(np.argmin(a))
            raise UsageError(f"entry {i} = {lo} is negative", field=field)
        return a.astype(np.uint64)
    raise UsageError(f"expected integers, got dtype {a.dtype}", field=field)


def _listify(arr: Any, field: str) -> list[Any]:
    try:
        return list(arr)
    except TypeError:
        raise UsageError(
            f"expected an iterable of integers, got {type(arr).__name__}", field=field
        ) from None


_ORDER_ALIASES = {"little": "little", "big": "big", "le": "little", "be": "big"}


def _check_word(word_size: int, word_order: str) -> int:
    """Validate a bitmap word layout; word_order is 'little'/'big' (or the wire layer's
    'le'/'be')."""
    if word_size not in (32, 64):
        raise UsageError(f"word size must be 32 or 64 bits, not {word_size!r}", field="word_size")
    if word_order not in _ORDER_ALIASES:
        raise UsageError(
            f"word order must be 'little' or 'big', not {word_order!r}", field="word_order"
        )
    return word_size // 8


def _merge(starts: U64, lasts: U64) -> tuple[U64, U64]:
    """Sort and merge overlapping/adjacent inclusive extents (vectorised)."""
    n = starts.size
    if n == 0:
        return _EMPTY, _EMPTY
    if n > 1 and not bool(np.all(starts[1:] >= starts[:-1])):
        order = np.argsort(starts, kind="stable")
        starts = starts[order]
        lasts = lasts[order]
    runmax = np.maximum.accumulate(lasts)
    prev = runmax[:-1]
    nxt = starts[1:]
    # a new extent begins where start > prev_max + 1; written without prev_max + 1 (which
    # wraps at 2**64-1): nxt > prev and nxt - 1 > prev (nxt >= 1 whenever nxt > prev).
    new = (nxt > prev) & ((nxt - np.uint64(1)) > prev)
    del prev, nxt
    if bool(new.all()):  # already canonical (a decoded bitmap's runs): no index arrays
        return starts, runmax
    brk = np.flatnonzero(new)
    first_idx = np.concatenate(([0], brk + 1))
    last_idx = np.concatenate((brk, [n - 1]))
    return starts[first_idx], runmax[last_idx]


def _runs_from_sorted(s: npt.NDArray[Any]) -> tuple[U64, U64, npt.NDArray[np.bool_]]:
    """Extents of a sorted frame array (duplicates allowed); also the ``diff == 0`` mask."""
    n = s.size
    d = np.diff(s)
    dup = d == 0
    brk = np.flatnonzero(d > 1)
    first_idx = np.empty(brk.size + 1, dtype=np.intp)
    first_idx[0] = 0
    first_idx[1:] = brk + 1
    last_idx = np.empty(brk.size + 1, dtype=np.intp)
    last_idx[:-1] = brk
    last_idx[-1] = n - 1
    return (
        s[first_idx].astype(np.uint64, copy=False),
        s[last_idx].astype(np.uint64, copy=False),
        dup,
    )


def _frames_1d(arr: Any, field: str) -> npt.NDArray[Any]:
    """Validated 1-D frame array, kept in its own unsigned dtype when it has one: sorting the
    le32 PFNs of an inflate as uint32 is about twice as fast as sorting them as uint64."""
    if isinstance(arr, np.ndarray) and arr.dtype.kind == "u" and arr.ndim == 1:
        return arr
    a = _as_uint64(arr, field)
    if a.ndim != 1:
        raise UsageError(f"expected a 1-D array of frames, got shape {a.shape}", field=field)
    return a


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


# --------------------------------------------------------------------------- text form

_TEXT_RE = re.compile(r"(?:\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*)?")
_ITEM_RE = re.compile(r"(\d+)(?:-(\d+))?")


def _text_error_offset(text: str) -> tuple[int, str]:
    """Where the text form first goes wrong and what was expected there (error path only)."""
    i = 0
    n = len(text)
    while True:
        m = re.compile(r"\d+").match(text, i)
        if m is None:
            return i, "a decimal frame number"
        i = m.end()
        if i < n and text[i] == "-":
            i += 1
            m = re.compile(r"\d+").match(text, i)
            if m is None:
                return i, "a decimal frame number after '-'"
            i = m.end()
        if i == n:
            return i, "end of text"  # pragma: no cover - only reached if the regex disagreed
        if text[i] != ",":
            return i, "',' or '-' or end of text"
        i += 1


# --------------------------------------------------------------------------- PageSet


class PageSet:
    """An immutable set of 4 KiB frame numbers (uint64), stored as merged extents."""

    __slots__ = ("_lasts", "_starts")

    _starts: U64
    _lasts: U64

    # ---- construction -------------------------------------------------------------

    def __init__(self) -> None:
        """The empty set; use the ``from_*`` constructors for anything else."""
        self._starts = _EMPTY
        self._lasts = _EMPTY

    @classmethod
    def _trusted(cls, starts: U64, lasts: U64) -> PageSet:
        """Wrap arrays already sorted, merged and non-adjacent (no checks)."""
        self = cls.__new__(cls)
        self._starts = _ro(starts)
        self._lasts = _ro(lasts)
        return self

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
        a = _frames_1d(arr, "frames")
        if a.size == 0:
            return FramesWithDuplicates(cls(), 0, cls())
        dense = _dense_path(a)
        if dense is not None:
            return dense
        s = np.sort(a) if a.size > 1 and not bool(np.all(a[1:] >= a[:-1])) else a
        starts, lasts, dup = _runs_from_sorted(s)
        ndup = int(np.count_nonzero(dup))
        if ndup:
            # frames seen more than once: already sorted, so their runs directly (recursing
            # through from_frames went one level deeper per copy: 500 copies of one PFN
            # raised RecursionError)
            d_starts, d_lasts, _ = _runs_from_sorted(s[1:][dup])
            dupped = cls._trusted(d_starts, d_lasts)
        else:
            dupped = cls()
        return FramesWithDuplicates(cls._trusted(starts, lasts), ndup, dupped)

    @classmethod
    def from_starts_counts(cls, starts: Any, counts: Any) -> PageSet:
        """Array form of :meth:`from_extents`: any order, overlaps allowed, counts >= 1."""
        s = _as_uint64(starts, "starts").reshape(-1)
        c = _as_uint64(counts, "counts").reshape(-1)
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
        return cls._trusted(*_merge(s, lasts))

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
            for i, e in enumerate(seq):
                if not isinstance(e, (list, tuple)) or len(e) != 2:
                    raise UsageError(
                        f"extent {i} is not a [first, count] pair: {e!r}", field=f"extents[{i}]"
                    )
            a = _as_uint64(seq, "extents")
        if a.size == 0:
            return cls()
        if a.ndim != 2 or a.shape[1] != 2:
            raise UsageError(f"extents must have shape (n, 2), got {a.shape}", field="extents")
        u = _as_uint64(a, "extents")
        return cls.from_starts_counts(u[:, 0], u[:, 1])

    @classmethod
    def from_text(cls, text: str) -> PageSet:
        """The compact text form ``0-1023,4096,8192-8195`` (inclusive ranges, any order).

        The empty string is the empty set.  Errors name the character offset.
        """
        if not isinstance(text, str):
            raise UsageError("page text must be a str", field="text")
        if _TEXT_RE.fullmatch(text) is None:
            off, what = _text_error_offset(text)
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
        for m in _ITEM_RE.finditer(text):
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
            *_merge(np.array(firsts, dtype=np.uint64), np.array(lasts, dtype=np.uint64))
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
        wbytes = _check_word(word_size, word_order)
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
        if _ORDER_ALIASES[word_order] == "big" and raw.size:
            rem = raw.size % wbytes
            if rem:
                raw = np.concatenate((raw, np.zeros(wbytes - rem, dtype=np.uint8)))
            raw = raw.reshape(-1, wbytes)[:, ::-1].reshape(-1)
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

    @property
    def starts(self) -> U64:
        """First frame of each extent (read-only uint64, sorted)."""
        return self._starts

    @property
    def lasts(self) -> U64:
        """Last frame (inclusive) of each extent (read-only uint64)."""
        return self._lasts

    @property
    def counts(self) -> U64:
        """Frames per extent (uint64; wraps to 0 only for the full 2**64-frame range)."""
        return self._lasts - self._starts + np.uint64(1)

    @property
    def n_extents(self) -> int:
        return int(self._starts.size)

    def page_count(self) -> int:
        """Number of frames as a Python int (no 2**63 limit, unlike ``len``)."""
        if self._starts.size == 0:
            return 0
        return int((self._lasts - self._starts).sum(dtype=np.uint64)) + self._starts.size

    def __len__(self) -> int:
        return self.page_count()

    def __bool__(self) -> bool:
        return self._starts.size > 0

    def __iter__(self) -> Iterator[Extent]:
        for s, last in zip(self._starts.tolist(), self._lasts.tolist(), strict=True):
            yield Extent(s, last - s + 1)

    def extents(self) -> list[list[int]]:
        """The JSON form: sorted, merged ``[[first, count], ...]`` of Python ints."""
        return [
            [s, last - s + 1]
            for s, last in zip(self._starts.tolist(), self._lasts.tolist(), strict=True)
        ]

    def to_text(self) -> str:
        """Canonical text form: ``a-b`` for runs, ``a`` for single frames, ``,``-joined."""
        return "".join(self.iter_text())

    def iter_text(self, chunk: int = 1 << 15) -> Iterator[str]:
        """:meth:`to_text` in pieces of at most ``chunk`` runs each (concatenated, they are
        the text): a set of millions of runs can be printed without holding its text."""
        for i in range(0, self._starts.size, chunk):
            part = ",".join(
                str(s) if s == last else f"{s}-{last}"
                for s, last in zip(self._starts[i:i + chunk].tolist(),
                                   self._lasts[i:i + chunk].tolist(), strict=True)
            )
            yield part if i == 0 else "," + part

    def min(self) -> int:
        if not self._starts.size:
            raise UsageError("min() of an empty page set", field="pages")
        return int(self._starts[0])

    def max(self) -> int:
        if not self._starts.size:
            raise UsageError("max() of an empty page set", field="pages")
        return int(self._lasts[-1])

    def __contains__(self, frame: object) -> bool:
        if isinstance(frame, (bool, np.bool_)) or not isinstance(frame, (int, np.integer)):
            return False
        f = int(frame)
        if not 0 <= f <= MAX_FRAME or not self._starts.size:
            return False
        i = int(np.searchsorted(self._starts, np.uint64(f), side="right")) - 1
        return i >= 0 and f <= int(self._lasts[i])

    def contains_frames(self, frames: Any) -> npt.NDArray[np.bool_]:
        """Vectorised membership for an array of frames."""
        f = _as_uint64(frames, "frames")
        if not self._starts.size:
            return np.zeros(f.shape, dtype=bool)
        i = np.searchsorted(self._starts, f, side="right").astype(np.intp) - 1
        ok = i >= 0
        return ok & (f <= self._lasts[np.maximum(i, 0)])

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
        counts = (self._lasts - self._starts + np.uint64(1)).astype(np.intp)
        out = np.ones(total, dtype=dt)
        out[0] = self._starts[0]
        if counts.size > 1:
            pos = np.cumsum(counts[:-1])
            # the step from the last frame of one extent to the first of the next
            out[pos] = self._starts[1:] - self._lasts[:-1]
        return np.cumsum(out, dtype=dt)

    def window(self, first: int, count: int) -> PageSet:
        """The frames in ``[first, first + count)``."""
        return self & PageSet.from_range(first, count)

    # ---- set algebra ------------------------------------------------------------------

    def _coerce(self, other: object) -> PageSet | None:
        return other if isinstance(other, PageSet) else None

    def __or__(self, other: object) -> PageSet:
        o = self._coerce(other)
        if o is None:
            return NotImplemented
        if not o._starts.size:
            return self
        if not self._starts.size:
            return o
        return PageSet._trusted(
            *_merge(
                np.concatenate((self._starts, o._starts)),
                np.concatenate((self._lasts, o._lasts)),
            )
        )

    def __and__(self, other: object) -> PageSet:
        o = self._coerce(other)
        if o is None:
            return NotImplemented
        return PageSet._trusted(*_intersect(self._starts, self._lasts, o._starts, o._lasts))

    def __sub__(self, other: object) -> PageSet:
        o = self._coerce(other)
        if o is None:
            return NotImplemented
        if not o._starts.size or not self._starts.size:
            return self
        cs, cl = _complement(o._starts, o._lasts)
        return PageSet._trusted(*_intersect(self._starts, self._lasts, cs, cl))

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
        return bool(
            np.array_equal(self._starts, other._starts)
            and np.array_equal(self._lasts, other._lasts)
        )

    def __hash__(self) -> int:
        return hash((self._starts.tobytes(), self._lasts.tobytes()))

    def __repr__(self) -> str:
        if self._starts.size <= 8:
            return f"PageSet.from_text({self.to_text()!r})"
        return (
            f"<PageSet {self.page_count()} frames in {self._starts.size} extents, "
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
        wbytes = _check_word(word_size, word_order)
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
        s = inside._starts - np.uint64(base)
        e = inside._lasts - np.uint64(base) + np.uint64(1)  # exclusive, < 2**64 here
        if unit > 1:
            u = np.uint64(unit)
            bad = ((s % u) != 0) | ((e % u) != 0)
            if bool(bad.any()):
                i = int(np.argmax(bad))
                raise EncodeError(
                    f"extent at frame {int(inside._starts[i])} does not cover whole "
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
        if _ORDER_ALIASES[word_order] == "big" and packed.size:
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
        if not self._starts.size:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint8)
        if self.max() >= 1 << 63:
            raise UsageError("aligned_blocks() needs frames below 2**63", field="pages")
        one = np.uint64(1)
        m = np.uint64(max_order)
        s = self._starts
        e = self._lasts + one  # exclusive; <= 2**63, no overflow
        size_m = one << m
        a_up = ((s + (size_m - one)) >> m) << m  # first 2**M boundary >= s
        b_dn = (e >> m) << m  # last 2**M boundary <= e
        has_b = a_up <= e
        # no 2**M boundary in [s, e]: cut at the most aligned point X of [s, e] - the common
        # prefix of s and e followed by their highest differing bit set (s < X <= e)
        x = np.where(has_b, a_up, s)
        nb = ~has_b
        if bool(nb.any()):
            sn = s[nb]
            en = e[nb]
            h = _highest_bit(sn ^ en)
            x[nb] = ((en >> (h + one)) << (h + one)) | (one << h)
        y = np.where(has_b, b_dn, x)  # where the tail starts
        head = x - s  # < 2**M; set bits ascending give the head blocks
        tail = e - y  # <= 2**M; set bits descending give the tail blocks
        nmid = np.where(has_b, (b_dn - a_up) >> m, np.uint64(0))
        total = (
            int(nmid.sum(dtype=np.uint64)) + int(_popcount(head).sum()) + int(_popcount(tail).sum())
        )
        if total > limit:
            raise UsageError(
                f"{total} blocks exceed the limit of {limit} for aligned_blocks()",
                field="max_order",
            )
        out_s: list[U64] = []
        out_o: list[npt.NDArray[np.uint8]] = []
        for k in range(max_order + 1):
            kk = np.uint64(k)
            bit = one << kk
            hs = (head & bit) != 0
            if bool(hs.any()):
                out_s.append(s[hs] + (head[hs] & (bit - one)))
                out_o.append(np.full(int(hs.sum()), k, dtype=np.uint8))
            ts = (tail & bit) != 0
            if bool(ts.any()):
                hi_mask = ~((bit << one) - one) if k < 63 else np.uint64(0)
                out_s.append(y[ts] + (tail[ts] & hi_mask))
                out_o.append(np.full(int(ts.sum()), k, dtype=np.uint8))
        nm = int(nmid.sum(dtype=np.uint64))
        if nm:
            cnt = nmid.astype(np.intp)
            rep_a = np.repeat(a_up, cnt)
            # index of each middle block within its extent
            offs = np.arange(nm, dtype=np.uint64) - np.repeat(
                (np.cumsum(cnt) - cnt).astype(np.uint64), cnt
            )
            out_s.append(rep_a + (offs << m))
            out_o.append(np.full(nm, max_order, dtype=np.uint8))
        if not out_s:  # pragma: no cover - a non-empty set always yields blocks
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint8)
        bs = np.concatenate(out_s)
        bo = np.concatenate(out_o)
        order = np.argsort(bs, kind="stable")
        return bs[order], bo[order]


def _highest_bit(a: U64) -> U64:
    """Index of the highest set bit of each (non-zero) uint64, by binary search on shifts."""
    h = np.zeros(a.shape, dtype=np.uint64)
    d = a.copy()
    for k in (32, 16, 8, 4, 2, 1):
        kk = np.uint64(k)
        big = (d >> kk) != 0
        h[big] += kk
        d[big] >>= kk
    return h


def _popcount(a: U64) -> npt.NDArray[np.intp]:
    """Set bits per uint64 (vectorised SWAR; numpy < 2.0 has no bitwise_count)."""
    a = a - ((a >> np.uint64(1)) & np.uint64(0x5555555555555555))
    a = (a & np.uint64(0x3333333333333333)) + ((a >> np.uint64(2)) & np.uint64(0x3333333333333333))
    a = (a + (a >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((a * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.intp)


def _complement(starts: U64, lasts: U64) -> tuple[U64, U64]:
    """The gaps between (and around) extents, inside 0..2**64-1."""
    one = np.uint64(1)
    gs = np.concatenate(([np.uint64(0)], lasts + one))  # lasts+1 wraps only for the top frame
    gl = np.concatenate((starts - one, [np.uint64(MAX_FRAME)]))  # starts-1 wraps only for 0
    keep = np.ones(gs.size, dtype=bool)
    if starts[0] == 0:
        keep[0] = False
    if lasts[-1] == np.uint64(MAX_FRAME):
        keep[-1] = False
    return gs[keep], gl[keep]


def _intersect(as_: U64, al: U64, bs: U64, bl: U64) -> tuple[U64, U64]:
    """Intersection of two merged extent lists: every overlapping pair, found with two
    searchsorted calls; the pieces come out sorted and (as both inputs are merged and
    non-adjacent) never adjacent, so no merge pass is needed."""
    if not as_.size or not bs.size:
        return _EMPTY, _EMPTY
    lo = np.searchsorted(bl, as_, side="left")  # first b with last >= a.start
    hi = np.searchsorted(bs, al, side="right")  # b with start <= a.last
    cnt = np.maximum(hi - lo, 0)
    total = int(cnt.sum())
    if total == 0:
        return _EMPTY, _EMPTY
    ai = np.repeat(np.arange(as_.size), cnt)
    bj = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(lo, cnt)
    return np.maximum(as_[ai], bs[bj]), np.minimum(al[ai], bl[bj])


def count_duplicates(frames: Any) -> int:
    """How many entries of ``frames`` repeat an earlier one ("page twice in one message")."""
    return PageSet.from_frames_counted(frames).duplicates


def union_all(sets: Iterable[PageSet]) -> PageSet:
    """Union of many sets in one merge (cheaper than folding ``|``)."""
    ss = [p for p in sets if p]
    if not ss:
        return PageSet()
    return PageSet._trusted(
        *_merge(np.concatenate([p.starts for p in ss]), np.concatenate([p.lasts for p in ss]))
    )


class PageAccumulator:
    """A page set built by many unions and differences, without quadratic cost.

    Folding ``acc = acc | pages`` over 7,168 inflate buffers re-merges the growing set every
    time; this keeps added sets pending and merges them in one :func:`union_all` when a
    difference or a read needs the exact set (or when many are pending).
    """

    FLUSH_AT = 4096

    def __init__(self, initial: PageSet | None = None) -> None:
        self._value = initial if initial is not None else PageSet()
        self._pending: list[PageSet] = []

    def add(self, pages: PageSet) -> None:
        if pages:
            self._pending.append(pages)
            if len(self._pending) >= self.FLUSH_AT:
                self._flush()

    def remove(self, pages: PageSet) -> None:
        if pages:
            self._flush()
            self._value = self._value - pages

    def _flush(self) -> None:
        if self._pending:
            self._value = union_all([self._value, *self._pending])
            self._pending = []

    @property
    def value(self) -> PageSet:
        self._flush()
        return self._value
