"""Layout parameters of a message on the wire (PROTOCOL.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

ENDIANS = ("le", "be")
WORD_SIZES = (32, 64)
PAGE_SIZES = (4096, 16384, 65536)


@dataclass(frozen=True, slots=True)
class WireLayout:
    """Everything a decoder must be told, because the bytes do not say it.

    * ``endian``: byte order of ``__virtio16/32/64`` fields -- little-endian with VERSION_1,
      else the guest's native order (s390x and ppc64 BE guests are big-endian).
    * ``word_size`` / ``word_order``: the v3 bitmap is a raw ``unsigned long`` array that the
      seed's driver never byte-swaps (4/7 ``set_page_bitmap``), so its layout is the guest's
      ``BITS_PER_LONG`` and native order, independent of ``endian``.
    * ``page_size``: the guest's ``PAGE_SIZE``; PFNs on the wire are always 4 KiB frames
      (``VIRTIO_BALLOON_PFN_SHIFT 12``) but a 64 KiB guest sends 16 per page.
    """

    endian: str = "le"
    word_size: int = 64
    word_order: str = "le"
    page_size: int = 4096

    def __post_init__(self) -> None:
        if self.endian not in ENDIANS:
            raise UsageError(f"endian must be 'le' or 'be', not {self.endian!r}", field="endian")
        if self.word_order not in ENDIANS:
            raise UsageError(
                f"word order must be 'le' or 'be', not {self.word_order!r}", field="word_order"
            )
        if self.word_size not in WORD_SIZES:
            raise UsageError(f"word size must be 32 or 64, not {self.word_size}", field="word_size")
        if self.page_size not in PAGE_SIZES:
            raise UsageError(
                f"page size must be one of {', '.join(map(str, PAGE_SIZES))}, not {self.page_size}",
                field="page_size",
            )

    @property
    def little_endian(self) -> bool:
        return self.endian == "le"

    @property
    def page_shift(self) -> int:
        return self.page_size.bit_length() - 1

    @property
    def frames_per_page(self) -> int:
        """4 KiB balloon PFNs per guest page (Linux ``VIRTIO_BALLOON_PAGES_PER_PAGE``)."""
        return self.page_size >> 12

    def to_json(self) -> dict[str, object]:
        return {
            "endian": self.endian,
            "word_size": self.word_size,
            "word_order": self.word_order,
            "page_size": self.page_size,
        }
