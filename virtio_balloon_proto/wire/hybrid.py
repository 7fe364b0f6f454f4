"""Hybrid pfn+order records (``virtio_balloon_resp_hdr`` + 64-bit records, PROTOCOL.md's
hybrid dialect): :func:`decode_hybrid`, the ``kind="hybrid"`` branch of
:func:`.messages.decode`, and :func:`hybrid_extents`, the records' pages as runs.

A record ``[start_pfn:52 | page_shift:6 | bmap_len:6]`` names ``2^(page_shift - 12)`` frames
from ``start_pfn`` when ``bmap_len`` is 0, else the blocks of that size whose bits are set in
the ``ceil(bmap_len / 8)`` le64 words after it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..errors import DecodeError
from ..findings import Finding
from ..pageset import PageSet
from . import bulk
from .hybridbits import (
    blocks_pay,
    choose_scale,
    gather,
    hybrid_bits,
    named_frames,
    record_words,
)
from .layout import WireLayout
from .messages import RESP_HDR_FIELDS, Decoded, HybridMessage, _overlaps, _too_short
from .structs import RESP_HDR_SIZE, structs

U64 = NDArray[np.uint64]


def decode_hybrid(data: bytes, layout: WireLayout, role: str) -> Decoded:
    if len(data) < RESP_HDR_SIZE:
        raise _too_short("virtio_balloon_resp_hdr", RESP_HDR_FIELDS, len(data))
    little = layout.little_endian
    h = structs(little).virtio_balloon_resp_hdr.parse(data[:RESP_HDR_SIZE])
    payload = memoryview(data)[RESP_HDR_SIZE:]  # no copy of the records
    heads, words, trailing = bulk.parse_hybrid_records(payload, little)
    f: list[Finding] = []
    if h.cmd != 0:
        f.append(Finding("hybrid.driver.resp.unknown-cmd", f"cmd {h.cmd} is not known",
                         field="cmd", offset=0))
    if h.data_len != len(payload):
        f.append(Finding("hybrid.driver.resp.data-len-matches",
                         f"data_len says {h.data_len} bytes but {len(payload)} follow",
                         field="data_len", offset=4))
    if trailing:
        f.append(Finding("hybrid.driver.resp.data-len-matches",
                         f"{len(trailing)} trailing byte(s) are not a whole 64-bit record",
                         offset=RESP_HDR_SIZE + len(payload) - len(trailing)))
    start, shift, blen = bulk.hybrid_fields(words[heads], little)
    low = np.flatnonzero(shift < np.uint64(12))
    if low.size:
        k = int(low[0])
        raise DecodeError(f"record page_shift {int(shift[k])} is below 12: a block smaller than "
                          "a 4 KiB frame", field=f"records[{k}].page_shift",
                          offset=RESP_HDR_SIZE + 8 * int(heads[k]),
                          clause="hybrid.driver.record.page-shift-range")
    order = shift - np.uint64(12)
    del shift  # per-record arrays are the decoder's memory when records are small (issue 12)
    unit = np.left_shift(np.uint64(1), order)
    odd = np.flatnonzero(blen % np.uint64(8))
    if odd.size:
        k = int(odd[0])
        f.append(Finding("hybrid.driver.record.bmap-len-multiple-of-8",
                         f"{odd.size} record(s) have a bmap_len that is not whole le64 words "
                         f"(first: record {k}, bmap_len {int(blen[k])})",
                         field=f"records[{k}].bmap_len", offset=RESP_HDR_SIZE + 8 * int(heads[k])))
    mis = np.flatnonzero(start & (unit - np.uint64(1)))
    if mis.size:
        k = int(mis[0])
        f.append(Finding("hybrid.driver.record.aligned",
                         f"{mis.size} record(s) start off their block's natural alignment "
                         f"(first: record {k}, start_pfn {int(start[k]):#x}, order "
                         f"{int(order[k])})", field=f"records[{k}].start_pfn",
                         offset=RESP_HDR_SIZE + 8 * int(heads[k])))
    plain = blen == 0
    bm = np.flatnonzero(~plain)
    nbits = blen * np.uint64(8)
    # the frames each record can name: 2^order for a plain record, bmap_len * 8 blocks of
    # 2^order for a bitmap record (< 2^61, see below: no overflow)
    ends = start + np.where(plain, unit, nbits * unit)
    del nbits
    if start.size < 2 or bool(np.all(start[1:] >= start[:-1])):  # records in order: no sort
        disjoint = bool(np.all(start[1:] >= np.maximum.accumulate(ends)[:-1]))
    else:
        order_ = np.argsort(start, kind="stable")
        disjoint = bool(np.all(start[order_][1:] >= np.maximum.accumulate(ends[order_])[:-1]))
        del order_
    del ends
    pages: PageSet | None = None
    if bm.size:
        # bitmap records go to bit blocks straight from their words (hybridbits.py): one
        # bit per unit of 2^k frames at one scale (records of order k .. k + 2 whose start
        # is the phase mod 2^k, each bit widened to 2^(order - k) units; records sharing a
        # block OR-ed: overlapping ones too); an extent per run of alternating bits was 16
        # bytes per bit: 281x the input when order-0 records overlap, 257x at order >= 1
        # (issue 12).  Plain records, and bitmap records no scale of the most bytes holds,
        # are extents (a plain record is one, a bitmap one per run)
        k, ph, held = choose_scale(order[bm], start[bm], blen[bm])
        if not blocks_pay(words, heads, bm[held], blen, order[bm[held]] - np.uint64(k)):
            held[:] = False  # sparse bits: their runs are cheaper as extents
        dense = bm[held]
        other = np.concatenate((np.flatnonzero(plain), bm[~held]))
        s_o, c_o = hybrid_extents(words, heads, other, start, unit, blen)
        pages = PageSet.from_starts_counts(s_o, c_o) | hybrid_bits(words, heads, dense,
                                                                    start, order, blen, k, ph)
        starts = counts = None
        if not disjoint:
            # frames named more than once: every record's frames counted, less the set
            # (a count is below 2^61: summed as two 32-bit halves, no uint64 overflow)
            named = ((int((c_o >> np.uint64(32)).sum(dtype=np.uint64)) << 32)
                     + int((c_o & np.uint64(0xFFFFFFFF)).sum(dtype=np.uint64))
                     + named_frames(words, heads, dense, order, blen))
            del s_o, c_o
            dup = named - pages.page_count()
            if dup:
                f.append(Finding("hybrid.driver.pages.no-duplicate",
                                 f"{dup} frame(s) named more than once by the records of "
                                 "this message", field="records"))
    else:
        starts, counts = hybrid_extents(words, heads, np.arange(heads.size), start, unit, blen)
        # blocks that overlap an earlier one exist exactly when the records are not disjoint
        ov = 0 if disjoint else _overlaps(starts, counts)
        if ov:
            f.append(Finding("hybrid.driver.pages.no-duplicate",
                             f"{ov} block(s) overlap another block of this message",
                             field="records"))
    msg = HybridMessage(int(h.cmd), int(h.flag), int(h.id), int(h.data_len), words, heads,
                        trailing, little)
    return Decoded("hybrid", msg, layout, tuple(f), starts, counts, role, pageset=pages)


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


__all__ = ["decode_hybrid", "hybrid_extents"]
