"""Vectorised paths for the bulk parts of balloon messages.

construct parses 256 PFNs in ~250 us and 1.8 M in seconds (research/conformance-anchors.md
section C); these numpy paths do the same work on whole arrays.  Each function here has a
construct twin in :mod:`.structs`, and ``tests/test_wire_bulk.py`` checks they agree on
arbitrary input (both byte orders, both word sizes, partial tails).

Nothing here allocates from a size the wire *claims*: every array is a view of, or derived
from, the bytes actually present.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import numpy as np
from numpy.typing import NDArray

from ..errors import DecodeError, EncodeError

U32 = NDArray[np.uint32]
U64 = NDArray[np.uint64]


@cache
def _dt(little: bool, size: int) -> np.dtype[np.unsignedinteger]:
    return np.dtype(("<" if little else ">") + f"u{size}")  # made once: ~2 us a call


def _readonly(a: NDArray[np.generic]) -> NDArray[np.generic]:
    a.flags.writeable = False
    return a


# --- PFN arrays -------------------------------------------------------------------------------
def parse_pfns(data: bytes, little: bool) -> tuple[U32, bytes]:
    """``__virtio32[]`` -> (native uint32 array, trailing 0-3 bytes)."""
    n = len(data) // 4
    arr = np.frombuffer(data, dtype=_dt(little, 4), count=n)
    # a little-endian view of immutable bytes is the array a copy would give: no copy (a
    # decoding kept by the oracle held each buffer's PFNs twice; issue 13, 128 GiB guest)
    arr = arr.astype(np.uint32, copy=not isinstance(data, bytes))
    return _readonly(arr), bytes(data[n * 4 :])  # type: ignore[return-value]


def build_pfns(pfns: NDArray[np.integer], little: bool, trailing: bytes = b"") -> bytes:
    arr = np.asarray(pfns)
    if arr.size and (arr.min() < 0 or arr.max() > 0xFFFFFFFF):
        bad = int(np.flatnonzero((arr < 0) | (arr > 0xFFFFFFFF))[0])
        raise EncodeError(
            f"PFN {int(arr[bad])} does not fit a __virtio32", field=f"pfns[{bad}]", offset=4 * bad
        )
    return arr.astype(_dt(little, 4)).tobytes() + trailing


# --- unsigned-long bitmaps (v3) and le64 bitmap words (hybrid) ---------------------------------
def _to_le_bytes(data: bytes | NDArray[np.uint64], word_size: int, word_order: str
                 ) -> NDArray[np.uint8]:
    """Bitmap bytes rearranged so that bit n of the result is bit n of the bitmap.

    A partial last word is padded at its end with zero bytes: for a big-endian word the
    bytes present are its most significant ones, which is where they belong.
    """
    wb = word_size // 8
    buf = np.frombuffer(data, dtype=np.uint8)
    if word_order == "le":
        return buf
    pad = (-buf.size) % wb
    if pad:
        buf = np.concatenate([buf, np.zeros(pad, dtype=np.uint8)])
    return buf.reshape(-1, wb)[:, ::-1].reshape(-1)


def bitmap_positions(
    data: bytes, word_size: int, word_order: str, nbits: int | None = None
) -> U64:
    """Indices of the set bits of an unsigned-long bitmap, ascending; only bits < ``nbits``."""
    le = _to_le_bytes(data, word_size, word_order)
    if nbits is not None and nbits < le.size * 8:
        full, rem = divmod(max(nbits, 0), 8)
        le = le[: full + (1 if rem else 0)].copy()
        if rem:
            le[-1] &= (1 << rem) - 1
    bits = np.unpackbits(le, bitorder="little")
    return np.flatnonzero(bits).astype(np.uint64)


def dilate_bits(le: NDArray[np.uint8], nbits: int, width: int
                ) -> tuple[NDArray[np.uint8], int]:
    """Bits ``0 .. nbits - 1`` of the little-endian bit string ``le``, each widened to
    ``width`` bits (bit n set marks n .. n + width - 1): the union as a bit string of
    ``nbits + width - 1`` bits, and how many set bits lie within ``width - 1`` of an earlier
    set bit (pages that overlap an earlier page).  Works on the whole string as one integer:
    a few copies of ``len(le)`` bytes and ``log2(width)`` shift-ORs, never a list of bits."""
    x = int.from_bytes(le[: -(-nbits // 8)].tobytes(), "little") & ((1 << nbits) - 1)
    if width <= 1:
        return np.frombuffer(x.to_bytes(-(-nbits // 8), "little"), dtype=np.uint8), 0
    # d: OR of x << k for k = 1 .. width - 1, by doubling the covered shifts
    d = x << 1
    have = 1
    while have < width - 1:
        step = min(have, width - 1 - have)
        d |= d << step
        have += step
    overlapping = (x & d).bit_count()
    d |= x
    del x
    total = nbits + width - 1
    return np.frombuffer(d.to_bytes(-(-total // 8), "little"), dtype=np.uint8), overlapping


def popcount_u64(a: NDArray[np.uint64]) -> int:
    """Set bits in all of ``a`` (numpy >= 2's bitwise_count, else 1 MiB at a time)."""
    flat = np.ascontiguousarray(a, dtype=np.uint64).reshape(-1)
    count = getattr(np, "bitwise_count", None)
    if count is not None:
        return int(count(flat).sum(dtype=np.uint64))
    b = flat.view(np.uint8)
    return sum(int(np.unpackbits(b[i:i + (1 << 20)]).sum(dtype=np.uint64))
               for i in range(0, b.size, 1 << 20))


#: bitmap bytes unpacked at a time by :func:`bitmap_runs` (8 Mi bits: 8 MiB of scratch)
_RUN_CHUNK = 1 << 20


def to_le_bits(data: bytes, word_size: int, word_order: str, nbits: int | None = None
               ) -> NDArray[np.uint8]:
    """The bitmap as a little-endian bit string (bit n = byte n // 8, bit n % 8), bits at
    or past ``nbits`` cleared (and whole bytes past it dropped)."""
    return _trimmed(data, word_size, word_order, nbits)


def _trimmed(data: bytes | NDArray[np.uint64], word_size: int, word_order: str, nbits: int | None
             ) -> NDArray[np.uint8]:
    le = _to_le_bytes(data, word_size, word_order)
    if nbits is not None and nbits < le.size * 8:
        full, rem = divmod(max(nbits, 0), 8)
        le = le[: full + (1 if rem else 0)].copy()
        if rem:
            le[-1] &= (1 << rem) - 1
    return le


def bitmap_popcount(data: bytes, word_size: int, word_order: str,
                    nbits: int | None = None) -> int:
    """How many bits of the bitmap are set (only bits < ``nbits``); no per-bit array."""
    le = _trimmed(data, word_size, word_order, nbits)
    return int(np.bitwise_count(le).sum(dtype=np.uint64))


def bitmap_runs(data: bytes | NDArray[np.uint64], word_size: int, word_order: str,
                nbits: int | None = None) -> tuple[U64, U64]:
    """The runs of set bits of an unsigned-long bitmap as (first bit, length), ascending;
    only bits < ``nbits``.  ``data``: the bitmap's bytes, or (read in place) a contiguous
    array of its words in ``word_order``.

    Memory is the two result arrays (16 bytes per run) plus a fixed scratch of about
    9 * _RUN_CHUNK bytes: the bitmap is unpacked a chunk at a time, never one entry per bit.
    Two passes: the first counts the runs so that the results are allocated once.
    """
    le = _trimmed(data, word_size, word_order, nbits)

    def edges() -> Iterator[tuple[int, NDArray[np.int8]]]:
        carry = np.int8(0)
        for base in range(0, le.size, _RUN_CHUNK):
            bits = np.unpackbits(le[base:base + _RUN_CHUNK], bitorder="little").view(np.int8)
            d = np.diff(bits, prepend=carry)  # +1 where a run starts, -1 after it ends
            carry = bits[-1]
            yield base * 8, d
        yield le.size * 8, np.array([-carry], dtype=np.int8)  # a run open at the end closes

    nruns = sum(int(np.count_nonzero(d == 1)) for _, d in edges())
    starts = np.empty(nruns, dtype=np.uint64)
    lens = np.empty(nruns, dtype=np.uint64)
    i = j = 0
    for off, d in edges():
        r = np.flatnonzero(d == 1)
        starts[i:i + r.size] = r + off
        i += r.size
        f = np.flatnonzero(d == -1)
        lens[j:j + f.size] = f + off  # end (exclusive) for now
        j += f.size
    lens -= starts
    return starts, lens


def build_bitmap(
    positions: NDArray[np.integer], nbytes: int, word_size: int, word_order: str
) -> bytes:
    """The inverse of :func:`bitmap_positions` for a bitmap of ``nbytes`` bytes."""
    pos = np.asarray(positions, dtype=np.uint64)
    if pos.size and int(pos.max()) >= nbytes * 8:
        raise EncodeError(
            f"bit {int(pos.max())} does not fit a bitmap of {nbytes} bytes", field="bitmap"
        )
    bits = np.zeros(nbytes * 8, dtype=np.uint8)
    bits[pos.astype(np.intp)] = 1
    le = np.packbits(bits, bitorder="little")
    wb = word_size // 8
    if word_order == "le":
        return le.tobytes()
    if nbytes % wb:
        # a partial big-endian word has no defined bit positions for the bytes it lacks
        raise EncodeError(
            f"a big-endian bitmap must be whole {word_size}-bit words, not {nbytes} bytes",
            field="bmap_len",
        )
    return le.reshape(-1, wb)[:, ::-1].tobytes()


# --- stats: packed 10-byte entries ------------------------------------------------------------
def parse_stats(data: bytes, little: bool) -> tuple[NDArray[np.uint16], U64, bytes]:
    e = "<" if little else ">"
    dt = np.dtype([("tag", e + "u2"), ("val", e + "u8")])  # packed: itemsize 10
    n = len(data) // dt.itemsize
    rec = np.frombuffer(data, dtype=dt, count=n)
    return (
        rec["tag"].astype(np.uint16),
        rec["val"].astype(np.uint64),
        bytes(data[n * dt.itemsize :]),
    )


def build_stats(tags: NDArray[np.integer], vals: NDArray[np.integer], little: bool) -> bytes:
    e = "<" if little else ">"
    dt = np.dtype([("tag", e + "u2"), ("val", e + "u8")])
    rec = np.zeros(len(tags), dtype=dt)
    rec["tag"] = tags
    rec["val"] = vals
    return rec.tobytes()


# --- hybrid records -----------------------------------------------------------------------------
START_MASK = (1 << 52) - 1


def hybrid_fields(words: U64, little: bool) -> tuple[U64, U64, U64]:
    """(start_pfn, page_shift, bmap_len) of each word read as a record head."""
    if little:
        return (
            words & np.uint64(START_MASK),
            (words >> np.uint64(52)) & np.uint64(63),
            words >> np.uint64(58),
        )
    return words >> np.uint64(12), (words >> np.uint64(6)) & np.uint64(63), words & np.uint64(63)


def hybrid_head_word(start_pfn: int, page_shift: int, bmap_len: int, little: bool) -> int:
    if little:
        return start_pfn | page_shift << 52 | bmap_len << 58
    return start_pfn << 12 | page_shift << 6 | bmap_len


def parse_hybrid_records(
    payload: bytes | memoryview, little: bool
) -> tuple[NDArray[np.intp], U64, bytes]:
    """Split a record stream into record heads.

    Returns (indices of the head words, all words native, trailing bytes).  A record with
    ``bmap_len != 0`` is followed by ``ceil(bmap_len / 8)`` bitmap words.  Records are
    variable-length, so the heads are a path through the words (each head names the next),
    found by pointer doubling on whole arrays (no Python step per record); with no bitmap at
    all every word is a head.  Raises DecodeError if a record's bitmap runs past the bytes
    present.
    """
    n = len(payload) // 8
    # native order: a view of the bytes (no copy) on a little-endian host for le records
    words = np.frombuffer(payload, dtype=_dt(little, 8), count=n).astype(np.uint64, copy=False)
    trailing = bytes(payload[n * 8 :])
    blen = words >> np.uint64(58) if little else words & np.uint64(63)  # only what is needed
    # the record after a head at word i starts at f(i) = i + 1 + ceil(bmap_len / 8): the heads
    # are the path 0, f(0), f(f(0)), ... -- found by doubling (g = f^(2^k); positions p_t ..
    # p_(2t-1) = g(p_0 .. p_(t-1))), whole arrays, no Python step per record (a list of one
    # array per bitmap record was 8 times the input for records of one word)
    if not bool(blen.any()):  # plain records only: every word is a head
        return np.arange(n, dtype=np.intp), _readonly(words), trailing  # type: ignore[return-value]
    g = np.empty(n + 1, dtype=np.intp)
    g[:n] = np.arange(1, n + 1, dtype=np.intp)
    g[:n] += ((blen + np.uint64(7)) >> np.uint64(3)).astype(np.intp)
    del blen
    np.minimum(g, n, out=g)
    g[n] = n  # past the end stays there
    path = np.zeros(1, dtype=np.intp)
    while path[-1] < n:
        path = np.concatenate((path, g[path]))
        g = g[g]
    del g
    idx = path[path < n]
    del path
    j = int(idx[-1])  # the last record: does its bitmap fit?
    blen_j = int(words[j] >> np.uint64(58) if little else words[j] & np.uint64(63))
    nw = (blen_j + 7) >> 3
    if j + 1 + nw > n:
        raise DecodeError(
            f"record's bmap_len {blen_j} needs {nw} bitmap words but only "
            f"{n - j - 1} follow",
            field=f"records[{idx.size - 1}].bmap_len",
            offset=8 * j,
            clause="hybrid.driver.resp.data-len-matches",
        )
    return idx, _readonly(words), trailing  # type: ignore[return-value]
