"""construct definitions of every balloon message, mirroring the C headers.

One factory per byte order, as pyelftools' ``ELFStructs``: ``BalloonStructs(little_endian)``
builds the ``__virtio`` structures for that order.  Structures the C headers declare with a
fixed order (config space: ``__le32``; hybrid: ``__le64`` bitfields) are built from the same
factory so that a big-endian *guest that forgot cpu_to_le64* (see below) is expressible too.

These definitions are the reference: :mod:`.bulk` holds the numpy paths used on large arrays,
and ``tests/test_wire_bulk.py`` proves the two agree.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from construct import Construct

#: ``sizeof`` of the fixed headers
BMAP_HDR_SIZE = 32  # struct balloon_bmap_hdr (seed 2/7)
REQ_HDR_SIZE = 16  # struct balloon_req_hdr (seed 6/7)
RESP_HDR_SIZE = 8  # struct virtio_balloon_resp_hdr (v4 2/7, v5 2/5)
STAT_SIZE = 10  # struct virtio_balloon_stat, __attribute__((packed))
CONFIG_SIZES = (8, 12, 16)


class BalloonStructs:
    """The balloon's structures for one byte order of the ``__virtio`` types."""

    def __init__(self, little_endian: bool) -> None:
        # imported here, when a message first needs construct: a PFN array, the bulk of every
        # trace, decodes through numpy (.bulk), and importing construct was ~5% of a
        # `vbproto decode --summary` of a 7 GiB inflate (issue 13)
        from construct import (
            Array,
            BitsInteger,
            BitStruct,
            ByteSwapped,
            GreedyBytes,
            GreedyRange,
            Int8ul,
            Int16ub,
            Int16ul,
            Int32ub,
            Int32ul,
            Int64ub,
            Int64ul,
            Struct,
            this,
        )

        self.little_endian = little_endian
        u16: Any = Int16ul if little_endian else Int16ub
        u32: Any = Int32ul if little_endian else Int32ub
        u64: Any = Int64ul if little_endian else Int64ub
        self.u16, self.u32, self.u64 = u16, u32, u64

        # include/uapi/linux/virtio_balloon.h: inflate/deflate buffers are __virtio32[] of
        # "guest address >> VIRTIO_BALLOON_PFN_SHIFT" (12), whatever the guest page size.
        # GreedyRange stops before a partial element; the tail is kept, never dropped.
        self.pfn_array = Struct(
            "pfns" / GreedyRange(u32),
            "trailing" / GreedyBytes,
        )

        # seed 2/7 "virtio-balloon: define new feature bit and page bitmap head"
        self.balloon_bmap_hdr = Struct(
            "cmd" / u16,  # BALLOON_GET_UNUSED_PAGES on the misc queue, else 0
            "page_shift" / u16,  # PAGE_SHIFT of the guest
            "flag" / u16,  # BALLOON_FLAG_CONT 0 / BALLOON_FLAG_DONE 1
            "reserved" / u16,
            "req_id" / u64,  # echoes balloon_req_hdr.param
            "start_pfn" / u64,  # the pfn of bit 0
            "bmap_len" / u64,  # bitmap length in bytes
        )
        # the bitmap that follows the header in the same chain: raw unsigned long words
        self.bmap_message = Struct(
            "hdr" / self.balloon_bmap_hdr,
            "bitmap" / GreedyBytes,
        )

        # seed 6/7 "define feature bit and head for misc virt queue"
        self.balloon_req_hdr = Struct(
            "cmd" / u16,  # enum balloon_req_id: BALLOON_GET_UNUSED_PAGES = 0
            "reserved" / Array(3, u16),
            "param" / u64,
        )

        # struct virtio_balloon_stat { __virtio16 tag; __virtio64 val; } __attribute__((packed))
        self.virtio_balloon_stat = Struct("tag" / u16, "val" / u64)
        self.stats_buffer = Struct(
            "entries" / GreedyRange(self.virtio_balloon_stat),
            "trailing" / GreedyBytes,
        )

        # free page hint: an out buffer holding one __virtio32 command id (VIRTIO 1.4 5.5.6.5)
        self.hint_cmd = Struct("cmd_id" / u32, "trailing" / GreedyBytes)

        # Hybrid (v4 2/7 == v5 2/5): __le64 bitfields.  GCC allocates bitfields from the LSB on
        # a little-endian host, so in the le64 word start_pfn is bits 0-51, page_shift 52-57,
        # bmap_len 58-63, and resp_hdr is cmd byte 0, flag byte 1, id bytes 2-3, data_len 4-7.
        # A big-endian guest running the v5 driver (which stored some words without
        # cpu_to_le64) lays the same C bitfields out from the MSB in a big-endian word: that is
        # the ``little_endian=False`` variant here.
        record_bits = BitStruct(
            "bmap_len" / BitsInteger(6),
            "page_shift" / BitsInteger(6),
            "start_pfn" / BitsInteger(52),
        )
        record_bits_be = BitStruct(
            "start_pfn" / BitsInteger(52),
            "page_shift" / BitsInteger(6),
            "bmap_len" / BitsInteger(6),
        )
        self.virtio_balloon_resp_hdr = Struct(
            "cmd" / Int8ul,
            "flag" / Int8ul,
            "id" / u16,
            "data_len" / u32,
        )
        self.hybrid_record_head: Construct = (
            ByteSwapped(record_bits) if little_endian else record_bits_be
        )
        # a record and the bitmap words that follow it: ceil(bmap_len / 8) u64 words
        self.hybrid_record = Struct(
            "head" / self.hybrid_record_head,
            "bmap" / Array((this.head.bmap_len + 7) // 8, u64),
        )
        self.hybrid_message = Struct(
            "hdr" / self.virtio_balloon_resp_hdr,
            "records" / GreedyRange(self.hybrid_record),
            "trailing" / GreedyBytes,
        )

        # struct virtio_balloon_config: __le32 in every mode ("balloon is special: LE even
        # when using the legacy interface", Linux commit "correct tags for config space
        # fields"); built here from the factory's order only for completeness of the
        # pattern -- callers use CONFIG, which is always little-endian.
        self.virtio_balloon_config = {
            8: Struct("num_pages" / u32, "actual" / u32),
            12: Struct("num_pages" / u32, "actual" / u32, "free_page_hint_cmd_id" / u32),
            16: Struct(
                "num_pages" / u32,
                "actual" / u32,
                "free_page_hint_cmd_id" / u32,  # union with free_page_report_cmd_id
                "poison_val" / u32,
            ),
        }

        #: a raw word of an unsigned-long bitmap, by BITS_PER_LONG
        self.bitmap_word = {32: u32, 64: u64}

    def bitmap_words(self, word_size: int, count: int) -> Construct:
        from construct import Array

        return Array(count, self.bitmap_word[word_size])

    @staticmethod
    def raw(count: int) -> Construct:
        from construct import Bytes

        return Bytes(count)


@cache
def structs(little_endian: bool) -> BalloonStructs:
    """The cached factory instance for one byte order."""
    return BalloonStructs(little_endian)


class _Config(Mapping[int, Any]):
    """``structs(True).virtio_balloon_config`` (size -> struct), built on first use."""

    def __getitem__(self, size: int) -> Any:
        return structs(True).virtio_balloon_config[size]

    def __iter__(self) -> Iterator[int]:
        return iter(structs(True).virtio_balloon_config)

    def __len__(self) -> int:
        return len(structs(True).virtio_balloon_config)


#: config space is little-endian even for legacy devices (VIRTIO 1.4 5.5.4 legacy note)
CONFIG: Mapping[int, Any] = _Config()
