"""Malformed input of every class: structural impossibilities raise DecodeError naming the field
and byte offset (and the clause when one applies); input that decodes but breaks a rule is
decoded and reported as a finding with the exact rule id, and the bytes are kept.

Inputs are built with ``struct.pack`` from the C layouts, not with our encoder.  The
``FINDINGS`` table has one case per rule id the wire layer can emit, and
``test_every_emitted_rule_has_a_case`` keeps it that way when rules are added.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest

from virtio_balloon_proto.errors import DecodeError, EncodeError
from virtio_balloon_proto.wire import WireLayout, decode, encode
from virtio_balloon_proto.wire.messages import BitmapMessage

LE = WireLayout("le")
BE = WireLayout("be")
WIRE_DIR = Path(__file__).resolve().parents[1] / "virtio_balloon_proto" / "wire"


def bmap_hdr(
    cmd: int = 0, page_shift: int = 12, flag: int = 0, reserved: int = 0, req_id: int = 0,
    start_pfn: int = 0, bmap_len: int = 8, e: str = "<",
) -> bytes:
    """struct balloon_bmap_hdr: __virtio16 x4, __virtio64 x3 (seed 2/7)."""
    return struct.pack(e + "HHHHQQQ", cmd, page_shift, flag, reserved, req_id, start_pfn,
                       bmap_len)


def req_hdr(cmd: int = 0, reserved: tuple[int, int, int] = (0, 0, 0), param: int = 7,
            e: str = "<") -> bytes:
    """struct balloon_req_hdr: __virtio16 cmd, reserved[3]; __virtio64 param (seed 6/7)."""
    return struct.pack(e + "HHHHQ", cmd, *reserved, param)


def resp_hdr(cmd: int = 0, flag: int = 0, id_: int = 0, data_len: int = 0) -> bytes:
    """virtio_balloon_resp_hdr: u8 cmd, u8 flag, le16 id, le32 data_len."""
    return struct.pack("<BBHI", cmd, flag, id_, data_len)


def rec(start: int, page_shift: int, bmap_len: int = 0) -> bytes:
    """le64 start_pfn:52 | page_shift:6 | bmap_len:6."""
    return struct.pack("<Q", start | page_shift << 52 | bmap_len << 58)


def hybrid(*records: bytes, data_len: int | None = None, cmd: int = 0) -> bytes:
    body = b"".join(records)
    return resp_hdr(cmd=cmd, data_len=len(body) if data_len is None else data_len) + body


ONE_BIT = b"\x01" + bytes(7)


@dataclass
class Case:
    rule: str
    kind: str
    data: bytes | list[bytes]
    profile: str = "spec"
    layout: WireLayout = LE
    role: str = "inflate"
    field: str | None = None
    offset: int | None = None
    #: rules that legitimately fire alongside
    others: set[str] = dataclasses.field(default_factory=set)


FINDINGS: list[Case] = [
    # --- PFN arrays
    Case("spec.driver.pfns.len-multiple-of-4", "pfns", struct.pack("<II", 5, 6) + b"\x07\x00",
         field="pfns[2]", offset=8),
    Case("suite.driver.pfns.empty", "pfns", b"", field="pfns", offset=0),
    Case("suite.driver.pfns.at-most-256", "pfns", struct.pack("<257I", *range(257)),
         field="pfns", offset=1024),
    Case("suite.driver.pages.no-duplicate", "pfns", struct.pack(">III", 9, 3, 9), layout=BE,
         field="pfns"),
    # a 16 KiB guest sends 4 consecutive PFNs per page, the first aligned; 64 KiB: 16
    Case("suite.driver.pfns.page-group", "pfns", struct.pack("<4I", 1, 2, 3, 4),
         layout=WireLayout(page_size=16384), field="pfns"),
    # --- v3 bitmap header + buffers
    Case("v3.driver.bmap.reserved-zero", "bmap", [bmap_hdr(reserved=0xBEEF, e=">"), ONE_BIT],
         "v3", BE, field="reserved", offset=6),
    Case("v3.driver.bmap.len-matches-buffers", "bmap", [bmap_hdr(bmap_len=16), ONE_BIT], "v3",
         field="bmap_len", offset=24),
    Case("v3.driver.bmap.len-word-multiple", "bmap", [bmap_hdr(bmap_len=4), ONE_BIT[:4]], "v3",
         field="bmap_len", offset=24),
    Case("v3.driver.bmap.bits-beyond-len", "bmap", [bmap_hdr(bmap_len=8), ONE_BIT + ONE_BIT],
         "v3", field="bitmap", offset=40, others={"v3.driver.bmap.len-matches-buffers"}),
    Case("v3.driver.bmap.start-aligned", "bmap", [bmap_hdr(start_pfn=65), ONE_BIT], "v3",
         field="start_pfn", offset=16),
    Case("v3.driver.bmap.page-shift-matches", "bmap", [bmap_hdr(page_shift=12), ONE_BIT], "v3",
         layout=WireLayout(page_size=65536), role="misc", field="page_shift", offset=2),
    Case("v3.driver.bmap.page-shift-ambiguous", "bmap", [bmap_hdr(page_shift=16), ONE_BIT],
         "v3", layout=WireLayout(page_size=65536), field="page_shift", offset=2),
    Case("v3.driver.bmap.inflate-fields-zero", "bmap", [bmap_hdr(flag=1, req_id=3), ONE_BIT],
         "v3", field="flag"),
    Case("v3.driver.bmap.unknown-cmd", "bmap", [bmap_hdr(cmd=1, flag=1), ONE_BIT], "v3",
         role="misc", field="cmd", offset=0),
    Case("v3.driver.bmap.unknown-flag", "bmap", [bmap_hdr(flag=2), ONE_BIT], "v3", role="misc",
         field="flag", offset=4),
    Case("v3.driver.bmap.empty", "bmap", [bmap_hdr(), bytes(8)], "v3", field="bitmap"),
    Case("v3.driver.bmap.buffer-at-most-8-pages", "bmap",
         [bmap_hdr(bmap_len=8 * 4096 + 8), ONE_BIT + bytes(8 * 4096)], "v3",
         field="bitmap[0]", offset=32),
    Case("v3.driver.bmap.at-most-32-buffers", "bmap", [bmap_hdr(bmap_len=33 * 8)]
         + [ONE_BIT] * 33, "v3", field="bitmap"),
    # 64 KiB guest, inflate: bits are 4 KiB PFNs but each marks a 16-frame page -> overlap
    Case("v3.driver.pages.no-duplicate", "bmap", [bmap_hdr(page_shift=16), b"\x03" + bytes(7)],
         "v3", WireLayout(page_size=65536), field="bitmap",
         others={"v3.driver.bmap.page-shift-ambiguous"}),
    # --- v3 request header
    Case("v3.device.req.unknown-cmd", "req", req_hdr(cmd=1), "v3", field="cmd", offset=0),
    Case("v3.device.req.reserved-zero", "req", req_hdr(reserved=(0, 1, 0), e=">"), "v3", BE,
         field="reserved", offset=2),
    Case("v3.device.req.len-16", "req", req_hdr() + b"\x00", "v3", offset=16),
    # --- hybrid
    Case("hybrid.driver.resp.unknown-cmd", "hybrid", hybrid(rec(0, 12), cmd=3), "hybrid",
         field="cmd", offset=0),
    Case("hybrid.driver.resp.data-len-matches", "hybrid", hybrid(rec(0, 12), data_len=16),
         "hybrid", field="data_len", offset=4),
    Case("hybrid.driver.record.bmap-len-multiple-of-8", "hybrid",
         hybrid(rec(0, 12), rec(64, 12, bmap_len=3), ONE_BIT), "hybrid",
         field="records[1].bmap_len", offset=16),
    Case("hybrid.driver.record.aligned", "hybrid", hybrid(rec(0, 12), rec(0x201, 21)),
         "hybrid", field="records[1].start_pfn", offset=16),
    Case("hybrid.driver.pages.no-duplicate", "hybrid", hybrid(rec(0x200, 21), rec(0x3FF, 12)),
         "hybrid", field="records"),
    # --- stats
    Case("spec.driver.stats.len-multiple-of-10", "stats", struct.pack("<HQ", 4, 1) + b"\x05",
         offset=10),
    Case("spec.driver.stats.duplicate-tag", "stats", struct.pack(">HQHQ", 4, 1, 4, 2),
         layout=BE, field="tag"),
    Case("note.stats.unknown-tag", "stats", struct.pack("<HQ", 65534, 1), field="tag"),
    # --- config, hint
    Case("spec.driver.hint.len-4", "hint-cmd", struct.pack("<I", 0x80000000) + b"\x00",
         offset=4),
]


@pytest.mark.parametrize("case", FINDINGS, ids=lambda c: c.rule)
def test_finding(case: Case) -> None:
    d = decode(case.kind, case.data, case.layout, profile=case.profile, role=case.role)
    rules = [f.rule for f in d.findings]
    assert case.rule in rules
    assert set(rules) <= {case.rule} | case.others, rules
    f = d.findings[rules.index(case.rule)]
    assert (f.field, f.offset) == (case.field, case.offset)
    # decoded and kept: every byte is still there
    raw = case.data if isinstance(case.data, bytes) else b"".join(case.data)
    assert encode(d.message, case.layout) == raw


def _emitted_rules() -> set[str]:
    src = "".join(p.read_text() for p in sorted(WIRE_DIR.glob("*.py")))
    return set(re.findall(r'Finding\(\s*"([^"]+)"', src))


def test_every_emitted_rule_has_a_case() -> None:
    assert {c.rule for c in FINDINGS} == _emitted_rules()


def test_hybrid_trailing_partial_record_is_a_data_len_finding() -> None:
    data = hybrid(rec(0, 12), b"\xaa\xbb\xcc")  # data_len 11 counts the partial record
    d = decode("hybrid", data, LE, profile="hybrid")
    assert [(f.rule, f.offset) for f in d.findings] == [
        ("hybrid.driver.resp.data-len-matches", 16)
    ]
    assert encode(d.message, LE) == data


# --- bmap_len against the bytes present -----------------------------------------------------
def test_bmap_len_larger_than_buffers_counts_only_bits_present() -> None:
    d = decode("bmap", [bmap_hdr(bmap_len=24), b"\x81" + bytes(7)], LE, profile="v3")
    assert [f.rule for f in d.findings] == ["v3.driver.bmap.len-matches-buffers"]
    assert d.extents() == [[0, 1], [7, 1]]


def test_bmap_len_smaller_than_buffers_ignores_bits_past_it() -> None:
    d = decode("bmap", [bmap_hdr(bmap_len=8), ONE_BIT, b"\xff" * 8], LE, profile="v3")
    assert d.extents() == [[0, 1]]
    assert {f.rule for f in d.findings} == {
        "v3.driver.bmap.len-matches-buffers", "v3.driver.bmap.bits-beyond-len"}


@pytest.mark.parametrize("bmap_len", [1 << 63, (1 << 64) - 8])
def test_huge_bmap_len_allocates_nothing(bmap_len: int) -> None:
    tracemalloc.start()
    try:
        d = decode("bmap", [bmap_hdr(bmap_len=bmap_len, e=">"), ONE_BIT],
                   WireLayout("be", 64, "le"), profile="v3")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert "v3.driver.bmap.len-matches-buffers" in [f.rule for f in d.findings]
    assert d.extents() == [[0, 1]]


# --- structural errors -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "profile", "data", "field", "offset"),
    [
        ("bmap", "v3", b"", "cmd", 0),
        ("bmap", "v3", bytes(3), "page_shift", 2),
        ("bmap", "v3", bytes(10), "req_id", 8),
        ("bmap", "v3", bytes(31), "bmap_len", 24),
        ("req", "v3", bytes(5), "reserved", 2),
        ("req", "v3", bytes(15), "param", 8),
        ("hybrid", "hybrid", bytes(3), "id", 2),
        ("hybrid", "hybrid", bytes(7), "data_len", 4),
        ("config", "spec", bytes(6), "actual", 4),
        ("config", "spec", bytes(3), "num_pages", 0),
    ],
)
def test_too_short_names_field_and_offset(
    kind: str, profile: str, data: bytes, field: str, offset: int
) -> None:
    with pytest.raises(DecodeError) as ei:
        decode(kind, data, BE, profile=profile)
    assert (ei.value.field, ei.value.offset) == (field, offset)
    assert f"field '{field}'" in str(ei.value) and f"at byte {offset}" in str(ei.value)


def test_hint_cmd_of_3_bytes_is_an_error_with_its_clause() -> None:
    with pytest.raises(DecodeError) as ei:
        decode("hint-cmd", b"\x00\x00\x80", LE)
    assert (ei.value.field, ei.value.offset, ei.value.clause) == ("cmd_id", 0,
                                                                  "spec.driver.hint.len-4")


def test_bmap_header_split_over_descriptors_still_too_short() -> None:
    with pytest.raises(DecodeError) as ei:
        decode("bmap", [bytes(16), bytes(4)], LE, profile="v3")
    assert (ei.value.field, ei.value.offset) == ("start_pfn", 16)


@pytest.mark.parametrize("page_shift", [0, 11, 31, 0xFFFF])
def test_bmap_page_shift_out_of_range_is_an_error(page_shift: int) -> None:
    with pytest.raises(DecodeError) as ei:
        decode("bmap", [bmap_hdr(page_shift=page_shift), ONE_BIT], LE, profile="v3")
    assert (ei.value.field, ei.value.offset, ei.value.clause) == (
        "page_shift", 2, "v3.driver.bmap.page-shift-matches")


@pytest.mark.parametrize("role", ["inflate", "misc"])
def test_bmap_pages_past_frame_2_64_are_an_error(role: str) -> None:
    # frame 2**64-1 itself is fine: bit 63 of a bitmap starting at 2**64-64
    top = bmap_hdr(start_pfn=(1 << 64) - 64, bmap_len=8)
    assert decode("bmap", [top, bytes(7) + b"\x80"], LE, profile="v3").extents() == [
        [(1 << 64) - 1, 1]]
    # bit 64 is frame 2**64 (inflate); on misc, 8 KiB pages double the frame numbers
    hdr = bmap_hdr(start_pfn=(1 << 64) - 64, bmap_len=16,
                   page_shift=12 if role == "inflate" else 13)
    with pytest.raises(DecodeError) as ei:
        decode("bmap", [hdr, bytes(8) + ONE_BIT], LE, profile="v3", role=role)
    assert (ei.value.field, ei.value.offset) == ("start_pfn", 16)


def test_hybrid_record_bitmap_past_the_end_is_an_error() -> None:
    # record 1 says 16 bytes of bitmap (two le64 words) but only one word follows
    data = hybrid(rec(0, 12), rec(64, 12, bmap_len=16), ONE_BIT)
    with pytest.raises(DecodeError) as ei:
        decode("hybrid", data, LE, profile="hybrid")
    e = ei.value
    assert (e.field, e.offset, e.clause) == ("records[1].bmap_len", 8,
                                             "hybrid.driver.resp.data-len-matches")
    # offset is into the record stream (after the 8-byte resp_hdr)


@pytest.mark.parametrize("page_shift", [0, 11])
def test_hybrid_page_shift_below_12_is_an_error(page_shift: int) -> None:
    with pytest.raises(DecodeError) as ei:
        decode("hybrid", hybrid(rec(0, 12), rec(0, page_shift)), LE, profile="hybrid")
    e = ei.value
    assert (e.field, e.offset, e.clause) == ("records[1].page_shift", 16,
                                             "hybrid.driver.record.page-shift-range")


# --- page groups of 16 KiB / 64 KiB guests -----------------------------------------------------
@pytest.mark.parametrize(
    ("page_size", "pfns", "ok"),
    [
        (16384, [4, 5, 6, 7, 16, 17, 18, 19], True),
        (16384, [5, 6, 7, 8], False),  # not aligned
        (16384, [4, 5, 6], False),  # partial group
        (16384, [4, 5, 7, 6], False),  # out of order inside the group
        (65536, list(range(32, 48)), True),
        (65536, list(range(32, 40)), False),
        (4096, [5, 6, 7], True),  # 4 KiB guests: any PFN is a page
    ],
)
def test_pfn_page_groups(page_size: int, pfns: list[int], ok: bool) -> None:
    d = decode("pfns", struct.pack(f"<{len(pfns)}I", *pfns), WireLayout(page_size=page_size))
    assert ("suite.driver.pfns.page-group" not in [f.rule for f in d.findings]) == ok


# --- config sizes, hint lengths ---------------------------------------------------------------
@pytest.mark.parametrize(("size", "fields"), [(9, 2), (20, 4), (13, 3), (15, 3)])
def test_odd_config_sizes_decode_the_longest_layout_and_keep_the_rest(
    size: int, fields: int
) -> None:
    data = bytes(range(size))
    d = decode("config", data, LE)
    # no size finding: the size needed depends on the negotiated features (5.5.4), larger is
    # allowed (crosvm: 20 bytes); the oracle judges it against the features
    assert d.findings == ()
    assert len(d.fields()) - ("trailing" in d.fields()) == fields
    assert encode(d.message, LE) == data


def test_hint_cmd_of_5_bytes_keeps_the_extra_byte() -> None:
    d = decode("hint-cmd", b"\x01\x00\x00\x80\xee", LE)
    assert d.fields() == {"cmd_id": 0x80000001, "trailing": "ee"}
    assert [f.rule for f in d.findings] == ["spec.driver.hint.len-4"]


# --- encode refuses values that do not fit -----------------------------------------------------
def test_encode_out_of_range_names_the_field() -> None:
    with pytest.raises(EncodeError) as ei:
        encode(BitmapMessage(0, 12, 0, 1 << 16, 0, 0, 0), LE)
    assert ei.value.field == "reserved"


def test_duplicate_pfn_finding_counts_every_repeat() -> None:
    d = decode("pfns", struct.pack("<5I", 9, 3, 9, 9, 3), LE)
    (f,) = d.findings
    assert f.rule == "suite.driver.pages.no-duplicate"
    assert f.message.startswith("3 PFN(s)")
    assert d.extents() == [[3, 1], [9, 1]]
