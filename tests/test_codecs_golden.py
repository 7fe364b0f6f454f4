"""Golden examples: the exact bytes each dialect's driver sends for a few small sets, worked out
by hand from the C in the comments (seed 4/7 ``tell_host``/``set_page_bitmap``, Linux
``set_page_pfns``, the v5 hybrid record bitfields).  Expected bytes are literals, never computed.
"""

from __future__ import annotations

from virtio_balloon_proto.codecs import decode_pages, encode_pages, hybrid, spec, v3
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.wire import WireLayout

LE64 = WireLayout("le", 64, "le", 4096)  # x86-64, VERSION_1
BE32 = WireLayout("be", 32, "be", 4096)  # 32-bit big-endian legacy guest (ppc32, s390 31-bit)


def hx(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("|", ""))


# --- spec: __virtio32 pfns[] ----------------------------------------------------------------------
def test_spec_pfns_le_and_be() -> None:
    # vb->pfns[i] = cpu_to_virtio32(vdev, pfn): frames 1, 2, 0x12345678
    pages = PageSet.from_text("1-2,305419896")
    le = spec.encode_pfns(pages, LE64)
    assert [[s.data for s in c] for c in le] == [[hx("01000000 02000000 78563412")]]
    be = spec.encode_pfns(pages, WireLayout("be", 64, "be", 4096))
    assert [[s.data for s in c] for c in be] == [[hx("00000001 00000002 12345678")]]


def test_spec_pfns_16k_guest_sends_four_per_page() -> None:
    # set_page_pfns(): one 16 KiB page at frame 4 -> pfns 4, 5, 6, 7 (VIRTIO_BALLOON_PAGES_PER_PAGE)
    pages = PageSet.from_text("4-7")
    chains = spec.encode_pfns(pages, WireLayout("le", 64, "le", 16384))
    assert chains[0][0].data == hx("04000000 05000000 06000000 07000000")


def test_spec_pfns_split_at_256() -> None:
    # VIRTIO_BALLOON_ARRAY_PFNS_MAX = 256: frames 0..256 are two buffers, 1024 + 4 bytes
    chains = spec.encode_pfns(PageSet.from_range(0, 257), LE64)
    assert [len(c[0].data) for c in chains] == [1024, 4]
    assert chains[1][0].data == hx("00010000")  # pfn 256


# --- v3: balloon_bmap_hdr + unsigned long bitmap -----------------------------------------------
# pages 65, 66, 130 (4 KiB):
#   set_page_bitmap: min_pfn = rounddown(65, BITS_PER_LONG), max_pfn = roundup(...)
#   tell_host: nr_pfn = roundup(end_pfn - start_pfn + 1, BITS_PER_LONG); bmap_len = nr_pfn / 8
V3_PAGES = "65-66,130"


def test_v3_64bit_le() -> None:
    # BITS_PER_LONG 64: start_pfn 64, nr_pfn = roundup(130-64+1 = 67, 64) = 128, bmap_len 16
    chains = v3.encode_pages(PageSet.from_text(V3_PAGES), LE64)
    assert len(chains) == 1
    hdr, *bitmap = [s.data for s in chains[0]]
    assert hdr == hx(
        "0000 0c00 0000 0000"  # cmd 0 | page_shift 12 | flag 0 | reserved 0 (le16 each)
        "0000000000000000"  # req_id 0
        "4000000000000000"  # start_pfn 64
        "1000000000000000"  # bmap_len 16
    )
    # word 0 (pfns 64..127): bits 1, 2 -> 0x6; word 1 (128..191): bit 2 -> 0x4; LE longs
    assert bitmap == [hx("0600000000000000 0400000000000000")]


def test_v3_32bit_be() -> None:
    # BITS_PER_LONG 32: start_pfn 64, nr_pfn = roundup(67, 32) = 96, bmap_len 12; the header's
    # __virtio fields and the raw longs are both big-endian on this guest
    chains = v3.encode_pages(PageSet.from_text(V3_PAGES), BE32)
    hdr, *bitmap = [s.data for s in chains[0]]
    assert hdr == hx(
        "0000 000c 0000 0000"
        "0000000000000000"
        "0000000000000040"
        "000000000000000c"
    )
    # words: pfns 64..95 bits 1,2 -> 0x00000006; 96..127 -> 0; 128..159 bit 2 -> 0x00000004
    assert bitmap == [hx("00000006 00000000 00000004")]
    assert decode_pages("v3", "inflate", chains, BE32) == PageSet.from_text(V3_PAGES)


def test_v3_misc_answer_done_header() -> None:
    # send_unused_pages_info(req_id 0x0102030405060708) on a guest with get_max_pfn() = 128:
    # one window (pfn_limit = PFNS_PER_BMAP), get_unused_pages() returns 0 -> flag DONE,
    # nr_pfn = 128 - 0, bmap_len = 16, cmd BALLOON_GET_UNUSED_PAGES = 0; unused pages 0 and 127
    drv = v3.SeedV3Driver(LE64)
    chains = drv.answer_unused(PageSet.from_text("0,127"), 0x0102030405060708, 128)
    assert len(chains) == 1
    hdr, *bitmap = [s.data for s in chains[0]]
    assert hdr == hx("0000 0c00 0100 0000 0807060504030201 0000000000000000 1000000000000000")
    assert bitmap == [hx("0100000000000000 0000000000000080")]


# --- hybrid: resp_hdr + le64 records (start_pfn 0-51 | page_shift 52-57 | bmap_len 58-63) ------
def test_hybrid_plain_records_le() -> None:
    # frames 0-3 -> one order-2 block: 0 | 14 << 52 = 0x00e0000000000000
    # frames 512-1023 -> one order-9 block (2 MiB): 0x200 | 21 << 52 = 0x0150000000000200
    pages = PageSet.from_text("0-3,512-1023")
    chains = hybrid.encode_pages(pages, LE64, bitmaps=False)
    assert [[s.data for s in c] for c in chains] == [[
        hx("00 00 0000 10000000"),  # cmd 0 | flag 0 | le16 id 0 | le32 data_len 16
        hx("00000000 0000e000" "00020000 00005001"),
    ]]


def test_hybrid_bitmap_record_le() -> None:
    # frames 0-3 and 8: two small blocks in window 0 -> one bitmap record:
    # head 0 | 12 << 52 | 8 << 58 = 0x20c0000000000000, word bits 0-3 and 8 = 0x10f
    pages = PageSet.from_text("0-3,8")
    chains = hybrid.encode_pages(pages, LE64)
    assert chains[0][0].data == hx("00 00 0000 10000000")
    assert chains[0][1].data == hx("000000000000c020 0f01000000000000")
    # the plain form: 0x00e0000000000000 (order 2 at 0), 0x00c0000000000008 (order 0 at 8)
    plain = hybrid.encode_pages(pages, LE64, bitmaps=False)
    assert plain[0][1].data == hx("000000000000e000 080000000000c000")
    assert decode_pages("hybrid", "inflate", chains, LE64) == pages


def test_hybrid_big_endian_bitfields() -> None:
    # a big-endian compiler allocates the bitfields from the MSB: start_pfn << 12 |
    # page_shift << 6 | bmap_len; order-9 block at 512: 0x200000 | 21 << 6 = 0x200540
    pages = PageSet.from_text("512-1023")
    be = WireLayout("be", 64, "be", 4096)
    chains = hybrid.encode_pages(pages, be)
    assert chains[0][0].data == hx("00 00 0000 00000008")
    assert chains[0][1].data == hx("0000000000200540")
    assert decode_pages("hybrid", "inflate", chains, be) == pages


def test_profile_entry_point_is_the_dialect() -> None:
    pages = PageSet.from_text(V3_PAGES)
    assert encode_pages("v3", pages, LE64)[0][1].data == hx("0600000000000000 0400000000000000")
    assert encode_pages("spec", pages, LE64)[0][0].data == hx("41000000 42000000 82000000")
