"""``SeedV3Driver(exact=True)``: the seed driver's five bugs (codecs/v3.py docstring), each with
the exact wire consequence a decoder of real captures sees, next to what the fixed driver sends.
"""

from __future__ import annotations

from virtio_balloon_proto.codecs import Chain, decode_buffer, decode_pages, v3
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.wire import WireLayout

LE64 = WireLayout()


def rules(chain: Chain) -> set[str]:
    return {f.rule for f in decode_buffer("v3", "inflate", chain, LE64).findings}


# --- bug 1: nr_used_bmap = nr_pfn / PFNS_PER_BMAP (integer division) ----------------------------
def test_bug1_small_window_has_no_bitmap_buffer() -> None:
    pages = PageSet.from_text("65-66,130")  # a window of 128 PFNs < 262,144
    exact = v3.encode_pages(pages, LE64, exact=True)
    assert len(exact) == 1 and len(exact[0]) == 1  # the header alone: nr_buf = 0 + 1
    assert len(exact[0][0].data) == 32
    assert int.from_bytes(exact[0][0].data[24:32], "little") == 16  # bmap_len still 16
    d = decode_buffer("v3", "inflate", exact[0], LE64)
    assert {"v3.driver.bmap.len-matches-buffers", "v3.driver.bmap.empty"} <= \
        {f.rule for f in d.findings}
    assert not d.pages  # the host learns nothing
    fixed = v3.encode_pages(pages, LE64)
    assert len(fixed[0]) == 2 and rules(fixed[0]) == set()
    assert decode_pages("v3", "inflate", fixed, LE64) == pages


def test_bug1_large_window_stretches_the_last_buffer() -> None:
    # two bitmap pages (pfn_limit 524,288); pages 0 and 300,000: nr_pfn = roundup(300001, 64)
    # = 300,032, bmap_len 37,504, nr_used_bmap = 300032 / 262144 = 1, so buffer 0 is
    # bmap_len - 0 = 37,504 bytes long: 4,736 bytes past page_bitmap[0]'s 32 KiB, where the
    # bit of page 300,000 is not (it lives in page_bitmap[1], never sent)
    pages = PageSet.from_text("0,300000")
    exact = v3.encode_pages(pages, LE64, nr_page_bmap=2, exact=True)
    assert [len(s.data) for s in exact[0]] == [32, 37_504]
    d = decode_buffer("v3", "inflate", exact[0], LE64)
    assert "v3.driver.bmap.buffer-at-most-8-pages" in {f.rule for f in d.findings}
    assert d.pages == PageSet.from_text("0")  # page 300,000 is lost
    fixed = v3.encode_pages(pages, LE64, nr_page_bmap=2)
    assert [len(s.data) for s in fixed[0]] == [32, 32_768, 4_736]
    assert decode_pages("v3", "inflate", fixed, LE64) == pages


# --- bug 2: for (pfn = min_pfn; pfn < max_pfn; ...) with max_pfn rounded up to BITS_PER_LONG ------
def test_bug2_lone_page_at_multiple_of_64_is_never_sent() -> None:
    # min_pfn = rounddown(128, 64) = 128 = roundup(128, 64) = max_pfn: the loop never runs
    assert v3.encode_pages(PageSet.from_text("128"), LE64, exact=True) == []
    assert decode_pages("v3", "inflate", v3.encode_pages(PageSet.from_text("128"), LE64),
                        LE64) == PageSet.from_text("128")


def test_bug2_highest_page_starting_its_own_window_is_lost() -> None:
    # frames 0..262,144: min_pfn 0, max_pfn = roundup(262144, 64) = 262,144; window 1 starts
    # at 262,144, which is not < max_pfn, so its page is never told to the host
    pages = PageSet.from_range(0, 262_145)
    exact = v3.encode_pages(pages, LE64, exact=True)
    assert len(exact) == 1  # window 0 only (a full PFNS_PER_BMAP: bug 1 does not bite)
    assert int.from_bytes(exact[0][0].data[16:24], "little") == 0
    assert decode_pages("v3", "inflate", exact, LE64) == PageSet.from_range(0, 262_144)
    fixed = v3.encode_pages(pages, LE64)
    assert len(fixed) == 2
    assert int.from_bytes(fixed[1][0].data[16:24], "little") == 262_144
    assert decode_pages("v3", "inflate", fixed, LE64) == pages


# --- bug 3: the shared bmap_hdr keeps cmd/flag/req_id of the last misc answer -------------------
def test_bug3_inflate_after_unused_answer_carries_flag_and_req_id() -> None:
    drv = v3.SeedV3Driver(LE64, nr_page_bmap=1, exact=True)
    drv.answer_unused(PageSet.from_text("0-9"), 0xABCDEF, 300_000)
    chains = drv.encode_pages(PageSet.from_range(0, 262_144))  # one full window: a buffer
    hdr = chains[0][0].data
    assert hdr[:8] == bytes.fromhex("0000 0c00 0100 0000")  # cmd 0, flag 1 = DONE
    assert int.from_bytes(hdr[8:16], "little") == 0xABCDEF  # req_id of the answer
    d = decode_buffer("v3", "inflate", chains[0], LE64)
    f = [x for x in d.findings if x.rule == "v3.driver.bmap.inflate-fields-zero"]
    assert f and f[0].field == "flag"
    assert d.pages == PageSet.from_range(0, 262_144)  # the pages themselves still arrive
    fixed = v3.SeedV3Driver(LE64)
    fixed.answer_unused(PageSet.from_text("0-9"), 0xABCDEF, 300_000)
    assert fixed.encode_pages(PageSet.from_text("1"))[0][0].data[:16] == \
        bytes.fromhex("0000 0c00 0000 0000 0000000000000000")


# --- bug 4: DONE's bmap_len = nr_pfn / BITS_PER_BYTE truncates --------------------------------
def test_bug4_done_truncation_loses_the_last_nr_pfn_mod_8_pages() -> None:
    # get_max_pfn() = 100: nr_pfn = 100, bmap_len = 12 bytes = 96 bits; pages 96..99 (the last
    # 100 % 8 = 4) cannot be said
    unused = PageSet.from_text("3,96-99")
    chains = v3.SeedV3Driver(LE64, exact=True).answer_unused(unused, 7, 100)
    assert len(chains) == 1
    hdr, bitmap = chains[0][0].data, chains[0][1].data
    assert int.from_bytes(hdr[24:32], "little") == 12 and len(bitmap) == 12
    d = decode_buffer("v3", "misc", chains[0], LE64)
    assert d.pages == PageSet.from_text("3")
    assert "v3.driver.bmap.len-word-multiple" in {f.rule for f in d.findings}
    fixed = v3.SeedV3Driver(LE64).answer_unused(unused, 7, 100)
    assert int.from_bytes(fixed[0][0].data[24:32], "little") == 16  # roundup(100, 64) / 8
    assert decode_buffer("v3", "misc", fixed[0], LE64).pages == unused


def test_bug5_big_endian_guest_with_version_1_echoes_req_id_byte_swapped() -> None:
    # misc_handle_rq(): send_unused_pages_info(vb, ptr_hdr->param) with no virtio64_to_cpu();
    # a BE guest (native unsigned long order: be) on a VERSION_1 (LE) device reads the LE
    # param as a BE number and cpu_to_virtio64()s that back: the echo is byte-swapped
    be_guest_modern = WireLayout("le", 64, "be")
    req = 0x0102030405060708
    unused = PageSet.from_text("3")
    chain = v3.SeedV3Driver(be_guest_modern, exact=True).answer_unused(unused, req, 64)[0]
    assert chain[0].data[8:16] == req.to_bytes(8, "big")  # wire is LE: the value is swapped
    d = decode_buffer("v3", "misc", chain, be_guest_modern)
    assert d.decoded is not None and d.decoded.message.req_id == 0x0807060504030201
    fixed = v3.SeedV3Driver(be_guest_modern).answer_unused(unused, req, 64)[0]
    assert fixed[0].data[8:16] == req.to_bytes(8, "little")
    # a little-endian guest, or a legacy big-endian one (wire order = guest order), is fine
    for lay in (LE64, WireLayout("be", 64, "be")):
        c = v3.SeedV3Driver(lay, exact=True).answer_unused(unused, req, 64)[0]
        assert decode_buffer("v3", "misc", c, lay).decoded.message.req_id == req  # type: ignore[union-attr]


def test_exact_mode_equals_fixed_mode_when_no_bug_is_hit() -> None:
    # a full window of one bitmap page and a last page not on a 64 boundary: nr_pfn is a
    # whole PFNS_PER_BMAP, so the integer division is exact and nothing is dropped
    pages = PageSet.from_range(0, 262_143)
    assert v3.encode_pages(pages, LE64, exact=True) == v3.encode_pages(pages, LE64)
