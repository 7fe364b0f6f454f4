"""Differential tests: the numpy paths (wire/bulk.py, and decode() built on them) against the
construct definitions (wire/structs.py), which are the reference, on arbitrary bytes in both
byte orders, both word sizes and both word orders.

The construct side is evaluated with plain Python on small inputs (that is what makes it a
reference); the numpy side never sees construct.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto.errors import DecodeError
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.wire import WireLayout, bulk, decode
from virtio_balloon_proto.wire.structs import BMAP_HDR_SIZE, RESP_HDR_SIZE, structs

SETTINGS = settings(max_examples=120, deadline=None)
orders = st.booleans()
word_sizes = st.sampled_from([32, 64])
word_orders = st.sampled_from(["le", "be"])


def _set_bits(words: list[int], word_size: int) -> list[int]:
    """Bit n of an unsigned-long bitmap is bit n % BITS_PER_LONG of word n / BITS_PER_LONG."""
    return [i * word_size + b for i, w in enumerate(words) for b in range(word_size) if w >> b & 1]


# --- PFN arrays -----
@SETTINGS
@given(data=st.binary(max_size=203), little=orders)
def test_pfns_numpy_equals_construct(data: bytes, little: bool) -> None:
    ref = structs(little).pfn_array.parse(data)
    pfns, trailing = bulk.parse_pfns(data, little)
    assert pfns.dtype == np.uint32
    assert pfns.tolist() == list(ref.pfns)
    assert trailing == ref.trailing
    # decode() on top of the numpy path gives the same PFNs, pages and tail
    d = decode("pfns", data, WireLayout("le" if little else "be"))
    assert d.fields()["pfns"] == list(ref.pfns)
    assert d.pages() == PageSet.from_frames(np.array(list(ref.pfns), dtype=np.uint64))
    # and building back agrees with construct's build
    assert bulk.build_pfns(pfns, little, trailing) == structs(little).pfn_array.build(ref)


# --- unsigned-long bitmaps -----
@SETTINGS
@given(data=st.binary(max_size=70), ws=word_sizes, wo=word_orders,
       nbits=st.one_of(st.none(), st.integers(0, 600)))
def test_bitmap_positions_equal_construct_words(
    data: bytes, ws: int, wo: str, nbits: int | None
) -> None:
    wb = ws // 8
    # a partial last word: the bytes present are its first bytes in memory; the rest are 0
    padded = data + bytes(-len(data) % wb)
    words = structs(wo == "le").bitmap_words(ws, len(padded) // wb).parse(padded)
    expect = _set_bits(list(words), ws)
    if nbits is not None:
        expect = [b for b in expect if b < nbits]
    got = bulk.bitmap_positions(data, ws, wo, nbits)
    assert got.dtype == np.uint64
    assert got.tolist() == expect


@SETTINGS
@given(nwords=st.integers(0, 8), ws=word_sizes, wo=word_orders, data=st.data())
def test_build_bitmap_equals_construct_build(nwords: int, ws: int, wo: str,
                                             data: st.DataObject) -> None:
    nbits = nwords * ws
    pos = data.draw(st.sets(st.integers(0, nbits - 1), max_size=40)) if nbits else set()
    words = [0] * nwords
    for p in pos:
        words[p // ws] |= 1 << (p % ws)
    ref = structs(wo == "le").bitmap_words(ws, nwords).build(words)
    got = bulk.build_bitmap(np.array(sorted(pos), dtype=np.uint64), len(ref), ws, wo)
    assert got == ref


@SETTINGS
@given(hdr=st.binary(min_size=BMAP_HDR_SIZE, max_size=BMAP_HDR_SIZE),
       bitmap=st.binary(max_size=48), little=orders, ws=word_sizes, wo=word_orders)
def test_bmap_decode_equals_construct_message(
    hdr: bytes, bitmap: bytes, little: bool, ws: int, wo: str
) -> None:
    """decode('bmap') (header by construct, bits by numpy) against bmap_message + bitmap_words
    evaluated bit by bit in Python, for the inflate reading (bit i = frame start_pfn + i)."""
    ref = structs(little).bmap_message.parse(hdr + bitmap)
    assert ref.bitmap == bitmap
    lay = WireLayout("le" if little else "be", ws, wo)
    try:
        d = decode("bmap", [hdr, bitmap], lay, profile="v3")
    except DecodeError as exc:
        assert exc.field in ("page_shift", "start_pfn")
        return
    f = d.fields()
    for name in ("cmd", "page_shift", "flag", "reserved", "req_id", "start_pfn", "bmap_len"):
        assert f[name] == ref.hdr[name], name
    wb = ws // 8
    padded = bitmap + bytes(-len(bitmap) % wb)
    words = structs(wo == "le").bitmap_words(ws, len(padded) // wb).parse(padded)
    limit = 8 * min(ref.hdr.bmap_len, len(bitmap))
    bits = [b for b in _set_bits(list(words), ws) if b < limit]
    unit = 1 << (ref.hdr.page_shift - 12)
    expect = PageSet.from_extents([[ref.hdr.start_pfn + b, unit] for b in bits])
    assert d.pages() == expect


# --- stats -----
@SETTINGS
@given(data=st.binary(max_size=125), little=orders)
def test_stats_numpy_equals_construct(data: bytes, little: bool) -> None:
    ref = structs(little).stats_buffer.parse(data)
    tags, vals, trailing = bulk.parse_stats(data, little)
    assert tags.tolist() == [e.tag for e in ref.entries]
    assert vals.tolist() == [e.val for e in ref.entries]
    assert trailing == ref.trailing
    assert bulk.build_stats(tags, vals, little) + trailing == structs(little).stats_buffer.build(
        ref
    )


# --- hybrid records -----
@st.composite
def hybrid_payloads(draw: st.DrawFn) -> bytes:
    """Record streams that are mostly well formed (so the walk goes deep), plus noise."""
    little = draw(orders)
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        start = draw(st.integers(0, (1 << 52) - 1))
        shift = draw(st.integers(0, 63))
        blen = draw(st.one_of(st.just(0), st.integers(0, 63)))
        w = bulk.hybrid_head_word(start, shift, blen, little)
        out += w.to_bytes(8, "little" if little else "big")
        out += draw(st.binary(min_size=8 * ((blen + 7) // 8), max_size=8 * ((blen + 7) // 8)))
    out += draw(st.binary(max_size=12))
    return (b"\x01" if little else b"\x00") + out


@SETTINGS
@given(payload=st.one_of(hybrid_payloads(), st.binary(max_size=90).map(lambda b: b"\x01" + b)))
def test_hybrid_records_numpy_equals_construct(payload: bytes) -> None:
    little, body = payload[0] == 1, payload[1:]
    ref = structs(little).hybrid_message.parse(bytes(RESP_HDR_SIZE) + body)
    consumed = len(body) - len(ref.trailing)
    try:
        heads, words, trailing = bulk.parse_hybrid_records(body, little)
    except DecodeError as exc:
        # construct's GreedyRange stops before the record whose bitmap runs past the end;
        # the numpy walk refuses it, naming that record's byte offset
        assert len(ref.trailing) >= 8
        assert exc.offset == consumed
        assert exc.field == f"records[{len(ref.records)}].bmap_len"
        return
    assert trailing == ref.trailing
    start, shift, blen = bulk.hybrid_fields(words[heads], little)
    assert start.tolist() == [r.head.start_pfn for r in ref.records]
    assert shift.tolist() == [r.head.page_shift for r in ref.records]
    assert blen.tolist() == [r.head.bmap_len for r in ref.records]
    bmaps = [words[h + 1 : h + 1 + (int(b) + 7) // 8].tolist()
             for h, b in zip(heads.tolist(), blen.tolist(), strict=True)]
    assert bmaps == [list(r.bmap) for r in ref.records]


@SETTINGS
@given(payload=hybrid_payloads())
def test_hybrid_decode_pages_equal_construct_records(payload: bytes) -> None:
    little, body = payload[0] == 1, payload[1:]
    data = structs(little).virtio_balloon_resp_hdr.build(
        dict(cmd=0, flag=0, id=0, data_len=len(body))) + body
    try:
        d = decode("hybrid", data, WireLayout("le" if little else "be"), profile="hybrid")
    except DecodeError as exc:
        assert exc.field is not None and exc.field.startswith("records")
        return
    ref = structs(little).hybrid_message.parse(data)
    ext: list[list[int]] = []
    for r in ref.records:
        unit = 1 << (r.head.page_shift - 12)
        if r.head.bmap_len == 0:
            ext.append([r.head.start_pfn, unit])
            continue
        # bit i of the le64 words marks the block at start_pfn + i * unit (only i < 8*bmap_len)
        for i in _set_bits(list(r.bmap), 64):
            if i < 8 * r.head.bmap_len:
                ext.append([r.head.start_pfn + i * unit, unit])
    assert d.pages() == PageSet.from_extents(ext)


@pytest.mark.parametrize("little", [True, False])
def test_hybrid_walk_over_many_plain_records(little: bool) -> None:
    # 100k plain records: between bitmap records the heads are found in one vectorised step
    n = 100_000
    words = np.array([bulk.hybrid_head_word(i << 9, 21, 0, little) for i in range(0, n, 1000)]
                     * 1000, dtype=np.uint64)
    body = words.astype("<u8" if little else ">u8").tobytes()
    heads, _, trailing = bulk.parse_hybrid_records(body, little)
    assert heads.tolist() == list(range(n)) and trailing == b""
