"""Packed virtqueues (VIRTIO 1.2 section 2.8): structs, flags and wrap counters.

A packed ring is one array of ``struct pvirtq_desc`` plus two event-suppression areas.  A
descriptor is *available* when its AVAIL bit equals the driver's wrap counter and its USED bit
does not; *used* when both equal the device's wrap counter (2.8.1).  A chain is a run of
consecutive ring entries linked by NEXT (wrapping at the end of the ring, which flips the wrap
counter); the buffer id is the one in the chain's last descriptor (2.8.6).

* :class:`PackedRingStructs` -- the structs for one byte order;
* :class:`EventSuppress` (2.8.10), the AVAIL/USED flag helpers, :class:`PackedUsed`.

The device-side walker is in :mod:`.packed_device`, the driver-side builder in
:mod:`.packed_driver`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from construct import Int16ub, Int16ul, Int32ub, Int32ul, Int64ub, Int64ul, Struct

# 2.8.1: the two flags that carry the wrap counters
VIRTQ_DESC_F_AVAIL = 1 << 7
VIRTQ_DESC_F_USED = 1 << 15
# 2.8.10 struct pvirtq_event_suppress flags
RING_EVENT_FLAGS_ENABLE = 0x0
RING_EVENT_FLAGS_DISABLE = 0x1
RING_EVENT_FLAGS_DESC = 0x2
EVENT_SUPPRESS_SIZE = 4


class PackedRingStructs:
    """``struct pvirtq_desc`` and ``struct pvirtq_event_suppress`` for one byte order.

    Packed rings need VERSION_1 and so are always little-endian on the wire; the big-endian
    factory exists for symmetry with the split structs and for testing the walker's byte-order
    plumbing.
    """

    def __init__(self, little_endian: bool = True) -> None:
        self.little_endian = little_endian
        if little_endian:
            u16, u32, u64 = Int16ul, Int32ul, Int64ul
        else:
            u16, u32, u64 = Int16ub, Int32ub, Int64ub
        self.le16 = u16
        # struct pvirtq_desc { le64 addr; le32 len; le16 id; le16 flags; };
        self.pvirtq_desc = Struct(
            "addr" / u64,
            "len" / u32,
            "id" / u16,
            "flags" / u16,
        )
        # struct pvirtq_event_suppress {
        #     le16 { desc_event_off : 15; desc_event_wrap : 1; } desc;
        #         /* If desc_event_flags == RING_EVENT_FLAGS_DESC */
        #     le16 { desc_event_flags : 2, reserved : 14; } flags;
        # };
        self.pvirtq_event_suppress = Struct(
            "desc" / u16,
            "flags" / u16,
        )


@cache
def packed_structs(little_endian: bool = True) -> PackedRingStructs:
    return PackedRingStructs(little_endian)


@dataclass(frozen=True, slots=True)
class EventSuppress:
    """A decoded ``struct pvirtq_event_suppress``."""

    off: int
    wrap: int
    flags: int
    reserved: int

    @classmethod
    def parse(cls, raw: bytes, little_endian: bool = True) -> EventSuppress:
        s = packed_structs(little_endian).pvirtq_event_suppress.parse(raw)
        desc, flags = int(s.desc), int(s.flags)
        return cls(desc & 0x7FFF, desc >> 15, flags & 0x3, flags >> 2)

    def build(self, little_endian: bool = True) -> bytes:
        s = packed_structs(little_endian).pvirtq_event_suppress
        raw: bytes = s.build(
            {"desc": self.off | self.wrap << 15, "flags": self.flags | self.reserved << 2}
        )
        return raw


def is_available(flags: int, wrap_counter: int) -> bool:
    """2.8.1: AVAIL == driver wrap counter and USED != it."""
    avail = bool(flags & VIRTQ_DESC_F_AVAIL)
    used = bool(flags & VIRTQ_DESC_F_USED)
    return avail == bool(wrap_counter) and used != bool(wrap_counter)


def is_used(flags: int, wrap_counter: int) -> bool:
    """2.8.1: AVAIL == USED == device wrap counter."""
    avail = bool(flags & VIRTQ_DESC_F_AVAIL)
    used = bool(flags & VIRTQ_DESC_F_USED)
    return avail == used == bool(wrap_counter)


def avail_flags(wrap_counter: int) -> int:
    """The AVAIL/USED bits a driver writes to make a descriptor available."""
    return VIRTQ_DESC_F_AVAIL if wrap_counter else VIRTQ_DESC_F_USED


def used_flags(wrap_counter: int) -> int:
    return VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED if wrap_counter else 0


@dataclass(frozen=True, slots=True)
class PackedUsed:
    """One used descriptor: ring position, device wrap counter, id, len, flags."""

    position: int
    wrap_counter: int
    id: int
    len: int
    flags: int
