"""Byte-exact examples: every expected byte below is written by hand from the C layouts
(seed 2/7 ``balloon_bmap_hdr``, 6/7 ``balloon_req_hdr``, v4/v5 ``virtio_balloon_resp_hdr`` and
its ``__le64`` bitfield record, ``struct virtio_balloon_stat`` packed, ``struct
virtio_balloon_config``), never produced by our encoder.  Each example is checked both ways:
decode(hand bytes) gives the hand-computed fields and pages, encode(fields) gives the bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from virtio_balloon_proto.wire import WireLayout, decode, encode
from virtio_balloon_proto.wire.messages import (
    BitmapMessage,
    ConfigSpace,
    HintCommand,
    PfnArray,
    RequestHeader,
    Stat,
    StatsMessage,
)


def h(text: str) -> bytes:
    """Hex with spaces and '|' as field separators, for readability."""
    return bytes.fromhex(text.replace("|", " "))


# --- v3 balloon_bmap_hdr + bitmap ---------------------------------------------------------------
# struct balloon_bmap_hdr { __virtio16 cmd, page_shift, flag, reserved;
#                           __virtio64 req_id, start_pfn, bmap_len; }       (32 bytes, seed 2/7)
BE_HDR = h(
    "00 00 | 00 0c | 00 00 | 00 00"  # cmd 0, page_shift 12, flag 0, reserved 0  (big-endian)
    "| 00 00 00 00 00 00 00 00"  # req_id 0
    "| 00 00 00 00 00 00 10 00"  # start_pfn 0x1000
    "| 00 00 00 00 00 00 00 10"  # bmap_len 16 bytes = two 64-bit words
)
# unsigned long[2] of a 64-bit big-endian guest (s390x): bit n is bit n%64 of word n/64
BE_BITMAP = h(
    "80 00 00 00 00 00 00 03"  # word 0 = 0x8000000000000003: bits 0, 1, 63
    "| 00 00 00 00 00 00 00 10"  # word 1 = 0x10: bit 4 -> bitmap bit 68
)


def test_bmap_big_endian_header_with_64bit_big_endian_words() -> None:
    lay = WireLayout("be", 64, "be")
    d = decode("bmap", [BE_HDR, BE_BITMAP], lay, profile="v3")
    assert d.fields() == {
        "cmd": 0, "page_shift": 12, "flag": 0, "reserved": 0, "req_id": 0,
        "start_pfn": 0x1000, "bmap_len": 16, "bitmap": [BE_BITMAP.hex()],
    }
    # pages: 0x1000 + {0, 1, 63, 68}
    assert d.extents() == [[0x1000, 2], [0x103F, 1], [0x1044, 1]]
    assert d.findings == ()
    m = BitmapMessage(0, 12, 0, 0, 0, 0x1000, 16, (BE_BITMAP,))
    assert encode(m, lay) == BE_HDR + BE_BITMAP


def test_same_bitmap_bytes_read_as_little_endian_words_are_other_pages() -> None:
    # bytes 80 00 .. 03 as a LE u64 = 0x0300000000000080: bits 7, 56, 57; word 1 = 1 << 60
    d = decode("bmap", [BE_HDR, BE_BITMAP], WireLayout("be", 64, "le"), profile="v3")
    assert d.extents() == [[0x1007, 1], [0x1038, 2], [0x107C, 1]]


def test_bmap_little_endian_header_with_32bit_little_endian_words() -> None:
    hdr = h(
        "00 00 | 0c 00 | 00 00 | 00 00"  # cmd 0, page_shift 12, flag 0, reserved 0 (LE)
        "| 00 00 00 00 00 00 00 00"  # req_id 0
        "| 40 00 00 00 00 00 00 00"  # start_pfn 64 (a multiple of BITS_PER_LONG 32)
        "| 08 00 00 00 00 00 00 00"  # bmap_len 8 = two 32-bit words
    )
    bitmap = h("01 00 00 80 | 00 01 00 00")  # word0 0x80000001: bits 0,31; word1 0x100: bit 40
    lay = WireLayout("le", 32, "le")
    d = decode("bmap", [hdr, bitmap], lay, profile="v3")
    assert (d.fields()["start_pfn"], d.fields()["bmap_len"]) == (64, 8)
    assert d.extents() == [[64, 1], [95, 1], [104, 1]]
    assert d.findings == ()
    assert encode(BitmapMessage(0, 12, 0, 0, 0, 64, 8, (bitmap,)), lay) == hdr + bitmap
    # the same 8 bytes as 32-bit BE words: 0x01000080 (bits 7, 24), 0x00010000 (bit 48)
    d32be = decode("bmap", [hdr, bitmap], WireLayout("le", 32, "be"), profile="v3")
    assert d32be.extents() == [[71, 1], [88, 1], [112, 1]]
    # ... and as one 64-bit BE word 0x0100008000010000: bits 16, 39, 56
    d64be = decode("bmap", [hdr, bitmap], WireLayout("le", 64, "be"), profile="v3")
    assert d64be.extents() == [[80, 1], [103, 1], [120, 1]]


def test_bmap_misc_answer_of_a_64k_guest_uses_real_pfns() -> None:
    # send_unused_pages_info() (seed 7/7): cmd GET_UNUSED_PAGES 0, flag DONE 1, req_id echoes
    # the request's param, page_shift 16, start_pfn and bits in 64 KiB pages
    hdr = h(
        "00 00 | 10 00 | 01 00 | 00 00"  # cmd 0, page_shift 16, flag DONE, reserved 0
        "| 2a 00 00 00 00 00 00 00"  # req_id 42
        "| 40 00 00 00 00 00 00 00"  # start_pfn 64 (64 KiB pages)
        "| 08 00 00 00 00 00 00 00"  # bmap_len 8
    )
    bitmap = h("05 00 00 00 00 00 00 00")  # bits 0 and 2
    d = decode("bmap", [hdr, bitmap], WireLayout("le", 64, "le", 65536), profile="v3",
               role="misc")
    # page 64 -> frames 1024..1039, page 66 -> frames 1056..1071
    assert d.extents() == [[1024, 16], [1056, 16]]
    assert d.findings == ()


# --- v3 balloon_req_hdr -------------------------------------------------------------------------
# struct balloon_req_hdr { __virtio16 cmd; __virtio16 reserved[3]; __virtio64 param; } (seed 6/7)
@pytest.mark.parametrize(
    ("endian", "wire"),
    [
        ("le", "00 00 | 00 00 00 00 00 00 | 08 07 06 05 04 03 02 01"),
        ("be", "00 00 | 00 00 00 00 00 00 | 01 02 03 04 05 06 07 08"),
    ],
)
def test_req_hdr(endian: str, wire: str) -> None:
    lay = WireLayout(endian)
    d = decode("req", h(wire), lay, profile="v3")
    assert d.fields() == {"cmd": 0, "reserved": [0, 0, 0], "param": 0x0102030405060708}
    assert d.findings == ()
    assert encode(RequestHeader(0, (0, 0, 0), 0x0102030405060708), lay) == h(wire)


# --- hybrid: resp_hdr + pfn+order record + bitmap record -----------------------------------------
# struct virtio_balloon_resp_hdr { u8 cmd; u8 flag; __le16 id; __le32 data_len; }
# record: __le64 start_pfn:52 (bits 0-51), page_shift:6 (52-57), bmap_len:6 (58-63)
HYBRID_LE = h(
    "00 | 01 | 34 12 | 18 00 00 00"  # cmd 0, flag 1, id 0x1234, data_len 24
    # 0x200 | 21 << 52 = 0x0150000000000200: a 2 MiB block (order 9) at frame 0x200
    "| 00 02 00 00 00 00 50 01"
    # 0x1000 | 12 << 52 | 8 << 58 = 0x20C0000000001000: bitmap record, one le64 word follows
    "| 00 10 00 00 00 00 c0 20"
    "| 09 00 00 00 00 00 00 80"  # 0x8000000000000009: bits 0, 3, 63
)


def test_hybrid_little_endian_order_record_and_bitmap_record() -> None:
    lay = WireLayout("le")
    d = decode("hybrid", HYBRID_LE, lay, profile="hybrid")
    f = d.fields()
    assert (f["cmd"], f["flag"], f["id"], f["data_len"]) == (0, 1, 0x1234, 24)
    assert f["records"] == [
        {"start_pfn": 0x200, "page_shift": 21, "bmap_len": 0, "bmap": []},
        {"start_pfn": 0x1000, "page_shift": 12, "bmap_len": 8, "bmap": [0x8000000000000009]},
    ]
    assert d.extents() == [[0x200, 512], [0x1000, 1], [0x1003, 1], [0x103F, 1]]
    assert d.findings == ()
    assert encode(d.message, lay) == HYBRID_LE


def test_hybrid_from_json_fields_builds_the_hand_bytes() -> None:
    from virtio_balloon_proto.wire import message_from_json

    lay = WireLayout("le")
    m = message_from_json("hybrid", {"fields": {
        "cmd": 0, "flag": 1, "id": 0x1234,
        "records": [{"start_pfn": 0x200, "page_shift": 21},
                    {"start_pfn": 0x1000, "page_shift": 12, "bmap_len": 8,
                     "bmap": [0x8000000000000009]}]}}, lay)
    assert encode(m, lay) == HYBRID_LE


def test_hybrid_big_endian_bitfields_from_the_msb() -> None:
    # the lead's big-endian variant (structs.py): GCC on a BE guest allocates the bitfields
    # from the MSB of a BE word: start_pfn << 12 | page_shift << 6 | bmap_len
    wire = h(
        "00 | 00 | 00 07 | 00 00 00 08"  # cmd 0, flag 0, id 7, data_len 8 (big-endian)
        "| 00 00 00 00 10 00 05 40"  # 0x10000 << 12 | 21 << 6 | 0 = 0x0000000010000540
    )
    d = decode("hybrid", wire, WireLayout("be"), profile="hybrid")
    assert d.fields()["records"] == [
        {"start_pfn": 0x10000, "page_shift": 21, "bmap_len": 0, "bmap": []}
    ]
    assert d.extents() == [[0x10000, 512]]


# --- stats: packed 10-byte entries --------------------------------------------------------------
# struct virtio_balloon_stat { __virtio16 tag; __virtio64 val; } __attribute__((packed));
STATS = StatsMessage((Stat(4, 0x100000000), Stat(5, 0x1122334455667788)))


@pytest.mark.parametrize(
    ("endian", "wire"),
    [
        ("le", "04 00 | 00 00 00 00 01 00 00 00 | 05 00 | 88 77 66 55 44 33 22 11"),
        ("be", "00 04 | 00 00 00 01 00 00 00 00 | 00 05 | 11 22 33 44 55 66 77 88"),
    ],
)
def test_stats_packed_entries(endian: str, wire: str) -> None:
    lay = WireLayout(endian)
    assert len(h(wire)) == 20  # packed: no padding between the u16 and the u64
    d = decode("stats", h(wire), lay, profile="spec")
    assert d.message == STATS
    assert d.fields()["entries"] == [
        {"tag": 4, "name": "MEMFREE", "val": 0x100000000},
        {"tag": 5, "name": "MEMTOT", "val": 0x1122334455667788},
    ]
    assert d.findings == ()
    assert encode(STATS, lay) == h(wire)


# --- config space (always little-endian) --------------------------------------------------------
# struct virtio_balloon_config { __le32 num_pages; __le32 actual;
#                                __le32 free_page_hint_cmd_id; __le32 poison_val; }
@pytest.mark.parametrize("endian", ["le", "be"])  # the header order must not matter
@pytest.mark.parametrize(
    ("wire", "value"),
    [
        ("00 01 00 00 | 80 00 00 00", ConfigSpace(0x100, 0x80)),
        ("00 01 00 00 | 80 00 00 00 | 01 00 00 80", ConfigSpace(0x100, 0x80, 0x80000001)),
        ("00 01 00 00 | 80 00 00 00 | 01 00 00 80 | aa 00 00 00",
         ConfigSpace(0x100, 0x80, 0x80000001, 0xAA)),
    ],
)
def test_config_space(endian: str, wire: str, value: ConfigSpace) -> None:
    d = decode("config", h(wire), WireLayout(endian), profile="spec")
    assert d.message == value
    assert d.findings == ()
    assert encode(value, WireLayout(endian)) == h(wire)


# --- free page hint command id, PFN arrays --------------------------------------------------------
@pytest.mark.parametrize(("endian", "wire"), [("le", "00 00 00 80"), ("be", "80 00 00 00")])
def test_hint_cmd_id(endian: str, wire: str) -> None:
    d = decode("hint-cmd", h(wire), WireLayout(endian), profile="spec")
    assert d.message == HintCommand(0x80000000)
    assert d.findings == ()
    assert encode(HintCommand(0x80000000), WireLayout(endian)) == h(wire)


@pytest.mark.parametrize(
    ("endian", "wire"),
    [("le", "45 23 01 00 | 01 00 00 00"), ("be", "00 01 23 45 | 00 00 00 01")],
)
def test_pfn_array(endian: str, wire: str) -> None:
    d = decode("pfns", h(wire), WireLayout(endian), profile="spec")
    assert d.fields() == {"pfns": [0x12345, 1]}
    assert d.extents() == [[1, 1], [0x12345, 1]]
    assert d.findings == ()
    m = PfnArray(np.array([0x12345, 1], dtype=np.uint32))
    assert encode(m, WireLayout(endian)) == h(wire)


def test_pfn_array_of_a_16k_guest_is_groups_of_four() -> None:
    # set_page_pfns(): one 16 KiB page = 4 consecutive 4 KiB PFNs, first one aligned
    wire = h("00 01 00 00 | 01 01 00 00 | 02 01 00 00 | 03 01 00 00")
    d = decode("pfns", wire, WireLayout("le", page_size=16384), profile="spec")
    assert d.extents() == [[0x100, 4]]
    assert d.findings == ()


def test_to_json_shape() -> None:
    d = decode("bmap", [BE_HDR, BE_BITMAP], WireLayout("be", 64, "be"), profile="v3")
    j: dict[str, Any] = d.to_json()
    assert list(j) == ["kind", "fields", "pages", "findings"]
    assert j["kind"] == "bmap"
    # kinds without pages have no "pages" key
    c = decode("config", h("00 01 00 00 | 80 00 00 00"), WireLayout(), profile="spec")
    assert list(c.to_json()) == ["kind", "fields", "findings"]
