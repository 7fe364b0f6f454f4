"""Extent arrays: the array algebra under :class:`~.pageset.PageSet`'s sparse form.

A set of frames is two read-only ``uint64`` arrays, ``starts`` and ``lasts`` (inclusive),
sorted, merged and non-adjacent.  Inclusive ends keep frame ``2**64 - 1`` representable
without overflow.  Every function here is a handful of whole-array numpy calls: no Python
loop runs per frame or per extent.  Also the validation of integer arrays from outside, the
bitmap word layouts and the text form's grammar, which every PageSet constructor shares.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .errors import UsageError

#: The largest frame number a PageSet holds (frames are uint64).
MAX_FRAME = (1 << 64) - 1

U64 = npt.NDArray[np.uint64]
WordOrder = Literal["little", "big", "le", "be"]

EMPTY = np.zeros(0, dtype=np.uint64)
EMPTY.flags.writeable = False

def ro(a: npt.NDArray[Any]) -> U64:
    # callers pass freshly computed arrays (fancy indexing and arithmetic copy), so freezing
    # them in place cannot affect anyone else's data
    out = np.ascontiguousarray(a, dtype=np.uint64)
    out.flags.writeable = False
    return out


def as_uint64(arr: Any, field: str) -> U64:
    """Convert ``arr`` (any integer array or iterable of ints) to a 1-D uint64 array.

    Refuses negatives, floats, bools and values above 2**64-1 with a UsageError naming
    ``field`` instead of letting numpy wrap or truncate them.
    """
    if isinstance(arr, np.ndarray):
        a: npt.NDArray[Any] = arr
    else:
        if isinstance(arr, (bytes, bytearray, memoryview, str)):
            raise UsageError("expected integers, got bytes/str", field=field)
        seq = arr if isinstance(arr, (list, tuple)) else listify(arr, field)
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


def listify(arr: Any, field: str) -> list[Any]:
    try:
        return list(arr)
    except TypeError:
        raise UsageError(
            f"expected an iterable of integers, got {type(arr).__name__}", field=field
        ) from None


ORDER_ALIASES = {"little": "little", "big": "big", "le": "little", "be": "big"}


def check_word(word_size: int, word_order: str) -> int:
    """Validate a bitmap word layout; word_order is 'little'/'big' (or the wire layer's
    'le'/'be')."""
    if word_size not in (32, 64):
        raise UsageError(f"word size must be 32 or 64 bits, not {word_size!r}", field="word_size")
    if word_order not in ORDER_ALIASES:
        raise UsageError(
            f"word order must be 'little' or 'big', not {word_order!r}", field="word_order"
        )
    return word_size // 8


def merge(starts: U64, lasts: U64) -> tuple[U64, U64]:
    """Sort and merge overlapping/adjacent inclusive extents (vectorised)."""
    n = starts.size
    if n == 0:
        return EMPTY, EMPTY
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


def runs_from_sorted(s: npt.NDArray[Any]) -> tuple[U64, U64, npt.NDArray[np.bool_]]:
    """Extents of a sorted frame array (duplicates allowed); also the ``diff == 0`` mask."""
    n = s.size
    d = np.diff(s)
    dup = d == 0
    brk = np.flatnonzero(d > 1)
    if brk.size == n - 1:
        # every frame its own extent (scattered PFNs: an inflate of random pages): starts and
        # lasts are the same values, so one array serves both (a held page set costs half)
        one = s.astype(np.uint64)
        return one, one, dup
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


def frames_1d(arr: Any, field: str) -> npt.NDArray[Any]:
    """Validated 1-D frame array, kept in its own unsigned dtype when it has one: sorting the
    le32 PFNs of an inflate as uint32 is about twice as fast as sorting them as uint64."""
    if isinstance(arr, np.ndarray) and arr.dtype.kind == "u" and arr.ndim == 1:
        return arr
    a = as_uint64(arr, field)
    if a.ndim != 1:
        raise UsageError(f"expected a 1-D array of frames, got shape {a.shape}", field=field)
    return a



# --------------------------------------------------------------------------- text form

TEXT_RE = re.compile(r"(?:\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*)?")
ITEM_RE = re.compile(r"(\d+)(?:-(\d+))?")


def text_error_offset(text: str) -> tuple[int, str]:
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



def highest_bit(a: U64) -> U64:
    """Index of the highest set bit of each (non-zero) uint64, by binary search on shifts."""
    h = np.zeros(a.shape, dtype=np.uint64)
    d = a.copy()
    for k in (32, 16, 8, 4, 2, 1):
        kk = np.uint64(k)
        big = (d >> kk) != 0
        h[big] += kk
        d[big] >>= kk
    return h


def popcount(a: U64) -> npt.NDArray[np.intp]:
    """Set bits per uint64 (vectorised SWAR; numpy < 2.0 has no bitwise_count)."""
    a = a - ((a >> np.uint64(1)) & np.uint64(0x5555555555555555))
    a = (a & np.uint64(0x3333333333333333)) + ((a >> np.uint64(2)) & np.uint64(0x3333333333333333))
    a = (a + (a >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((a * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.intp)


def complement(starts: U64, lasts: U64) -> tuple[U64, U64]:
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


def intersect(as_: U64, al: U64, bs: U64, bl: U64) -> tuple[U64, U64]:
    """Intersection of two merged extent lists: every overlapping pair, found with two
    searchsorted calls; the pieces come out sorted and (as both inputs are merged and
    non-adjacent) never adjacent, so no merge pass is needed."""
    if not as_.size or not bs.size:
        return EMPTY, EMPTY
    lo = np.searchsorted(bl, as_, side="left")  # first b with last >= a.start
    hi = np.searchsorted(bs, al, side="right")  # b with start <= a.last
    cnt = np.maximum(hi - lo, 0)
    total = int(cnt.sum())
    if total == 0:
        return EMPTY, EMPTY
    ai = np.repeat(np.arange(as_.size), cnt)
    bj = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(lo, cnt)
    return np.maximum(as_[ai], bs[bj]), np.minimum(al[ai], bl[bj])


def aligned_blocks(starts: U64, lasts: U64, max_order: int, limit: int
                   ) -> tuple[U64, npt.NDArray[np.uint8]]:
    """:meth:`PageSet.aligned_blocks` on the extents ``starts``/``lasts`` (non-empty, every
    frame below 2**63)."""
    one = np.uint64(1)
    m = np.uint64(max_order)
    s = starts
    e = lasts + one  # exclusive; <= 2**63, no overflow
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
        h = highest_bit(sn ^ en)
        x[nb] = ((en >> (h + one)) << (h + one)) | (one << h)
    y = np.where(has_b, b_dn, x)  # where the tail starts
    head = x - s  # < 2**M; set bits ascending give the head blocks
    tail = e - y  # <= 2**M; set bits descending give the tail blocks
    nmid = np.where(has_b, (b_dn - a_up) >> m, np.uint64(0))
    total = (
        int(nmid.sum(dtype=np.uint64)) + int(popcount(head).sum()) + int(popcount(tail).sum())
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

