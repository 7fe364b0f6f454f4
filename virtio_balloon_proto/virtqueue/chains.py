"""What a virtqueue walker yields, split or packed (VIRTIO 1.2 sections 2.7.5, 2.8.6).

* the descriptor flags both ring formats share (``struct virtq_desc`` flags, 2.7.5);
* :class:`ChainDescriptor`, :class:`Chain`, :class:`UsedElem` -- decoded records, lossless;
* ``Segment`` -- one buffer a driver-side builder lays into a chain;
* the walkers' implementation bounds (:data:`MAX_INDIRECT_ENTRIES`, ...) and :func:`chain_cap`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..findings import Finding
from ..limits import MAX_CHAIN_DESCRIPTORS, MAX_WALK_DESCRIPTORS

# struct virtq_desc flags (2.7.5)
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4

#: an implementation bound, not a spec rule: indirect tables larger than this are refused so a
#: hostile ``len`` cannot make the walker iterate for minutes (1 MiB of descriptors)
MAX_INDIRECT_ENTRIES = 65536
#: default bound on the driver-written bytes resolved for one chain (balloon buffers are at most
#: 32 bitmap buffers of 32 KiB plus a header; 64 MiB leaves ample room)
DEFAULT_MAX_CHAIN_BYTES = 64 << 20
#: indirect-table bytes one walker keeps, so that a table shared by many chains is read once
MAX_TABLE_CACHE = 16 << 20


# --- decoded records -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainDescriptor:
    """One descriptor met while walking a chain, exactly as it was in memory."""

    #: index in the table it was read from
    index: int
    addr: int
    len: int
    flags: int
    next: int
    #: guest address of the indirect table this came from; None for the ring's own table
    table: int | None = None
    #: driver-written bytes of a device-readable buffer; None for writable/indirect ones
    data: bytes | None = None
    #: packed rings only: the descriptor's buffer id field (2.8.x ``le16 id``)
    id: int | None = None

    @property
    def writable(self) -> bool:
        return bool(self.flags & VIRTQ_DESC_F_WRITE)

    @property
    def indirect(self) -> bool:
        return bool(self.flags & VIRTQ_DESC_F_INDIRECT)

    @property
    def has_next(self) -> bool:
        return bool(self.flags & VIRTQ_DESC_F_NEXT)


@dataclass(frozen=True, slots=True)
class Chain:
    """One available buffer: the head id and the descriptors in walk order.

    ``descriptors`` holds every descriptor met, including one that points at an indirect table
    (flag INDIRECT, followed by the table's entries with ``table`` set): lossless.
    """

    head: int
    #: free-running 16-bit avail index this chain was published under (ring slot = avail_idx %
    #: size); for packed rings the ring position of the first descriptor
    avail_idx: int
    descriptors: tuple[ChainDescriptor, ...]
    findings: tuple[Finding, ...] = ()
    #: packed rings only: the driver wrap counter the chain was made available under
    wrap_counter: int | None = None

    @property
    def buffers(self) -> tuple[ChainDescriptor, ...]:
        """Descriptors that describe buffers (those pointing at indirect tables left out)."""
        return tuple(d for d in self.descriptors if not d.indirect)

    @property
    def out_descriptors(self) -> tuple[ChainDescriptor, ...]:
        return tuple(d for d in self.buffers if not d.writable)

    @property
    def in_descriptors(self) -> tuple[ChainDescriptor, ...]:
        return tuple(d for d in self.buffers if d.writable)

    @property
    def out_bytes(self) -> bytes:
        """The driver-written bytes of the chain, readable buffers concatenated in order."""
        return b"".join(d.data or b"" for d in self.out_descriptors)

    @property
    def in_sizes(self) -> tuple[int, ...]:
        return tuple(d.len for d in self.in_descriptors)


@dataclass(frozen=True, slots=True)
class UsedElem:
    """One ``struct virtq_used_elem`` with the free-running used index it was written under."""

    used_idx: int
    id: int
    len: int


# --- driver side -----------------------------------------------------------------------------

Segment = tuple[int, int, bool]  # (guest address, length, device-writable)


def chain_cap(walk_left: int) -> tuple[int, str]:
    """How many descriptors the next chain may have (``MAX_CHAIN_DESCRIPTORS``, or fewer when
    the whole walk's ``MAX_WALK_DESCRIPTORS`` is nearly spent) and the limit's name for the
    ``spec.driver.ring.chain-len`` finding.  Shared by the split and packed walkers."""
    cap = min(MAX_CHAIN_DESCRIPTORS, walk_left)
    if cap == MAX_CHAIN_DESCRIPTORS:
        return cap, "MAX_CHAIN_DESCRIPTORS"
    return cap, f"MAX_WALK_DESCRIPTORS, {MAX_WALK_DESCRIPTORS} for the whole walk"
