"""Split virtqueues (VIRTIO 1.2 section 2.7): layouts, a driver-side builder, a device-side walker.

The construct definitions mirror the C structs of the spec (``struct virtq_desc`` etc.), one
factory per byte order in the pyelftools ``ELFStructs`` style: modern (VERSION_1) rings are
little-endian, legacy rings use the guest's native order (section 2.7 note "legacy interface").

* :class:`SplitRingStructs` -- the structs for one byte order.
* :class:`SplitQueueDriver` -- lays chains into guest memory the way a driver does (free list,
  avail ring with 16-bit wrap, optional indirect tables), in the spirit of rust-vmm's
  ``MockSplitQueue``.  Used by tests and by the QEMU peer.
* :class:`SplitQueueDevice` -- walks what the driver made available, the way a device does,
  refusing everything a device must not follow (loops, out-of-range heads, nested indirect
  tables, addresses outside memory) with a :class:`RingError` that names the descriptor, the
  chain head and the clause.  Input that can be walked but breaks a rule is kept and reported as
  a :class:`Finding` on the chain.

Everything goes through :class:`~virtio_balloon_proto.virtqueue.memory.GuestMemory` (sans-IO).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from construct import Struct

from ..errors import RingError, UsageError
from ..findings import Finding
from ..limits import MAX_CHAIN_DESCRIPTORS, MAX_WALK_DESCRIPTORS
from .memory import GuestMemory

# struct virtq_desc flags (2.7.5)
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
# struct virtq_avail flags (2.7.6) / struct virtq_used flags (2.7.8)
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

MAX_QUEUE_SIZE = 32768
DESC_SIZE = 16
USED_ELEM_SIZE = 8
#: legacy PCI transport: the used ring starts on the next 4096-byte boundary (2.7.2 legacy note,
#: VIRTIO_PCI_VRING_ALIGN)
LEGACY_VRING_ALIGN = 4096
#: an implementation bound, not a spec rule: indirect tables larger than this are refused so a
#: hostile ``len`` cannot make the walker iterate for minutes (1 MiB of descriptors)
MAX_INDIRECT_ENTRIES = 65536
#: default bound on the driver-written bytes resolved for one chain (balloon buffers are at most
#: 32 bitmap buffers of 32 KiB plus a header; 64 MiB leaves ample room)
DEFAULT_MAX_CHAIN_BYTES = 64 << 20
#: indirect-table bytes one walker keeps, so that a table shared by many chains is read once
MAX_TABLE_CACHE = 16 << 20


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


class SplitQueueDriver(_SplitRing):
    """Driver-side split ring over guest memory (tests, the QEMU peer).

    Descriptors come from a free list (like Linux's ``free_head`` chain and rust-vmm's
    ``MockSplitQueue``); ``add_chain`` writes a chain and returns its head, ``publish`` puts a
    head on the avail ring and moves ``avail.idx`` (wrapping at 2^16), ``used_since`` reads the
    used ring, ``reclaim`` returns a used chain's descriptors to the free list.
    """

    def __init__(
        self,
        memory: GuestMemory,
        size: int,
        desc_addr: int,
        avail_addr: int,
        used_addr: int,
        little_endian: bool = True,
        *,
        start_idx: int = 0,
        initialize: bool = True,
    ) -> None:
        _SplitRing.__init__(self, memory, size, desc_addr, avail_addr, used_addr, little_endian)
        self._free: deque[int] = deque(range(size))
        #: head -> descriptor indices of the ring table that chain holds
        self._chains: dict[int, list[int]] = {}
        self.avail_idx = start_idx & 0xFFFF
        self.last_used = start_idx & 0xFFFF
        if initialize:
            self.memory.write(self.desc_addr, bytes(desc_table_size(size)))
            self.memory.write(self.avail_addr, bytes(avail_ring_size(size)))
            self.memory.write(self.used_addr, bytes(used_ring_size(size)))
            self._write_avail_idx(self.avail_idx)
            # the device's used.idx starts where the driver's avail.idx does
            self.memory.write(self.used_addr + 2, self.s.le16.build(self.avail_idx))

    @classmethod
    def legacy(
        cls,
        memory: GuestMemory,
        base: int,
        size: int,
        little_endian: bool = True,
        *,
        start_idx: int = 0,
        initialize: bool = True,
    ) -> SplitQueueDriver:
        """A queue laid out the legacy way at ``base`` (``queue_pfn << 12``)."""
        lay = legacy_layout(base, size)
        return cls(
            memory,
            size,
            lay.desc,
            lay.avail,
            lay.used,
            little_endian,
            start_idx=start_idx,
            initialize=initialize,
        )

    @property
    def num_free(self) -> int:
        return len(self._free)

    # raw writers: tests use them to lay broken rings (loops, bad heads)
    def write_desc(
        self,
        index: int,
        addr: int,
        length: int,
        flags: int,
        next_: int,
        *,
        table: int | None = None,
    ) -> None:
        base = self.desc_addr if table is None else table
        raw = self.s.virtq_desc.build({"addr": addr, "len": length, "flags": flags, "next": next_})
        self.memory.write(base + DESC_SIZE * index, raw)

    def write_avail_entry(self, slot: int, head: int) -> None:
        self.memory.write(self.avail_addr + 4 + 2 * (slot % self.size), self.s.le16.build(head))

    def _write_avail_idx(self, idx: int) -> None:
        self.memory.write(self.avail_addr + 2, self.s.le16.build(idx & 0xFFFF))

    def set_avail_idx(self, idx: int) -> None:
        self.avail_idx = idx & 0xFFFF
        self._write_avail_idx(self.avail_idx)

    def set_avail_flags(self, flags: int) -> None:
        self.memory.write(self.avail_addr, self.s.le16.build(flags))

    def _alloc(self, n: int) -> list[int]:
        if n > len(self._free):
            raise UsageError(
                f"chain needs {n} descriptors but only {len(self._free)} of {self.size} are free",
                where="split queue driver",
            )
        return [self._free.popleft() for _ in range(n)]

    def add_chain(self, segments: Sequence[Segment], *, indirect_addr: int | None = None) -> int:
        """Write a chain for ``segments`` and return its head (not yet published).

        With ``indirect_addr`` the segments go into an indirect table written at that guest
        address and the ring holds one INDIRECT descriptor (2.7.5.3).
        """
        if not segments:
            raise UsageError("a chain needs at least one segment", where="split queue driver")
        if indirect_addr is not None:
            table = self._table_bytes(segments)
            self.memory.write(indirect_addr, table)
            (head,) = self._alloc(1)
            self.write_desc(head, indirect_addr, len(table), VIRTQ_DESC_F_INDIRECT, 0)
            self._chains[head] = [head]
            return head
        idx = self._alloc(len(segments))
        for k, (addr, length, writable) in enumerate(segments):
            last = k == len(segments) - 1
            flags = (0 if last else VIRTQ_DESC_F_NEXT) | (VIRTQ_DESC_F_WRITE if writable else 0)
            self.write_desc(idx[k], addr, length, flags, 0 if last else idx[k + 1])
        self._chains[idx[0]] = idx
        return idx[0]

    def _table_bytes(self, segments: Sequence[Segment]) -> bytes:
        out = bytearray()
        for k, (addr, length, writable) in enumerate(segments):
            last = k == len(segments) - 1
            flags = (0 if last else VIRTQ_DESC_F_NEXT) | (VIRTQ_DESC_F_WRITE if writable else 0)
            out += self.s.virtq_desc.build(
                {"addr": addr, "len": length, "flags": flags, "next": 0 if last else k + 1}
            )
        return bytes(out)

    def publish(self, head: int) -> int:
        """Put ``head`` in the next avail slot and bump avail.idx; returns the new idx."""
        self.write_avail_entry(self.avail_idx, head)
        self.set_avail_idx(self.avail_idx + 1)
        return self.avail_idx

    def add_and_publish(
        self, segments: Sequence[Segment], *, indirect_addr: int | None = None
    ) -> int:
        head = self.add_chain(segments, indirect_addr=indirect_addr)
        self.publish(head)
        return head

    def used_idx(self) -> int:
        raw = self.memory.read(self.used_addr + 2, 2)
        return int(self.s.le16.parse(raw))

    def used_since(self, last: int) -> list[UsedElem]:
        """Used elements between ``last`` and the current used.idx (16-bit wrap)."""
        return list(
            read_used_entries(self.memory, self.used_addr, self.size, last, self.little_endian)
        )

    def reclaim(self, head: int) -> None:
        """Return the descriptors of a used chain to the free list."""
        try:
            idx = self._chains.pop(head)
        except KeyError:
            raise UsageError(f"head {head} is not an outstanding chain", field="id") from None
        self._free.extend(idx)

    def poll_used(self) -> list[UsedElem]:
        """Used elements since the last poll; their chains are reclaimed."""
        out = self.used_since(self.last_used)
        for e in out:
            self.reclaim(e.id)
        self.last_used = (self.last_used + len(out)) & 0xFFFF
        return out


# --- device side -----------------------------------------------------------------------------


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
    hdr = s.virtq_used_hdr.parse(_read(memory, used_addr, 4, "used ring header", None))
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
        e = s.virtq_used_elem.parse(_read(memory, addr, USED_ELEM_SIZE, f"used[{i % size}]", None))
        yield UsedElem(i, int(e.id), int(e.len))


def _read(memory: GuestMemory, gpa: int, size: int, what: str, clause: str | None) -> bytes:
    try:
        return memory.read(gpa, size)
    except RingError as exc:
        raise RingError(exc.message, where=what, clause=clause or exc.clause) from None


class SplitQueueDevice(_SplitRing):
    """Device-side view of a split ring: walks the chains the driver made available.

    ``resolve_data`` reads the bytes of device-readable buffers (bounded by ``max_chain_bytes``
    per chain); ``check_writable`` refuses device-writable buffers outside memory too, when the
    memory can answer ``contains`` without reading.
    """

    def __init__(
        self,
        memory: GuestMemory,
        size: int,
        desc_addr: int,
        avail_addr: int,
        used_addr: int,
        little_endian: bool = True,
        *,
        resolve_data: bool = True,
        check_writable: bool = True,
        max_chain_bytes: int = DEFAULT_MAX_CHAIN_BYTES,
        indirect_negotiated: bool | None = None,
    ) -> None:
        _SplitRing.__init__(self, memory, size, desc_addr, avail_addr, used_addr, little_endian)
        self.resolve_data = resolve_data
        self.check_writable = check_writable
        self.max_chain_bytes = max_chain_bytes
        #: None = unknown (no finding either way); False = report INDIRECT use as a finding
        self.indirect_negotiated = indirect_negotiated
        self._desc_fmt = struct.Struct("<QIHH" if little_endian else ">QIHH")
        self._tables: dict[int, bytes] = {}
        self._table_bytes = 0
        self._walk_left = MAX_WALK_DESCRIPTORS

    # --- ring indices -----------------------------------------------------------------------
    def avail_header(self) -> tuple[int, int]:
        """(flags, idx) of the avail ring."""
        h = self.s.virtq_avail_hdr.parse(_read(self.memory, self.avail_addr, 4, "avail ring", None))
        return int(h.flags), int(h.idx)

    def avail_idx(self) -> int:
        return self.avail_header()[1]

    def used_header(self) -> tuple[int, int]:
        h = self.s.virtq_used_hdr.parse(_read(self.memory, self.used_addr, 4, "used ring", None))
        return int(h.flags), int(h.idx)

    def used_idx(self) -> int:
        return self.used_header()[1]

    def avail_entry(self, i: int) -> int:
        slot = i % self.size
        raw = _read(self.memory, self.avail_addr + 4 + 2 * slot, 2, f"avail.ring[{slot}]", None)
        return int(self.s.le16.parse(raw))

    # --- walking ----------------------------------------------------------------------------
    def available(self, last_avail: int, *, upto: int | None = None) -> Iterator[Chain]:
        """Yield the chains published between free-running ``last_avail`` and avail.idx."""
        end = self.avail_idx() if upto is None else upto & 0xFFFF
        n = (end - last_avail) & 0xFFFF
        if n > self.size:
            raise RingError(
                f"avail.idx {end} is {n} entries past last_avail {last_avail & 0xFFFF}, "
                f"more than the queue size {self.size}",
                where="avail ring",
                field="idx",
                clause="spec.driver.ring.avail-idx-advance",
            )
        self._tables.clear()  # tables are cached for one walk: memory may change between walks
        self._table_bytes = 0
        self._walk_left = MAX_WALK_DESCRIPTORS
        for k in range(n):
            i = (last_avail + k) & 0xFFFF
            yield self.read_chain(self.avail_entry(i), avail_idx=i, keep_tables=True)

    def read_desc(self, index: int, table: int | None, head: int) -> ChainDescriptor:
        if table is not None and table in self._tables:
            raw = self._tables[table]
            if DESC_SIZE * (index + 1) <= len(raw):  # a table already read: no second read
                a, n, f, nx = self._desc_fmt.unpack_from(raw, DESC_SIZE * index)
                return ChainDescriptor(index, a, n, f, nx, table)
        base = self.desc_addr if table is None else table
        where = _where(index, table, head)
        raw = _read(self.memory, base + DESC_SIZE * index, DESC_SIZE, where, None)
        a, n, f, nx = self._desc_fmt.unpack(raw)
        return ChainDescriptor(index, a, n, f, nx, table)

    def _load_table(self, addr: int, length: int, where: str) -> None:
        """Read an indirect table once (tables shared by many chains are not read again);
        at most MAX_TABLE_CACHE bytes are kept."""
        old = self._tables.get(addr)
        if old is not None and len(old) >= length:
            return
        if self._table_bytes + length > MAX_TABLE_CACHE:
            self._tables.clear()
            self._table_bytes = 0
        self._tables[addr] = _read(self.memory, addr, length, where,
                                   "spec.driver.ring.addr-in-memory")
        self._table_bytes += length

    def read_chain(self, head: int, *, avail_idx: int = -1, keep_tables: bool = False) -> Chain:
        """Walk the chain starting at descriptor ``head`` (NEXT, then at most one INDIRECT).

        At most MAX_CHAIN_DESCRIPTORS descriptors are walked; a longer chain ends there with a
        ``spec.driver.ring.chain-len`` finding.  ``keep_tables``: indirect tables read by
        earlier chains of the same walk are still valid (``available`` sets it)."""
        if not keep_tables:
            self._tables.clear()
            self._table_bytes = 0
            self._walk_left = MAX_WALK_DESCRIPTORS
        cap, cap_name = chain_cap(self._walk_left)
        if head >= self.size:
            raise RingError(
                f"head {head} is not below the queue size {self.size}",
                where=f"avail.ring[{avail_idx % self.size}]" if avail_idx >= 0 else "chain",
                clause="spec.driver.ring.head-in-range",
            )
        out: list[ChainDescriptor] = []
        findings: list[Finding] = []
        nbytes = 0  # resolved bytes, bounded by max_chain_bytes
        total_len = 0
        seen_writable = False
        table: int | None = None
        entries = self.size  # entries of the table being walked
        visited: set[int] = set()
        index = head
        prev = -1  # the descriptor whose next led here, to name the culprit
        while True:
            where = _where(index, table, head)
            if len(out) >= cap:
                findings.append(Finding(
                    "spec.driver.ring.chain-len",
                    f"chain at head {head} has more than {cap} descriptors ({cap_name}): the "
                    "walk stops there, the rest of the chain is not decoded"))
                break
            if index >= entries:
                if prev >= 0:
                    where = _where(prev, table, head)
                raise RingError(
                    f"next index {index} is outside the {entries}-entry "
                    f"{'indirect table' if table is not None else 'descriptor table'}",
                    where=where,
                    field="next",
                    clause="spec.driver.ring.next-in-range",
                )
            if index in visited:
                raise RingError(
                    f"descriptor loop: next {index} leads back into the chain",
                    where=_where(prev, table, head),
                    field="next",
                    clause="spec.driver.ring.no-loop",
                )
            visited.add(index)
            d = self.read_desc(index, table, head)
            if d.indirect:
                if table is not None:
                    raise RingError(
                        "INDIRECT descriptor inside an indirect table",
                        where=where,
                        field="flags",
                        clause="spec.driver.ring.indirect-nested",
                    )
                if d.has_next:
                    raise RingError(
                        "descriptor has both INDIRECT and NEXT",
                        where=where,
                        field="flags",
                        clause="spec.driver.ring.indirect-with-next",
                    )
                if d.len == 0 or d.len % DESC_SIZE:
                    raise RingError(
                        f"indirect table length {d.len} is not a non-zero multiple of 16",
                        where=where,
                        field="len",
                        clause="spec.driver.ring.indirect-len",
                    )
                if d.len // DESC_SIZE > MAX_INDIRECT_ENTRIES:
                    raise RingError(
                        f"indirect table of {d.len // DESC_SIZE} entries is larger than this "
                        f"walker accepts ({MAX_INDIRECT_ENTRIES})",
                        where=where,
                        field="len",
                        clause="spec.driver.ring.chain-len",
                    )
                self._check_present(d.addr, d.len, where)
                self._load_table(d.addr, d.len, where)
                if self.indirect_negotiated is False:
                    findings.append(
                        Finding(
                            "spec.driver.ring.indirect-feature",
                            f"{where}: INDIRECT used without VIRTIO_F_INDIRECT_DESC",
                            field="flags",
                        )
                    )
                out.append(d)
                # 2.7.5.3.2: the device ignores WRITE on the descriptor naming the table
                table, entries, visited, index, prev = d.addr, d.len // DESC_SIZE, set(), 0, -1
                continue
            if d.writable:
                seen_writable = True
                if self.check_writable:
                    self._check_present(d.addr, d.len, where)
            else:
                if seen_writable:
                    findings.append(
                        Finding(
                            "spec.driver.ring.writable-after-readable",
                            f"{where}: device-readable buffer after a device-writable one",
                            field="flags",
                        )
                    )
                if self.resolve_data:
                    nbytes += d.len
                    if nbytes > self.max_chain_bytes:
                        raise RingError(
                            f"chain's readable buffers exceed {self.max_chain_bytes} bytes",
                            where=where,
                            field="len",
                        )
                    data = _read(
                        self.memory, d.addr, d.len, where, "spec.driver.ring.addr-in-memory"
                    )
                    d = ChainDescriptor(d.index, d.addr, d.len, d.flags, d.next, d.table, data)
                else:
                    self._check_present(d.addr, d.len, where)
            total_len += d.len
            out.append(d)
            if not d.has_next:
                break
            prev, index = index, d.next
        nbuf = sum(1 for d in out if not d.indirect)
        if nbuf > self.size:
            findings.append(
                Finding(
                    "spec.driver.ring.chain-len",
                    f"chain at head {head} has {nbuf} descriptors, more than the queue size "
                    f"{self.size}",
                )
            )
        if total_len >= 1 << 32:
            findings.append(
                Finding(
                    "spec.driver.ring.chain-bytes",
                    f"chain at head {head} describes {total_len} bytes (2^32 or more)",
                )
            )
        self._walk_left = max(0, self._walk_left - len(out))
        return Chain(head, avail_idx, tuple(out), tuple(findings))

    def _check_present(self, gpa: int, size: int, where: str) -> None:
        contains = getattr(self.memory, "contains", None)
        if contains is None:
            return
        if not contains(gpa, size):
            raise RingError(
                f"buffer {gpa:#x}+{size:#x} is outside guest memory",
                where=where,
                field="addr",
                clause="spec.driver.ring.addr-in-memory",
            )

    def used_entries(self, last: int, *, upto: int | None = None) -> Iterator[UsedElem]:
        return read_used_entries(
            self.memory, self.used_addr, self.size, last, self.little_endian, upto=upto
        )

    def push_used(self, used_idx: int, head: int, length: int) -> int:
        """Write a used element at free-running ``used_idx`` and publish it (device role)."""
        slot = used_idx % self.size
        raw = self.s.virtq_used_elem.build({"id": head, "len": length})
        self.memory.write(self.used_addr + 4 + USED_ELEM_SIZE * slot, raw)
        new = (used_idx + 1) & 0xFFFF
        self.memory.write(self.used_addr + 2, self.s.le16.build(new))
        return new


def _where(index: int, table: int | None, head: int) -> str:
    if table is None:
        return f"descriptor {index} (chain head {head})"
    return f"indirect descriptor {index} of table {table:#x} (chain head {head})"
