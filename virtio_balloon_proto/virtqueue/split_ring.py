"""Where a split virtqueue lives (VIRTIO 1.2 section 2.7): structs, sizes, layouts.

The construct definitions mirror the C structs of the spec (``struct virtq_desc`` etc.), one
factory per byte order in the pyelftools ``ELFStructs`` style: modern (VERSION_1) rings are
little-endian, legacy rings use the guest's native order (section 2.7 note "legacy interface").

* :class:`SplitRingStructs` -- the structs for one byte order;
* ring sizes, :func:`check_queue_size`, :class:`SplitLayout` (legacy and compact layouts);
* ``_SplitRing`` (what both ends of one ring share) and :func:`read_used_entries` (2.7.8),
  which the driver-side builder and the device-side walker both read the used ring with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from construct import Struct

from ..errors import RingError, UsageError
from .chains import UsedElem
from .memory import GuestMemory, read_at

# struct virtq_avail flags (2.7.6) / struct virtq_used flags (2.7.8)
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

MAX_QUEUE_SIZE = 32768
DESC_SIZE = 16
USED_ELEM_SIZE = 8
#: legacy PCI transport: the used ring starts on the next 4096-byte boundary (2.7.2 legacy note,
#: VIRTIO_PCI_VRING_ALIGN)
LEGACY_VRING_ALIGN = 4096


class SplitRingStructs:
    """The split-ring structs of VIRTIO 1.2 section 2.7 for one byte order.

    ``little_endian=True`` for VERSION_1 rings; legacy rings take the guest's order.
    """

    def __init__(self, little_endian: bool = True) -> None:
        # imported when a ring is first parsed (the walker itself uses struct): reading a
        # trace never needs construct (issue 13: start-up of every trace command)
        from construct import Int16ub, Int16ul, Int32ub, Int32ul, Int64ub, Int64ul, Struct

        self.little_endian = little_endian
        if little_endian:
            u16, u32, u64 = Int16ul, Int32ul, Int64ul
        else:
            u16, u32, u64 = Int16ub, Int32ub, Int64ub
        self.le16 = u16  # "__virtio16" in the spec's legacy wording
        self.le32 = u32
        self.le64 = u64
        # struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; };
        self.virtq_desc = Struct(
            "addr" / u64,
            "len" / u32,
            "flags" / u16,
            "next" / u16,
        )
        # struct virtq_used_elem { le32 id; le32 len; };
        self.virtq_used_elem = Struct(
            "id" / u32,
            "len" / u32,
        )
        # the fixed heads of struct virtq_avail / struct virtq_used: { le16 flags; le16 idx; }
        self.virtq_avail_hdr = Struct("flags" / u16, "idx" / u16)
        self.virtq_used_hdr = Struct("flags" / u16, "idx" / u16)

    def virtq_avail(self, size: int) -> Struct:
        # struct virtq_avail { le16 flags; le16 idx; le16 ring[size];
        #                      le16 used_event; /* Only if VIRTIO_F_EVENT_IDX */ };
        from construct import Array, Struct

        return Struct(
            "flags" / self.le16,
            "idx" / self.le16,
            "ring" / Array(size, self.le16),
            "used_event" / self.le16,
        )

    def virtq_used(self, size: int) -> Struct:
        # struct virtq_used { le16 flags; le16 idx; struct virtq_used_elem ring[size];
        #                     le16 avail_event; /* Only if VIRTIO_F_EVENT_IDX */ };
        from construct import Array, Struct

        return Struct(
            "flags" / self.le16,
            "idx" / self.le16,
            "ring" / Array(size, self.virtq_used_elem),
            "avail_event" / self.le16,
        )


@cache
def split_structs(little_endian: bool = True) -> SplitRingStructs:
    """The (cached) struct set for one byte order."""
    return SplitRingStructs(little_endian)


# --- layout ----------------------------------------------------------------------------------


def desc_table_size(size: int) -> int:
    return DESC_SIZE * size


def avail_ring_size(size: int) -> int:
    return 6 + 2 * size  # flags, idx, ring[size], used_event


def used_ring_size(size: int) -> int:
    return 6 + USED_ELEM_SIZE * size  # flags, idx, ring[size], avail_event


def check_queue_size(size: int, *, packed: bool = False) -> None:
    """Queue Size: 1..32768, and a power of 2 for split rings (2.6, 2.7)."""
    if not 1 <= size <= MAX_QUEUE_SIZE or (not packed and size & (size - 1)):
        kind = "at most 32768" if packed else "a power of 2, at most 32768"
        raise UsageError(
            f"queue size {size} is not valid: must be {kind}",
            field="size",
            clause="spec.ring.queue-size",
        )


@dataclass(frozen=True, slots=True)
class SplitLayout:
    desc: int
    avail: int
    used: int
    size: int

    @property
    def end(self) -> int:
        return self.used + used_ring_size(self.size)


def _align_up(x: int, align: int) -> int:
    return (x + align - 1) // align * align


def legacy_layout(base: int, size: int, align: int = LEGACY_VRING_ALIGN) -> SplitLayout:
    """Ring addresses of a legacy queue at ``base`` (``queue_pfn << 12``): descriptor table,
    avail ring right after it, used ring on the next ``align`` boundary (2.7.2 legacy note,
    Linux ``vring_init``)."""
    check_queue_size(size)
    desc = base
    avail = desc + desc_table_size(size)
    used = _align_up(avail + avail_ring_size(size), align)
    return SplitLayout(desc, avail, used, size)


def compact_layout(base: int, size: int) -> SplitLayout:
    """Modern rings packed tightly from ``base`` honouring the 2.7 alignments (16/2/4)."""
    check_queue_size(size)
    desc = _align_up(base, 16)
    avail = desc + desc_table_size(size)
    used = _align_up(avail + avail_ring_size(size), 4)
    return SplitLayout(desc, avail, used, size)


class _SplitRing:
    """Where one split ring lives (both sides of it share this)."""

    def __init__(self, memory: GuestMemory, size: int, desc_addr: int, avail_addr: int,
                 used_addr: int, little_endian: bool) -> None:
        check_queue_size(size)
        self.memory = memory
        self.size = size
        self.desc_addr = desc_addr
        self.avail_addr = avail_addr
        self.used_addr = used_addr
        self.little_endian = little_endian
        self.s = split_structs(little_endian)


def read_used_entries(
    memory: GuestMemory,
    used_addr: int,
    size: int,
    last: int,
    little_endian: bool = True,
    *,
    upto: int | None = None,
) -> Iterator[UsedElem]:
    """Yield used elements from free-running index ``last`` up to used.idx (or ``upto``)."""
    s = split_structs(little_endian)
    hdr = s.virtq_used_hdr.parse(read_at(memory, used_addr, 4, "used ring header", None))
    end = hdr.idx if upto is None else upto & 0xFFFF
    n = (end - last) & 0xFFFF
    if n > size:
        raise RingError(
            f"used.idx {end} is {n} entries past {last & 0xFFFF}, more than the queue size {size}",
            where="used ring",
            field="idx",
            clause="spec.device.ring.used-idx-advance",
        )
    for k in range(n):
        i = (last + k) & 0xFFFF
        addr = used_addr + 4 + USED_ELEM_SIZE * (i % size)
        raw = read_at(memory, addr, USED_ELEM_SIZE, f"used[{i % size}]", None)
        e = s.virtq_used_elem.parse(raw)
        yield UsedElem(i, int(e.id), int(e.len))
