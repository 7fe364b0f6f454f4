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

from .. import bitblocks as bb
from ..errors import DecodeError
from ..findings import Finding
from ..pageset import PageSet
from . import bulk
from .hybridbits import blocks_pay, choose_scale, count_runs, hybrid_bits, named_frames
from .hybridset import SWEEP_AT, HybridPageSet, hybrid_extents
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
        # are extents (a plain record is one, a bitmap one per run).  Extents next to blocks
        # are a union that falls back to extents for the whole set when one cuts a unit (one
        # plain order-0 record among 0x55 records of order 3: over 100x the input), and
        # extents alone cost 16 bytes a run (scales no widening by <= 4 units joins: order 3
        # at 8 phases was 107x, order 20 at 4 phases 159x): so a set that is not blocks
        # alone nor cheap extents alone (SWEEP_AT) is swept in start order whenever read,
        # never built (hybridset.py)
        k, ph, held = choose_scale(order[bm], start[bm], blen[bm])
        if not blocks_pay(words, heads, bm[held], blen, order[bm[held]] - np.uint64(k)):
            held[:] = False  # sparse bits: their runs are cheaper as extents
        extents = heads.size - bm.size + count_runs(words, heads, bm[~held], blen)
        if (extents and held.any()) or bb.EXTENT_COST * extents > SWEEP_AT * len(data):
            o8, b8 = order.astype(np.uint8), blen.astype(np.uint8)
            pages = HybridPageSet(words, heads, start, o8, b8,
                                  lambda: _rebuilt(words, heads, start, o8, b8))
            named_other = _total(unit[plain])
            dense = bm
        else:
            pages, c_o = _built(words, heads, start, order, blen, unit, plain, bm, k, ph,
                                held)
            named_other = _total(c_o)
            del c_o
            dense = bm[held]
        starts = counts = None
        if not disjoint:
            # frames named more than once: every record's frames counted, less the set
            dup = named_other + named_frames(words, heads, dense, order, blen) - pages.page_count()
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


def _built(words: U64, heads: NDArray[np.intp], start: U64, order: U64, blen: U64, unit: U64,
           plain: NDArray[np.bool_], bm: NDArray[np.intp], k: int, ph: int,
           held: NDArray[np.bool_]) -> tuple[PageSet, U64]:
    """The records' pages in PageSet's ordinary form, and the extents' counts: bitmap
    records ``bm[held]`` as bit blocks of the scale ``k``/``ph`` (see
    :func:`.hybridbits.choose_scale`), the other records (``plain`` ones too) as extents."""
    other = np.concatenate((np.flatnonzero(plain), bm[~held]))
    s_o, c_o = hybrid_extents(words, heads, other, start, unit, blen)
    del other
    pages = PageSet.from_starts_counts(s_o, c_o) | hybrid_bits(words, heads, bm[held], start,
                                                                order, blen, k, ph)
    return pages, c_o


def _rebuilt(words: U64, heads: NDArray[np.intp], start: U64, order: NDArray[np.uint8],
             blen: NDArray[np.uint8]) -> PageSet:
    """:func:`_built` from a :class:`.hybridset.HybridPageSet`'s records (its resolve)."""
    o, b = order.astype(np.uint64), blen.astype(np.uint64)
    plain = b == 0
    bm = np.flatnonzero(~plain)
    k, ph, held = choose_scale(o[bm], start[bm], b[bm])
    if not blocks_pay(words, heads, bm[held], b, o[bm[held]] - np.uint64(k)):
        held[:] = False
    return _built(words, heads, start, o, b, np.left_shift(np.uint64(1), o), plain, bm, k, ph,
                  held)[0]


def _total(counts: U64) -> int:
    """The sum of frame counts below 2^61 each, as a Python int (summed as two 32-bit
    halves: no uint64 overflow)."""
    return ((int((counts >> np.uint64(32)).sum(dtype=np.uint64)) << 32)
            + int((counts & np.uint64(0xFFFFFFFF)).sum(dtype=np.uint64)))


__all__ = ["decode_hybrid"]
