"""Bit blocks: the dense form of a :class:`~.pageset.PageSet` (one bit per frame).

A page set whose pages alternate (a v3 bitmap of ``0x55`` bytes, hybrid bitmap words full of
isolated bits) has one extent per page: 16 bytes of extent arrays for every bit on the wire,
128 times the bitmap (issue 12 measured 178x and 345x).  Such sets are held as aligned blocks
of :data:`BLOCK_FRAMES` frames instead: ``idx`` (sorted uint64 block numbers, frame // 512)
and ``bits`` (one row of 64 bytes per block, bit ``j`` of row ``r`` -- byte ``j // 8``, bit
``j % 8``, the little-endian bit order of a v3 bitmap -- is frame ``idx[r] * 512 + j``).
No row is all zeros.  A block costs :data:`BLOCK_COST` bytes where an extent costs
:data:`EXTENT_COST`; :func:`dense_is_cheaper` is the density rule every producer applies.

A block may be *scaled* (:mod:`.scaledblocks`): with ``shift`` k and ``phase`` p, bit ``j`` of
row ``r`` is the *unit* ``u = idx[r] * 512 + j``, the ``2**k`` frames from ``p + u * 2**k``
(hybrid records of order k, v3 misc bitmaps of pages above 4 KiB).  Unscaled blocks are
``shift`` 0, ``phase`` 0 (a unit is a frame).  Every function here that answers in frames
(:func:`popcount`, :func:`min_frame`, :func:`max_frame`, :func:`contains`,
:func:`iter_runs`, :func:`runs_to_extents`, :func:`merged_run_count`) honours the scale;
the rest work on units (and :func:`spread` only on unscaled blocks).

Everything here works on whole arrays or on chunks of :data:`CHUNK` blocks (a fixed scratch
of about 1 MiB), never one Python step per frame or per run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .extentarrays import EMPTY, MAX_FRAME, U64, complement, intersect, merge, ro

BLOCK_SHIFT = 9
BLOCK_FRAMES = 1 << BLOCK_SHIFT
BLOCK_BYTES = BLOCK_FRAMES // 8
#: bytes per block (its index and its bits) and per extent (first and last frame)
BLOCK_COST = 8 + BLOCK_BYTES
EXTENT_COST = 16
#: blocks unpacked at a time (about 1.5 KiB of scratch per block, and up to 256 runs)
CHUNK = 256

U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True, eq=False)
class Blocks:
    """Aligned bit blocks: ``idx`` (n,) sorted unique uint64, ``bits`` (n, 64) uint8, no
    all-zero row; both read-only.  ``shift``/``phase``: a bit stands for the ``2**shift``
    frames from ``phase + unit * 2**shift`` (0 <= phase < 2**shift; see the module doc)."""

    idx: U64
    bits: U8
    shift: int = 0
    phase: int = 0

    @property
    def words(self) -> npt.NDArray[np.uint64]:
        """``bits`` as (n, 8) little-endian 64-bit words (a view)."""
        return self.bits.view("<u8")

    def __len__(self) -> int:
        return int(self.idx.size)


def dense_is_cheaper(nruns: int, nblocks: int) -> bool:
    """The density rule: blocks when they cost less than one extent per run."""
    return BLOCK_COST * nblocks < EXTENT_COST * nruns


def make(idx: npt.NDArray[np.uint64], rows: U8, shift: int = 0, phase: int = 0
         ) -> Blocks | None:
    """Blocks from rows aligned with ``idx``, dropping all-zero rows (None when none is left);
    ``shift``/``phase`` their scale (see :class:`Blocks`)."""
    keep = np.flatnonzero(rows.view("<u8").any(axis=1))
    if keep.size == 0:
        return None
    if keep.size == idx.size:
        out_rows = np.ascontiguousarray(rows)
        out_idx = idx
    else:
        out_rows = rows[keep]
        out_idx = idx[keep]
    out_rows.flags.writeable = False
    return Blocks(ro(out_idx), out_rows, shift, phase)


def from_le_bits(le: U8, base: int, nbits: int) -> Blocks | None:
    """The bits ``0 .. nbits-1`` of the little-endian bit string ``le`` (bit ``i`` is byte
    ``i // 8``, bit ``i % 8``) marking frames ``base + i``.  The caller has checked that
    ``base + nbits - 1 <= MAX_FRAME``.  Memory: about four times ``len(le)`` of scratch."""
    nbytes = -(-nbits // 8)
    le = le[:nbytes]
    rem = nbits % 8
    if rem:
        le = le.copy()
        le[-1] &= (1 << rem) - 1
    off = base & (BLOCK_FRAMES - 1)
    q, r = divmod(off, 8)
    if r:  # shift the whole string left by r bits: byte k gets the top bits of byte k-1
        w = le.astype(np.uint16) << np.uint16(r)
        shifted = np.zeros(le.size + 1, dtype=np.uint8)
        shifted[:-1] = w.astype(np.uint8)  # the low byte
        shifted[1:] |= (w >> np.uint16(8)).astype(np.uint8)
        del w
        le = shifted
    nblk = -(-(q + le.size) // BLOCK_BYTES)
    flat = np.zeros(nblk * BLOCK_BYTES, dtype=np.uint8)
    flat[q:q + le.size] = le
    del le
    first = np.uint64(base >> BLOCK_SHIFT)
    return make(first + np.arange(nblk, dtype=np.uint64), flat.reshape(nblk, BLOCK_BYTES))


def last_nonzero(a: U8) -> int:
    """Index of the last non-zero byte (-1 if none), scanning back 64 KiB at a time (no
    index array the size of the input)."""
    step = 1 << 16
    for end in range(a.size, 0, -step):
        nz = np.flatnonzero(a[max(0, end - step):end])
        if nz.size:
            return max(0, end - step) + int(nz[-1])
    return -1


#: blocks a whole-array count looks at a time (its temporaries: 64 bytes a block each)
COUNT_CHUNK = 4096


def popcount(b: Blocks) -> int:
    """Frames in the blocks (set bits times ``2**shift``)."""
    w = b.words
    total = sum(int(np.bitwise_count(w[i:i + COUNT_CHUNK]).sum(dtype=np.uint64))
                for i in range(0, w.shape[0], COUNT_CHUNK))
    return total << b.shift


def _low_bit(word: int) -> int:
    return (word & -word).bit_length() - 1


def min_frame(b: Blocks) -> int:
    w = b.words[0].tolist()
    k = next(i for i, x in enumerate(w) if x)
    unit = (int(b.idx[0]) << BLOCK_SHIFT) + 64 * k + _low_bit(w[k])
    return b.phase + (unit << b.shift)


def max_frame(b: Blocks) -> int:
    w = b.words[-1].tolist()
    k = max(i for i, x in enumerate(w) if x)
    top: int = w[k]
    unit = (int(b.idx[-1]) << BLOCK_SHIFT) + 64 * k + top.bit_length() - 1
    return b.phase + ((unit + 1) << b.shift) - 1


def contains(b: Blocks, frames: U64) -> npt.NDArray[np.bool_]:
    """Membership of each frame (uint64 array)."""
    if b.shift:
        ph = np.uint64(b.phase)
        inside = frames >= ph
        units = (frames - ph) >> np.uint64(b.shift)  # wrapped where not inside: masked
        return inside & _contains_units(b, units)
    return _contains_units(b, frames)


def _contains_units(b: Blocks, frames: U64) -> npt.NDArray[np.bool_]:
    blk = frames >> np.uint64(BLOCK_SHIFT)
    i = np.minimum(np.searchsorted(b.idx, blk), b.idx.size - 1)
    hit = b.idx[i] == blk
    j = (frames & np.uint64(BLOCK_FRAMES - 1)).astype(np.intp)
    byte = b.bits[i, j >> 3]
    out: npt.NDArray[np.bool_] = hit & (((byte >> (j & 7).astype(np.uint8)) & 1) == 1)
    return out


def run_count(b: Blocks) -> int:
    """How many runs of set bits (adjacent blocks continue a run) -- no unpacking, and
    :data:`COUNT_CHUNK` blocks at a time (whole-array temporaries were 4 times the bits)."""
    words = b.words
    n = 0
    for i in range(0, words.shape[0], COUNT_CHUNK):
        w = words[i:i + COUNT_CHUNK]
        carry = np.zeros_like(w)
        carry[:, 1:] = w[:, :-1] >> np.uint64(63)
        # the first block of the chunk continues a run of the block before it (if adjacent)
        lo = max(i - 1, 0)
        idx = b.idx[lo:i + w.shape[0]]
        prev = words[lo:i + w.shape[0] - 1, -1]
        adj = idx[1:] == idx[:-1] + np.uint64(1)
        if i == 0:
            carry[1:, 0] = np.where(adj, prev >> np.uint64(63), np.uint64(0))
        else:
            carry[:, 0] = np.where(adj, prev >> np.uint64(63), np.uint64(0))
        carry |= w << np.uint64(1)
        np.bitwise_not(carry, out=carry)
        carry &= w  # the bits that start a run
        n += int(np.bitwise_count(carry).sum(dtype=np.uint64))
    return n


def _rows_runs(idx: U64, bits: U8) -> tuple[U64, U64]:
    """Runs of the given rows, each cut at its block's end (not merged across blocks)."""
    m = idx.size
    flags = np.zeros((m, BLOCK_FRAMES + 1), dtype=np.int8)  # a zero column ends each row
    flags[:, :BLOCK_FRAMES] = np.unpackbits(bits, axis=1, bitorder="little")
    d = np.diff(flags.reshape(-1), prepend=np.int8(0))
    del flags
    st = np.flatnonzero(d == 1)
    en = np.flatnonzero(d == -1)  # one past each run, in the same row
    w = BLOCK_FRAMES + 1
    row = st // w
    base = idx[row] << np.uint64(BLOCK_SHIFT)
    return base + (st % w).astype(np.uint64), base + (en % w).astype(np.uint64) - np.uint64(1)


def iter_runs(es: U64, el: U64, b: Blocks | None, chunk: int = CHUNK
              ) -> Iterator[tuple[U64, U64]]:
    """The merged runs of the extents ``es``/``el`` (which touch no block of ``b``) and the
    blocks ``b``, ascending, in pieces: concatenated they are the canonical extents."""
    if b is None:
        yield es, el
        return
    held_s, held_l = EMPTY, EMPTY
    e_pos = 0
    n = b.idx.size
    sh, ph = np.uint64(b.shift), np.uint64(b.phase)
    ulast = np.uint64((1 << b.shift) - 1)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        ks, kl = _rows_runs(b.idx[c0:c1], b.bits[c0:c1])
        if b.shift:  # runs of units -> runs of frames (set units lie inside 0..2**64-1)
            ks, kl = ph + (ks << sh), ph + (kl << sh) + ulast
        # first frame after this chunk
        hi = b.phase + ((int(b.idx[c1 - 1]) + 1) << (BLOCK_SHIFT + b.shift))
        e_end = es.size if hi > MAX_FRAME else int(np.searchsorted(es, np.uint64(hi)))
        s, last = merge(np.concatenate((held_s, es[e_pos:e_end], ks)),
                        np.concatenate((held_l, el[e_pos:e_end], kl)))
        e_pos = e_end
        held_s, held_l = s[-1:], last[-1:]  # may continue into the next chunk
        if s.size > 1:
            yield s[:-1], last[:-1]
    s, last = merge(np.concatenate((held_s, es[e_pos:])), np.concatenate((held_l, el[e_pos:])))
    if s.size:
        yield s, last


def block_extents(idx: U64) -> tuple[U64, U64]:
    """The frames of the blocks ``idx`` as merged extents (consecutive blocks joined)."""
    if idx.size == 0:
        return EMPTY, EMPTY
    brk = np.flatnonzero(idx[1:] != idx[:-1] + np.uint64(1))
    first = np.concatenate(([0], brk + 1))
    last = np.concatenate((brk, [idx.size - 1]))
    sh = np.uint64(BLOCK_SHIFT)
    return idx[first] << sh, (idx[last] << sh) + np.uint64(BLOCK_FRAMES - 1)


def extent_bits(es: U64, el: U64, idx: U64) -> U8:
    """Rows (aligned with ``idx``) of the frames of the extents inside each block."""
    rows = np.zeros((idx.size, BLOCK_BYTES), dtype=np.uint8)
    if es.size == 0:
        return rows
    sh = np.uint64(BLOCK_SHIFT)
    w = BLOCK_FRAMES + 1
    for c0 in range(0, idx.size, CHUNK):
        blk = idx[c0:c0 + CHUNK]
        # one extent per block (adjacent ones are fine for intersect): pieces never cross
        ps, pl = intersect(es, el, blk << sh, (blk << sh) + np.uint64(BLOCK_FRAMES - 1))
        if ps.size == 0:
            continue
        r = np.searchsorted(blk, ps >> sh).astype(np.intp)
        lo = (ps & np.uint64(BLOCK_FRAMES - 1)).astype(np.intp)
        hi = (pl & np.uint64(BLOCK_FRAMES - 1)).astype(np.intp) + 1
        marks = np.zeros(blk.size * w, dtype=np.int8)
        # pieces of merged, non-adjacent extents never share an edge
        marks[r * w + lo] = 1
        marks[r * w + hi] -= 1
        flags = np.cumsum(marks.reshape(blk.size, w), axis=1, dtype=np.int8)[:, :BLOCK_FRAMES]
        rows[c0:c0 + blk.size] = np.packbits(flags.view(np.uint8), axis=1, bitorder="little")
    return rows


def rows_for(b: Blocks | None, universe: U64) -> tuple[U8, npt.NDArray[np.bool_]]:
    """The bit rows of ``universe``'s blocks holding ``b``'s bits (``b.idx`` within
    ``universe``; zero rows elsewhere), and which blocks ``b`` did not have."""
    rows = np.zeros((universe.size, BLOCK_BYTES), dtype=np.uint8)
    new = np.ones(universe.size, dtype=bool)
    if b is not None:
        pos = np.searchsorted(universe, b.idx)
        rows[pos] = b.bits
        new[pos] = False
    return rows, new


def spread(es: U64, el: U64, b: Blocks | None, universe: U64) -> tuple[U64, U64, U8]:
    """Re-cut a set (extents ``es``/``el`` plus blocks ``b``, ``b.idx`` within ``universe``)
    so that its blocks are exactly ``universe``: returns the extents left outside those
    blocks and the rows aligned with ``universe``.  Unscaled blocks only (scaled:
    :func:`.scaledblocks.spread`)."""
    assert b is None or b.shift == 0
    rows, new = rows_for(b, universe)
    if es.size and bool(new.any()):
        nidx = universe[new]
        rows[new] = extent_bits(es, el, nidx)
        rs, rl = block_extents(nidx)
        cs, cl = complement(rs, rl)
        es, el = intersect(es, el, cs, cl)
    return es, el, rows


def union_idx(a: Blocks | None, b: Blocks | None) -> U64:
    if a is None:
        return EMPTY if b is None else b.idx
    if b is None:
        return a.idx
    return np.union1d(a.idx, b.idx).astype(np.uint64)


def runs_to_extents(es: U64, el: U64, b: Blocks | None) -> tuple[U64, U64]:
    """The canonical extents of extents + blocks (one allocation per piece)."""
    parts = list(iter_runs(es, el, b))
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return EMPTY, EMPTY
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def merged_run_count(es: U64, el: U64, b: Blocks | None) -> int:
    """How many canonical extents extents + blocks make (no unpacking): the blocks' runs and
    the extents, less one for each extent that touches a run at a block edge."""
    if b is None:
        return int(es.size)
    n = run_count(b) + int(es.size)
    if es.size == 0:
        return n
    # a block spans 2**(9 + shift) frames from phase + idx * 2**(9 + shift)
    sh = np.uint64(BLOCK_SHIFT + b.shift)
    mask = np.uint64((1 << (BLOCK_SHIFT + b.shift)) - 1)
    ph = np.uint64(b.phase)
    # an extent ending just before a block whose bit 0 is set
    nxt = el + np.uint64(1)
    rel = nxt - ph  # wraps where nxt < phase: masked
    at_edge = ((rel & mask) == 0) & (el != np.uint64(MAX_FRAME)) & (nxt >= ph)
    cand = rel[at_edge] >> sh
    n -= int(np.count_nonzero(_has_bit(b, cand, 0)))
    # an extent starting just after a block whose bit 511 is set
    rel = es - ph
    at_edge = ((rel & mask) == 0) & (es > ph)
    cand = (rel[at_edge] >> sh) - np.uint64(1)
    n -= int(np.count_nonzero(_has_bit(b, cand, BLOCK_FRAMES - 1)))
    return n


def _has_bit(b: Blocks, blocks: U64, j: int) -> npt.NDArray[np.bool_]:
    if blocks.size == 0:
        return np.zeros(0, dtype=bool)
    i = np.minimum(np.searchsorted(b.idx, blocks), b.idx.size - 1)
    out: npt.NDArray[np.bool_] = (b.idx[i] == blocks) & (
        ((b.bits[i, j >> 3] >> np.uint8(j & 7)) & 1) == 1)
    return out


__all__ = [
    "BLOCK_COST",
    "BLOCK_FRAMES",
    "EXTENT_COST",
    "Blocks",
    "block_extents",
    "contains",
    "dense_is_cheaper",
    "extent_bits",
    "from_le_bits",
    "iter_runs",
    "last_nonzero",
    "make",
    "max_frame",
    "merged_run_count",
    "min_frame",
    "popcount",
    "run_count",
    "runs_to_extents",
    "spread",
    "union_idx",
]
