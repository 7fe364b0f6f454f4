"""Hybrid bitmap records straight to (scaled) bit blocks: a page set that costs what the
records cost on the wire.

A hybrid record ``[start_pfn | page_shift | bmap_len]`` + up to 8 le64 words names, for each
set bit ``i``, the ``2^order`` frames from ``start_pfn + i * 2^order`` (order =
page_shift - 12).  As extents, alternating bits are 16 bytes per bit (issue 12: 281x the
input for overlapping order-0 records, 257x at order >= 1).  Here the records' words are laid
into bit blocks of one scale (:mod:`..scaledblocks`: a bit per unit of ``2^shift`` frames from
``phase``): a record of order ``k >= shift`` whose start is ``phase`` mod ``2^shift`` is its
bits each widened to ``2^(k - shift)`` units.  :func:`choose_scale` picks the scale that
holds the most bitmap bytes with at most :data:`MAX_WIDEN` units per bit (so records of
orders 0 and 1, or of order 1 at two phases, are one set of blocks, not blocks plus extents);
what no scale holds stays extents (the caller's).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .. import bitblocks as bb
from ..pageset import PageSet

U64 = NDArray[np.uint64]

#: the widest a record's bit may be widened to fit a finer scale (units per bit, log2): 4
#: units per bit cost at most 4x the blocks of the record (still about 4.5 bytes per input
#: byte), where an extent per run of alternating bits is 56 bytes per input byte
MAX_WIDEN = 2
#: records laid into blocks at a time (a fixed scratch: 2,048 * 32 words * 8 bytes * 2)
CHUNK = 2048


def record_words(words: U64, heads: NDArray[np.intp], recs: NDArray[np.intp],
                 blen: U64, out: U64 | None = None) -> U64:
    """(n, 8) bitmap words of the records ``recs`` (indices into ``heads``), bits at or past
    each record's bmap_len * 8 cleared, missing words zero; written into ``out`` (zeros, of
    that shape) when given."""
    bl = blen[recs].astype(np.int64)
    nw = (bl + 7) >> 3  # 1..8 words each
    if out is None:
        out = np.zeros((recs.size, 8), dtype=np.uint64)
    h = heads[recs]
    for k in range(8):
        sel = np.flatnonzero(nw > k)
        if not sel.size:
            break
        valid = np.clip(bl[sel] * 8 - 64 * k, 0, 64).astype(np.uint64)
        mask = np.where(valid >= np.uint64(64), np.uint64(0xFFFFFFFFFFFFFFFF),
                        (np.uint64(1) << (valid & np.uint64(63))) - np.uint64(1))
        out[sel, k] = words[h[sel] + 1 + k] & mask
    return out


def choose_scale(order: U64, start: U64, blen: U64) -> tuple[int, int, NDArray[np.bool_]]:
    """``(shift, phase, held)``: the scale whose blocks hold the most bitmap bytes of the
    records (``order``, ``start``, ``blen`` per bitmap record), and which records they hold
    (order in ``shift .. shift + MAX_WIDEN``, start = phase mod 2^shift).  Ties go to the
    larger shift (narrower widening), then the smaller phase."""
    weight = blen.astype(np.float64)
    best: tuple[float, int, int] | None = None
    orders = {int(o) for o in np.unique(order).tolist()}
    for k in sorted({o - j for o in orders for j in range(MAX_WIDEN + 1) if o - j >= 0},
                    reverse=True):
        elig = (order >= np.uint64(k)) & (order <= np.uint64(k + MAX_WIDEN))
        key = start[elig] & np.uint64((1 << k) - 1)
        uniq, inv = np.unique(key, return_inverse=True)
        score = np.bincount(inv.reshape(-1), weights=weight[elig])
        j = int(np.argmax(score))  # the first of equal scores: the smallest phase
        if best is None or float(score[j]) > best[0]:
            best = (float(score[j]), k, int(uniq[j]))
    assert best is not None  # at least one record, so at least its own order
    _, k, p = best
    held = ((order >= np.uint64(k)) & (order <= np.uint64(k + MAX_WIDEN))
            & ((start & np.uint64((1 << k) - 1)) == np.uint64(p)))
    return k, p, held


def count_runs(words: U64, heads: NDArray[np.intp], recs: NDArray[np.intp], blen: U64,
               chunk: int = CHUNK) -> int:
    """How many runs of set bits the bitmap records ``recs`` hold (runs never cross from
    one record into the next): the extents they would cost."""
    runs = 0
    for c0 in range(0, recs.size, chunk):
        w = record_words(words, heads, recs[c0:c0 + chunk], blen)
        carry = np.zeros_like(w)
        carry[:, 1:] = w[:, :-1] >> np.uint64(63)
        carry |= w << np.uint64(1)
        np.bitwise_not(carry, out=carry)
        carry &= w  # the bits that start a run
        runs += int(np.bitwise_count(carry).sum(dtype=np.uint64))
    return runs


def blocks_pay(words: U64, heads: NDArray[np.intp], recs: NDArray[np.intp], blen: U64,
               widen: U64) -> bool:
    """The density rule of :mod:`..bitblocks`, before any block is built: whether the
    records ``recs`` (bits widened by ``2^widen`` units each) cost less as blocks (at most
    ``2^widen + 1`` per record) than as extents (one per run of set bits in a record).
    One-bit records far apart were a 72-byte block each until the finished set was turned
    into extents (16.8x the input)."""
    runs = count_runs(words, heads, recs, blen)
    blocks = int(((np.uint64(1) << widen) + np.uint64(1)).sum(dtype=np.uint64))
    return bb.BLOCK_COST * blocks < bb.EXTENT_COST * runs


def _widen(w: U64, e: int) -> U64:
    """(n, 8) words -> (n, 8 * 2^e) words: every bit repeated 2^e times, in order."""
    if e == 0:
        return w
    bits = np.unpackbits(np.ascontiguousarray(w, dtype="<u8").view(np.uint8), axis=1,
                         bitorder="little")
    wide = np.packbits(np.repeat(bits, 1 << e, axis=1), axis=1, bitorder="little")
    return np.ascontiguousarray(wide).view("<u8").astype(np.uint64)


def _lay(w: U64, s: U64) -> tuple[U64, U64]:
    """Rows of bits ``w`` ((n, m) words, m a multiple of 8) placed from unit ``s`` of each
    row: the ``m // 8 + 1`` 512-unit blocks they can touch, as (block numbers, (., 8) words),
    all-zero rows dropped."""
    n, m = w.shape
    nb = m // 8 + 1
    off = (s & np.uint64(511)).astype(np.intp)
    q, b = off >> 6, (off & 63).astype(np.uint64)
    win = np.zeros((n, 8 * nb), dtype=np.uint64)
    rix = np.arange(n)
    back = np.where(b == 0, np.uint64(0), np.uint64(64) - b) & np.uint64(63)
    for k in range(m):
        win[rix, q + k] |= w[:, k] << b
        win[rix, q + k + 1] |= np.where(b == 0, np.uint64(0), w[:, k] >> back)
    blk = (s >> np.uint64(9))[:, None] + np.arange(nb, dtype=np.uint64)
    rows = win.reshape(-1, 8)
    keep = np.flatnonzero(rows.any(axis=1))  # a record often fills fewer blocks
    return blk.reshape(-1)[keep], rows[keep]


def hybrid_bits(words: U64, heads: NDArray[np.intp], recs: NDArray[np.intp], start: U64,
                order: U64, blen: U64, shift: int = 0, phase: int = 0) -> PageSet:
    """The frames of the bitmap records ``recs`` (all held by the scale ``shift``/``phase``,
    see :func:`choose_scale`) as bit blocks of that scale: each record's bits, widened to
    ``2^(order - shift)`` units, placed from unit ``start >> shift`` into the blocks they
    touch; blocks shared by records OR-ed together (overlapping records too)."""
    if not recs.size:
        return PageSet()
    blks: list[U64] = []
    rows: list[U64] = []
    widen = (order[recs] - np.uint64(shift)).astype(np.intp)
    for e in np.unique(widen).tolist():
        sel = recs[widen == e]
        for c0 in range(0, sel.size, CHUNK):
            r = sel[c0:c0 + CHUNK]
            w = _widen(record_words(words, heads, r, blen), e)
            b, x = _lay(w, start[r] >> np.uint64(shift))  # in units
            blks.append(b)
            rows.append(x)
    blk, pairs = gather(blks), gather(rows)
    if blk.size == 0:
        return PageSet()
    if blk.size > 1 and not bool(np.all(blk[1:] >= blk[:-1])):
        o = np.argsort(blk, kind="stable")
        blk, pairs = blk[o], pairs[o]
    uniq = np.flatnonzero(np.concatenate(([True], blk[1:] != blk[:-1])))
    if uniq.size < blk.size:  # records sharing a block
        pairs = np.bitwise_or.reduceat(pairs, uniq, axis=0)
    bits: NDArray[np.uint8] = np.ascontiguousarray(pairs, dtype="<u8").view(np.uint8)
    # no overflow: start_pfn < 2^52 and a record names < 504 * 2^order frames (< 2^61)
    return PageSet.from_blocks(blk[uniq], bits.reshape(-1, 64), shift, phase)


def gather(parts: list[U64]) -> U64:
    """``np.concatenate(parts)``, emptying ``parts`` as it copies: the result and the parts
    are never both whole (a one-bit record's block row is 4.5 times the record)."""
    out = np.empty((sum(p.shape[0] for p in parts), *parts[0].shape[1:]), dtype=np.uint64)
    at = 0
    for i, part in enumerate(parts):
        out[at:at + part.shape[0]] = part
        at += part.shape[0]
        parts[i] = out[:0]  # its memory goes now, not after the loop (no view of it kept)
    del part
    return out


def named_frames(words: U64, heads: NDArray[np.intp], recs: NDArray[np.intp], order: U64,
                 blen: U64) -> int:
    """Frames the bitmap records ``recs`` name, counted with repeats (set bits times
    ``2^order``, a Python int: no uint64 overflow)."""
    total = 0
    o = order[recs]
    for k in np.unique(o).tolist():
        sel = recs[o == np.uint64(k)]
        for c0 in range(0, sel.size, 1 << 16):
            w = record_words(words, heads, sel[c0:c0 + (1 << 16)], blen)
            total += int(np.bitwise_count(w).sum(dtype=np.uint64)) << int(k)
    return total


__all__ = ["CHUNK", "MAX_WIDEN", "blocks_pay", "choose_scale", "count_runs", "gather",
           "hybrid_bits",
           "named_frames", "record_words"]
