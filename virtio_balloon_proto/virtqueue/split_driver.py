"""The driver side of a split virtqueue (VIRTIO 1.2 section 2.7.13).

:class:`SplitQueueDriver` lays chains into guest memory the way a driver does (free list,
avail ring with 16-bit wrap, optional indirect tables), in the spirit of rust-vmm's
``MockSplitQueue``.  Used by tests and by the QEMU peer.  Everything goes through
:class:`~virtio_balloon_proto.virtqueue.memory.GuestMemory` (sans-IO).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from ..errors import UsageError
from .chains import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, Segment, UsedElem
from .memory import GuestMemory
from .split_ring import (
    DESC_SIZE,
    _SplitRing,
    avail_ring_size,
    desc_table_size,
    legacy_layout,
    read_used_entries,
    used_ring_size,
)


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
