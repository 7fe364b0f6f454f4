"""Wire-message cases, one builder per kind.  Bytes are packed here with ``struct`` straight
from the C layouts (PROTOCOL.md section 3), never with the codec under test."""

from __future__ import annotations

import struct
from typing import Any

from .cases import Case, Group, SplitMix64, case

M64 = (1 << 64) - 1
BMAP_SIZE_4K = 8 * 4096  # BALLOON_BMAP_SIZE on a 4 KiB guest

PFN_LEN = "spec.driver.pfns.len-multiple-of-4"
PFN_256 = "suite.driver.pfns.at-most-256"
PFN_EMPTY = "suite.driver.pfns.empty"
PFN_GROUP = "suite.driver.pfns.page-group"
PFN_DUP = "suite.driver.pages.no-duplicate"


def _e(endian: str) -> str:
    return "<" if endian == "le" else ">"


def _params(kind: str, profile: str, endian: str, *, role: str = "inflate", word_size: int = 64,
            word_order: str | None = None, page_size: int = 4096) -> dict[str, Any]:
    return {"kind": kind, "profile": profile, "role": role, "endian": endian,
            "wordSize": word_size, "wordOrder": word_order or endian, "pageSize": page_size}


def _endian_flags(endian: str) -> tuple[str, ...]:
    return ("BigEndian",) if endian == "be" else ()


# --- pfns -------------------------------------------------------------------------------------
def pfns_groups() -> list[Group]:
    groups = []
    for endian in ("le", "be"):
        for page_size in (4096, 65536):
            tag = f"{endian}-{page_size // 1024}k"
            e = _e(endian)

            def P(*pfns: int, tail: bytes = b"", e: str = e) -> bytes:
                return struct.pack(f"{e}{len(pfns)}I", *pfns) + tail

            rng = SplitMix64(f"pfns/{tag}")
            cs: list[Case] = [case("empty", "no PFN at all (Linux never sends it)", "Empty",
                                   b"", "acceptable", PFN_EMPTY)]
            if page_size == 4096:
                cs += [
                    case("pfn-0", "PFN 0 (guest address 0)", "ZeroValue", P(0), "valid"),
                    case("pfn-1", "one PFN", "Normal", P(1), "valid"),
                    case("pfn-max", "PFN 2^32-1, the largest a __virtio32 holds (16 TiB - 4 KiB)",
                         "MaxValue", P(0xFFFFFFFF), "valid"),
                    case("descending", "PFNs in descending order (Linux sends LRU order)",
                         "Normal", P(9, 8, 7), "valid"),
                    case("full-256-run", "256 consecutive PFNs: one full Linux buffer",
                         "FullBuffer", P(*range(0x1000, 0x1100)), "valid"),
                    case("full-256-scattered", "256 scattered PFNs (seeded)", "FullBuffer Random",
                         P(*rng.sample(1 << 32, 256)), "valid"),
                    case("over-256", "257 PFNs: more than VIRTIO_BALLOON_ARRAY_PFNS_MAX",
                         "TooMany", P(*range(0x2000, 0x2101)), "acceptable", PFN_256),
                    case("duplicate", "the same PFN twice in one buffer", "Duplicate",
                         P(7, 8, 7), "acceptable", PFN_DUP),
                    case("trailing-1", "one PFN and 1 byte of a partial PFN", "TrailingBytes",
                         P(1, tail=b"\x01"), "invalid", PFN_LEN),
                    case("trailing-2", "one PFN and 2 trailing bytes", "TrailingBytes",
                         P(1, tail=b"\x01\x02"), "invalid", PFN_LEN),
                    case("trailing-3", "one PFN and 3 trailing bytes", "TrailingBytes",
                         P(1, tail=b"\x01\x02\x03"), "invalid", PFN_LEN),
                    case("short-3", "3 bytes: not even one PFN", "TrailingBytes Truncated",
                         b"\xff\xff\xff", "invalid", PFN_LEN),
                ]
                for n in (1, 17, 200):
                    pf = rng.sample(1 << 32, n)
                    cs.append(case(f"random-{n}", f"{n} seeded random PFNs", "Random",
                                   P(*pf), "valid"))
            else:
                cs += [
                    case("page-0", "one 64 KiB page: 16 consecutive PFNs from 0", "LargePage",
                         P(*range(16)), "valid"),
                    case("two-pages", "two 64 KiB pages", "LargePage",
                         P(*range(0x40, 0x50), *range(0x10, 0x20)), "valid"),
                    case("full-16-pages", "16 pages = 256 PFNs, the Linux limit", "LargePage "
                         "FullBuffer", P(*range(0x100, 0x200)), "valid"),
                    case("page-max", "the last 64 KiB page below 2^32 PFNs", "LargePage MaxValue",
                         P(*range(0xFFFFFFF0, 0x100000000)), "valid"),
                    case("misaligned-group", "16 consecutive PFNs not starting on a page",
                         "LargePage Misaligned", P(*range(0x11, 0x21)), "acceptable", PFN_GROUP),
                    case("partial-group", "8 PFNs: half a 64 KiB page", "LargePage Misaligned",
                         P(*range(0x10, 0x18)), "acceptable", PFN_GROUP),
                    case("single-pfn", "one PFN on a 64 KiB guest", "LargePage Misaligned",
                         P(0x10), "acceptable", PFN_GROUP),
                    case("trailing-2", "a whole page and 2 trailing bytes",
                         "LargePage TrailingBytes", P(*range(16), tail=b"\x00\x00"), "invalid",
                         PFN_LEN),
                ]
            groups.append(Group(tag, _params("pfns", "spec", endian, page_size=page_size), cs,
                                _endian_flags(endian)))
    return groups


# --- v3 bmap ------------------------------------------------------------------------------------
def bitmap_bytes(positions: list[int], nbytes: int, word_size: int, word_order: str) -> bytes:
    """An unsigned-long bitmap by hand: bit n is bit n % BITS_PER_LONG of word n / BPL."""
    wb = word_size // 8
    nwords = -(-nbytes // wb)
    words = [0] * nwords
    for p in positions:
        words[p // word_size] |= 1 << (p % word_size)
    fmt = ("<" if word_order == "le" else ">") + ("I" if word_size == 32 else "Q")
    return b"".join(struct.pack(fmt, w) for w in words)[:nbytes]


def bmap_groups() -> list[Group]:
    groups = []
    layouts = [(e, ws, wo) for e in ("le", "be") for ws in (64, 32) for wo in ("le", "be")]
    for role in ("inflate", "misc"):
        for endian, ws, wo in layouts:
            groups.append(_bmap_group(role, endian, ws, wo, 4096))
        groups.append(_bmap_group(role, "le", 64, "le", 65536))
    return groups


def _bmap_tag(role: str, endian: str, ws: int, wo: str, page_size: int) -> str:
    tag = f"{endian}{ws}" + ("" if wo == endian else f"-w{wo}")
    if page_size != 4096:
        tag += f"-{page_size // 1024}k"
    return tag if role == "inflate" else f"{role}-{tag}"


def _bmap_group(role: str, endian: str, ws: int, wo: str, page_size: int) -> Group:
    e = _e(endian)
    wb = ws // 8
    ps = page_size.bit_length() - 1
    misc = role == "misc"
    rng = SplitMix64(f"bmap/{role}/{endian}{ws}{wo}/{page_size}")

    def H(*, cmd: int = 0, page_shift: int = ps, flag: int = 0, reserved: int = 0,
          req_id: int = 0, start_pfn: int = 0, bmap_len: int = 0) -> bytes:
        if misc and cmd == 0 and flag == 0 and req_id == 0:
            flag, req_id = 1, 0x1234  # a DONE answer to request 0x1234 by default
        return struct.pack(f"{e}HHHHQQQ", cmd, page_shift, flag, reserved, req_id, start_pfn,
                           bmap_len)

    def B(positions: list[int], nbytes: int) -> bytes:
        return bitmap_bytes(positions, nbytes, ws, wo)

    LEN = "v3.driver.bmap.len-matches-buffers"
    empty_expect = "valid" if misc else "acceptable"
    empty_rules: tuple[str, ...] = () if misc else ("v3.driver.bmap.empty",)
    cs: list[Case] = []
    if page_size == 4096:
        cs += [
            case("one-page", "bit 0: the page at start_pfn 0", "Normal",
                 [H(bmap_len=wb), B([0], wb)], "valid"),
            case("high-start", f"start_pfn {ws * 1000} (a multiple of BITS_PER_LONG), first "
                 "and last bit of the word", "Normal",
                 [H(start_pfn=ws * 1000, bmap_len=wb), B([0, ws - 1], wb)], "valid"),
            case("word-boundary", "the last bit of word 0 and the first of word 1",
                 "WordBoundary", [H(bmap_len=2 * wb), B([ws - 1, ws], 2 * wb)], "valid"),
            case("full-word", "every bit of one word", "FullBuffer",
                 [H(start_pfn=ws, bmap_len=wb), B(list(range(ws)), wb)], "valid"),
            case("no-bitmap", "a header with bmap_len 0 and no bitmap buffer", "Empty",
                 [H()], empty_expect, empty_rules),
            case("zero-words", "two bitmap words with no bit set", "Empty",
                 [H(bmap_len=2 * wb), B([], 2 * wb)], empty_expect, empty_rules),
            case("header-tail", "header and bitmap in one descriptor", "SegmentLayout",
                 [H(bmap_len=wb) + B([1], wb)], "valid"),
            case("header-split", "the 32-byte header over two descriptors", "SegmentLayout",
                 [H(bmap_len=wb)[:16], H(bmap_len=wb)[16:], B([2], wb)], "valid"),
            case("three-buffers", "three bitmap buffers of two words each", "Normal",
                 [H(start_pfn=0x400, bmap_len=6 * wb),
                  *(B([3 + k * 5], 2 * wb) for k in range(3))], "valid"),
            case("32-buffers", "32 bitmap buffers (BALLOON_BMAP_COUNT) of one word each",
                 "FullBuffer", [H(bmap_len=32 * wb), *(B([k % ws], wb) for k in range(32))],
                 "valid"),
            case("33-buffers", "33 bitmap buffers: one more than BALLOON_BMAP_COUNT", "TooMany",
                 [H(bmap_len=33 * wb), *(B([k % ws], wb) for k in range(33))], "invalid",
                 "v3.driver.bmap.at-most-32-buffers"),
            case("misaligned-start", "start_pfn 1: not a multiple of BITS_PER_LONG",
                 "Misaligned", [H(start_pfn=1, bmap_len=wb), B([0], wb)], "invalid",
                 "v3.driver.bmap.start-aligned"),
            case("reserved-nonzero", "reserved = 0x5a5a", "ReservedNonZero",
                 [H(reserved=0x5A5A, bmap_len=wb), B([0], wb)], "invalid",
                 "v3.driver.bmap.reserved-zero"),
            case("len-above-bytes", "bmap_len says two words, one word follows",
                 "LengthMismatch", [H(bmap_len=2 * wb), B([0], wb)], "invalid", LEN),
            case("len-below-bytes", "bmap_len says one word, two follow (the second zero)",
                 "LengthMismatch", [H(bmap_len=wb), B([0], 2 * wb)], "invalid", LEN),
            case("bits-beyond-len", "bmap_len says one word; a bit is set in the second",
                 "LengthMismatch BitsBeyondLength", [H(bmap_len=wb), B([0, ws + 1], 2 * wb)],
                 "invalid", (LEN, "v3.driver.bmap.bits-beyond-len")),
            case("len-huge", "bmap_len 2^64-1 with one word present (never allocate from it)",
                 "HugeLength LengthMismatch", [H(bmap_len=M64), B([0], wb)], "invalid",
                 (LEN, "v3.driver.bmap.len-word-multiple")),
            case("len-partial-word", "bmap_len 2 with 2 bitmap bytes: not whole words",
                 "LengthMismatch", [H(bmap_len=2), B([0], wb)[:2] if wo == "le"
                                    else bytes([0, 0])], "invalid",
                 "v3.driver.bmap.len-word-multiple"),
            case("page-shift-11", "page_shift 11: below a 4 KiB page", "PageShiftRange",
                 [H(page_shift=11, bmap_len=wb), B([0], wb)], "invalid", error="page_shift"),
            case("page-shift-31", "page_shift 31: above any page size", "PageShiftRange",
                 [H(page_shift=31, bmap_len=wb), B([0], wb)], "invalid", error="page_shift"),
            case("page-shift-max", "page_shift 0xffff", "PageShiftRange MaxValue",
                 [H(page_shift=0xFFFF, bmap_len=wb), B([0], wb)], "invalid", error="page_shift"),
            case("page-shift-13", "page_shift 13 on a 4 KiB guest", "PageShiftMismatch",
                 [H(page_shift=13, bmap_len=wb), B([0], wb)], "invalid",
                 "v3.driver.bmap.page-shift-matches"),
            case("truncated-0", "no byte at all", "Truncated", [b""], "invalid", error="cmd"),
            case("truncated-31", "31 bytes of the 32-byte header", "Truncated",
                 [H(bmap_len=wb)[:31]], "invalid", error="bmap_len"),
            case("top-of-space", "the last word below 2^64 frames, its top bit set", "MaxValue",
                 [H(start_pfn=(1 << 64) - ws, bmap_len=wb), B([ws - 1], wb)], "valid"),
            case("past-top-of-space", "a bit mapping to frame 2^64", "AddressOverflow",
                 [H(start_pfn=(1 << 64) - ws, bmap_len=2 * wb), B([ws], 2 * wb)], "invalid",
                 error="start_pfn"),
        ]
        if misc:
            cs += [
                case("cont", "a CONT (flag 0) answer to request 7", "MiscAnswer",
                     [struct.pack(f"{e}HHHHQQQ", 0, ps, 0, 0, 7, 0, wb), B([5], wb)], "valid"),
                case("req-id-max", "req_id 2^64-1 (echoes a param of 2^64-1)",
                     "MiscAnswer MaxValue", [H(flag=1, req_id=M64, bmap_len=wb), B([5], wb)],
                     "valid"),
                case("unknown-cmd", "cmd 1 is not BALLOON_GET_UNUSED_PAGES", "UnknownValue",
                     [H(cmd=1, flag=1, bmap_len=wb), B([5], wb)], "invalid",
                     "v3.driver.bmap.unknown-cmd"),
                case("unknown-flag", "flag 2 is neither CONT nor DONE", "UnknownValue",
                     [H(flag=2, req_id=3, bmap_len=wb), B([5], wb)], "invalid",
                     "v3.driver.bmap.unknown-flag"),
            ]
        else:
            cs.append(case("fields-set", "cmd 0, flag DONE, req_id 7 left in an inflate header "
                           "by a previous misc answer", "InflateFieldsSet SeedBug3",
                           [H(flag=1, req_id=7, bmap_len=wb), B([0], wb)], "acceptable",
                           "v3.driver.bmap.inflate-fields-zero"))  # a SHOULD since 5286aea
        for k in range(2):
            nw = 1 + rng.below(8)
            pos = rng.sample(nw * ws, 1 + rng.below(nw * ws // 2))
            start = ws * rng.below(1 << 20)
            cs.append(case(f"random-{k}", f"{len(pos)} seeded random bits in {nw} words",
                           "Random", [H(start_pfn=start, bmap_len=nw * wb), B(pos, nw * wb)],
                           "valid"))
        if (endian, ws, wo) == ("le", 64, "le") and not misc:
            cs += [
                case("full-bmap-buffer", "one full 8*PAGE_SIZE bitmap buffer, every bit set "
                     "(262144 pages)", "FullBuffer",
                     [H(bmap_len=BMAP_SIZE_4K), b"\xff" * BMAP_SIZE_4K], "valid"),
                case("buffer-too-long", "one bitmap buffer of 8*PAGE_SIZE + 8 bytes (seed bug 1 "
                     "stretches the last buffer like this)", "TooMany SeedBug1",
                     [H(bmap_len=BMAP_SIZE_4K + 8), b"\x00" * BMAP_SIZE_4K + b"\x01" + bytes(7)],
                     "invalid", "v3.driver.bmap.buffer-at-most-8-pages"),
            ]
    else:  # 64 KiB guest
        fpp = page_size // 4096
        if misc:
            cs += [
                case("real-pfns", "misc answer: bits are real 64 KiB PFNs", "LargePage "
                     "MiscAnswer", [H(bmap_len=wb), B([0, 1, 2], wb)], "valid"),
                case("page-shift-12", "page_shift 12 on a 64 KiB guest", "LargePage "
                     "PageShiftMismatch", [H(page_shift=12, bmap_len=wb), B([0], wb)], "invalid",
                     "v3.driver.bmap.page-shift-matches"),
            ]
        else:
            cs += [
                case("balloon-pfns", "inflate on a 64 KiB guest: page_shift 16, bits are 4 KiB "
                     "balloon PFNs, one per page (the seed's ambiguity)", "LargePage",
                     [H(bmap_len=wb), B([0, fpp, 2 * fpp], wb)], "acceptable",
                     "v3.driver.bmap.page-shift-ambiguous"),
                case("overlapping-bits", "adjacent bits on a 64 KiB guest name overlapping pages",
                     "LargePage Duplicate", [H(bmap_len=wb), B([0, 1], wb)], "acceptable",
                     "v3.driver.pages.no-duplicate"),
                case("page-shift-12", "page_shift 12 on a 64 KiB guest", "LargePage "
                     "PageShiftMismatch", [H(page_shift=12, bmap_len=wb), B([0], wb)], "invalid",
                     "v3.driver.bmap.page-shift-matches"),
            ]
    flags: tuple[str, ...] = _endian_flags(endian) + (("WordOrder",) if wo != endian else ())
    return Group(_bmap_tag(role, endian, ws, wo, page_size),
                 _params("bmap", "v3", endian, role=role, word_size=ws, word_order=wo,
                         page_size=page_size), cs, flags)


# --- v3 req ------------------------------------------------------------------------------------
def req_groups() -> list[Group]:
    groups = []
    for endian in ("le", "be"):
        e = _e(endian)

        def R(cmd: int = 0, r: tuple[int, int, int] = (0, 0, 0), param: int = 0,
              e: str = e) -> bytes:
            return struct.pack(f"{e}HHHHQ", cmd, *r, param)

        cs = [
            case("zero", "GET_UNUSED_PAGES with param 0", "ZeroValue", R(), "valid"),
            case("param", "param 0x0123456789abcdef", "Normal", R(param=0x0123456789ABCDEF),
                 "valid"),
            case("param-max", "param 2^64-1", "MaxValue", R(param=M64), "valid"),
            case("unknown-cmd", "cmd 1", "UnknownValue", R(cmd=1), "invalid",
                 "v3.device.req.unknown-cmd"),
            case("cmd-max", "cmd 0xffff", "UnknownValue MaxValue", R(cmd=0xFFFF), "invalid",
                 "v3.device.req.unknown-cmd"),
            *(case(f"reserved-{k}", f"reserved[{k}] = 1", "ReservedNonZero",
                   R(r=tuple(1 if j == k else 0 for j in range(3))),  # type: ignore[arg-type]
                   "invalid", "v3.device.req.reserved-zero") for k in range(3)),
            case("truncated-0", "no byte", "Truncated", b"", "invalid", error="cmd"),
            case("truncated-4", "4 bytes: cmd and part of reserved", "Truncated", R()[:4],
                 "invalid", error="reserved"),
            case("truncated-15", "15 of 16 bytes", "Truncated", R()[:15], "invalid",
                 error="param"),
            case("trailing-1", "16 bytes and one more", "TrailingBytes", R() + b"\x00",
                 "invalid", "v3.device.req.len-16"),
            case("double", "two requests in one buffer", "TrailingBytes", R(param=1) + R(param=2),
                 "invalid", "v3.device.req.len-16"),
        ]
        groups.append(Group(endian, _params("req", "v3", endian, role="misc"), cs,
                            _endian_flags(endian)))
    return groups


# --- hybrid -------------------------------------------------------------------------------------
def hybrid_head(start_pfn: int, page_shift: int, bmap_len: int, endian: str) -> int:
    """The record word (PROTOCOL.md 3: LSB-first bitfields in an le64; a BE guest that forgot
    cpu_to_le64 lays them out MSB-first in a be64)."""
    if endian == "le":
        return start_pfn | page_shift << 52 | bmap_len << 58
    return start_pfn << 12 | page_shift << 6 | bmap_len


def hybrid_groups() -> list[Group]:
    from ..codecs.hybrid import encode_words
    from ..pageset import PageSet
    from ..wire import WireLayout

    groups = []
    for endian in ("le", "be"):
        e = _e(endian)

        def M(words: list[int], *, cmd: int = 0, flag: int = 0, ident: int = 0,
              data_len: int | None = None, tail: bytes = b"", e: str = e) -> bytes:
            payload = struct.pack(f"{e}{len(words)}Q", *words) + tail
            dl = len(payload) if data_len is None else data_len
            return struct.pack(f"{e}BBHI", cmd, flag, ident, dl) + payload

        def r(s: int, ps: int, bl: int = 0, endian: str = endian) -> int:
            return hybrid_head(s, ps, bl, endian)

        DL = "hybrid.driver.resp.data-len-matches"
        rng = SplitMix64(f"hybrid/{endian}")
        cs = [
            case("empty", "a header and no record", "Empty", M([]), "valid"),
            case("order0-pfn0", "one 4 KiB frame at PFN 0", "ZeroValue", M([r(0, 12)]), "valid"),
            case("order0-max", "one frame at PFN 2^52-1, the largest start_pfn", "MaxValue",
                 M([r((1 << 52) - 1, 12)]), "valid"),
            case("order9", "a 2 MiB block (order 9) at PFN 512", "Normal", M([r(512, 21)]),
                 "valid"),
            case("order51", "page_shift 63: the largest block (2^51 frames) at 0", "MaxValue",
                 M([r(0, 63)]), "valid"),
            case("order51-top", "the order-51 block ending at frame 2^52", "MaxValue",
                 M([r(1 << 51, 63)]), "valid"),
            case("bitmap-1", "a bitmap record: one word, frames 64, 65, 67", "Normal",
                 M([r(64, 12, 8), 0b1011]), "valid"),
            case("bitmap-7", "7 bitmap words (bmap_len 56, the most whole words), all set",
                 "FullBuffer", M([r(0, 12, 56), *([M64] * 7)]), "valid"),
            case("bitmap-order1", "bitmap of order-1 blocks: bits 0 and 2 = frames 128-129, "
                 "132-133", "Normal", M([r(128, 13, 8), 0b101]), "valid"),
            case("mixed", "plain, bitmap, plain records", "Normal",
                 M([r(0, 12), r(64, 12, 8), 0xF0, r(1024, 22)]), "valid"),
            case("answer-ids", "cmd 0, flag DONE, id 0xffff", "MiscAnswer MaxValue",
                 M([r(8, 12)], flag=1, ident=0xFFFF), "valid"),
            case("page-shift-11", "page_shift 11: a block below 4 KiB", "PageShiftRange",
                 M([r(0, 11)]), "invalid", error="records[0].page_shift"),
            case("page-shift-0", "page_shift 0", "PageShiftRange ZeroValue", M([r(4, 12), r(0, 0)]),
                 "invalid", error="records[1].page_shift"),
            case("misaligned", "an order-1 block at odd PFN 1 (frames 1-2)", "Misaligned",
                 M([r(1, 13)]), "acceptable", "hybrid.driver.record.aligned"),
            case("bmap-len-4", "bmap_len 4: half a word; bit 40 (past bmap_len) set",
                 "BitsBeyondLength LengthMismatch", M([r(0, 12, 4), 1 << 40 | 1]), "invalid",
                 "hybrid.driver.record.bmap-len-multiple-of-8"),
            case("bmap-short", "bmap_len 16 but one word follows", "LengthMismatch Truncated",
                 M([r(0, 12, 16), 1]), "invalid", error="records[0].bmap_len"),
            case("data-len-above", "data_len 16, 8 bytes follow", "LengthMismatch",
                 M([r(0, 12)], data_len=16), "invalid", DL),
            case("data-len-below", "data_len 0, 8 bytes follow", "LengthMismatch",
                 M([r(0, 12)], data_len=0), "invalid", DL),
            case("data-len-huge", "data_len 2^32-1", "HugeLength LengthMismatch",
                 M([r(0, 12)], data_len=0xFFFFFFFF), "invalid", DL),
            case("trailing-4", "a record and 4 bytes", "TrailingBytes",
                 M([r(0, 12)], tail=b"\x00" * 4), "invalid", DL),
            case("unknown-cmd", "cmd 1", "UnknownValue", M([r(0, 12)], cmd=1), "invalid",
                 "hybrid.driver.resp.unknown-cmd"),
            case("overlap", "an order-1 block at 0 and frame 1 again", "Duplicate",
                 M([r(0, 13), r(1, 12)]), "acceptable", "hybrid.driver.pages.no-duplicate"),
            case("duplicate", "the same record twice", "Duplicate", M([r(5, 12), r(5, 12)]),
                 "acceptable", "hybrid.driver.pages.no-duplicate"),
            case("truncated-0", "no byte", "Truncated", b"", "invalid", error="cmd"),
            case("truncated-7", "7 of the 8 header bytes", "Truncated", M([])[:7], "invalid",
                 error="data_len"),
        ]
        lay = WireLayout(endian)
        for k in range(3):
            n = 1 + rng.below(300)
            frames = rng.sample(1 << 20, n)
            words, _ = encode_words(PageSet.from_frames(frames), lay)
            cs.append(case(f"random-{k}", f"the reference encoder's records for {n} seeded "
                           "random frames", "Random", M([int(w) for w in words]), "valid"))
        # appended last: earlier tcIds stay put
        cs.append(case("v5-greedy-blocks", "the v5-era driver's do_set_resp_bitmap() for a run "
                       "of 192 frames at bit 64: order 7 at PFN 64, order 6 at PFN 192 (greedy "
                       "from a 64-frame boundary, not naturally aligned)", "Misaligned",
                       M([r(64, 19), r(192, 18)]), "acceptable", "hybrid.driver.record.aligned"))
        groups.append(Group(endian, _params("hybrid", "hybrid", endian), cs,
                            _endian_flags(endian)))
    return groups


# --- stats ---------------------------------------------------------------------------------------
def stats_groups() -> list[Group]:
    groups = []
    UNK = "note.stats.unknown-tag"  # a note: the device must ignore them (5.5.6.3.2)
    for endian in ("le", "be"):
        e = _e(endian)

        def S(*entries: tuple[int, int], tail: bytes = b"", e: str = e) -> bytes:
            return b"".join(struct.pack(f"{e}HQ", t, v) for t, v in entries) + tail

        cs = [
            case("empty", "no entry", "Empty", S(), "valid"),
            case("spec-tags", "tags 0-9, one entry each", "Normal",
                 S(*((t, 1000 * t + 1) for t in range(10))), "valid"),
            case("val-max", "MEMFREE = 2^64-1", "MaxValue", S((4, M64)), "valid"),
            case("val-zero", "SWAP_IN = 0", "ZeroValue", S((0, 0)), "valid"),
            case("linux-6.12-tags", "tags 10-15 (Linux >= 6.12): a device ignores them",
                 "UnknownValue", S(*((t, t) for t in range(10, 16))), "acceptable", UNK),
            case("crosvm-tags", "tags 65534/65535 (crosvm)", "UnknownValue",
                 S((65534, 1), (65535, 2)), "acceptable", UNK),
            case("duplicate-tag", "MEMFREE twice", "Duplicate", S((4, 1), (4, 2)), "acceptable",
                 "spec.driver.stats.duplicate-tag"),
            case("trailing-6", "one entry and 6 bytes (the 'multiple of 6' erratum)",
                 "TrailingBytes", S((4, 1), tail=bytes(6)), "invalid",
                 "spec.driver.stats.len-multiple-of-10"),
            case("trailing-1", "one entry and 1 byte", "TrailingBytes", S((4, 1), tail=b"\x01"),
                 "invalid", "spec.driver.stats.len-multiple-of-10"),
            case("short-9", "9 bytes: not one entry", "TrailingBytes Truncated", bytes(9),
                 "invalid", "spec.driver.stats.len-multiple-of-10"),
        ]
        groups.append(Group(endian, {**_params("stats", "spec", endian), "role": "stats"}, cs,
                            _endian_flags(endian)))
    return groups


# --- config --------------------------------------------------------------------------------------
def config_groups() -> list[Group]:
    groups = []
    for endian in ("le", "be"):
        def C(*vals: int, tail: bytes = b"") -> bytes:
            return struct.pack(f"<{len(vals)}I", *vals) + tail  # always LE (5.5.4)

        cs = [
            case("size-8", "num_pages 0x100, actual 0x80", "Normal", C(0x100, 0x80), "valid"),
            case("size-12", "with free_page_hint_cmd_id 0x80000000", "Normal",
                 C(0x100, 0x80, 0x80000000), "valid"),
            case("size-16", "with poison_val 0xaa55aa55", "Normal",
                 C(1, 2, 3, 0xAA55AA55), "valid"),
            case("zeros", "every field 0", "ZeroValue", C(0, 0, 0, 0), "valid"),
            case("max", "every field 2^32-1", "MaxValue", C(*([0xFFFFFFFF] * 4)), "valid"),
            case("truncated-7", "7 bytes", "Truncated", C(1, 2)[:7], "invalid", error="actual"),
            case("truncated-0", "no byte", "Truncated", b"", "invalid", error="num_pages"),
            # any size from 8 up is allowed (5.5.4: a field exists when its feature is
            # negotiated; larger is allowed -- crosvm's config is 20 bytes)
            case("size-10", "10 bytes", "TrailingBytes", C(1, 2, tail=b"\x00\x00"), "valid"),
            case("size-20", "20 bytes (crosvm)", "TrailingBytes", C(1, 2, 3, 4, 5), "valid"),
        ]
        groups.append(Group(endian, {**_params("config", "spec", endian), "role": "config"}, cs,
                            ("ConfigAlwaysLE",)))
    return groups


# --- hint-cmd ---------------------------------------------------------------------------------
def hint_groups() -> list[Group]:
    groups = []
    for endian in ("le", "be"):
        e = _e(endian)

        def I(v: int, e: str = e) -> bytes:  # noqa: E743
            return struct.pack(f"{e}I", v)

        cs = [
            case("device-id", "command id 0x80000000 (QEMU's first)", "Normal", I(0x80000000),
                 "valid"),
            case("stop", "VIRTIO_BALLOON_CMD_ID_STOP (0)", "ZeroValue", I(0), "valid"),
            case("done", "VIRTIO_BALLOON_CMD_ID_DONE (1)", "Normal", I(1), "valid"),
            case("max", "2^32-1", "MaxValue", I(0xFFFFFFFF), "valid"),
            case("truncated-3", "3 bytes", "Truncated", I(5)[:3], "invalid", error="cmd_id"),
            case("truncated-0", "no byte", "Truncated", b"", "invalid", error="cmd_id"),
            case("len-8", "8 bytes", "TrailingBytes", I(0x80000001) + I(0), "invalid",
                 "spec.driver.hint.len-4"),
        ]
        groups.append(Group(endian, {**_params("hint-cmd", "spec", endian), "role": "free_page"},
                            cs, _endian_flags(endian)))
    return groups


#: file name -> (profile, group builder)
MESSAGE_FILES = {
    "pfns": ("spec", pfns_groups),
    "v3-bmap": ("v3", bmap_groups),
    "v3-req": ("v3", req_groups),
    "hybrid": ("hybrid", hybrid_groups),
    "stats": ("spec", stats_groups),
    "config": ("spec", config_groups),
    "hint-cmd": ("spec", hint_groups),
}
