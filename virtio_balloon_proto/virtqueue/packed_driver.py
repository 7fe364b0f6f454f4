"""The driver side of a packed virtqueue (VIRTIO 1.2 section 2.8.21).

:class:`PackedQueueDriver` builds chains (tests): buffer ids from a free list, the driver wrap
counter, optional indirect tables; the first descriptor of a chain is written last.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from ..errors import UsageError
from .chains import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, Segment
from .memory import GuestMemory
from .packed_ring import avail_flags, packed_structs
from .split_ring import DESC_SIZE, check_queue_size


class PackedQueueDriver:
    """Driver-side packed ring builder (tests): ids from a free list, wrap counter, indirect."""

    def __init__(
        self,
        memory: GuestMemory,
        size: int,
        desc_addr: int,
        little_endian: bool = True,
        *,
        initialize: bool = True,
    ) -> None:
        check_queue_size(size, packed=True)
        self.memory = memory
        self.size = size
        self.desc_addr = desc_addr
        self.little_endian = little_endian
        self.s = packed_structs(little_endian)
        self.position = 0
        self.wrap_counter = 1  # 2.8.1: both wrap counters start at 1
        self._free_ids: deque[int] = deque(range(size))
        #: id -> ring entries its chain occupies
        self.chain_lengths: dict[int, int] = {}
        if initialize:
            self.memory.write(desc_addr, bytes(DESC_SIZE * size))

    def write_desc(
        self,
        position: int,
        addr: int,
        length: int,
        ident: int,
        flags: int,
        *,
        table: int | None = None,
    ) -> None:
        base = self.desc_addr if table is None else table
        raw = self.s.pvirtq_desc.build({"addr": addr, "len": length, "id": ident, "flags": flags})
        self.memory.write(base + DESC_SIZE * position, raw)

    def add_chain(self, segments: Sequence[Segment], *, indirect_addr: int | None = None) -> int:
        """Write ``segments`` as the next available chain and return its buffer id."""
        if not segments:
            raise UsageError("a chain needs at least one segment", where="packed queue driver")
        if not self._free_ids:
            raise UsageError("no free buffer id", where="packed queue driver")
        nring = 1 if indirect_addr is not None else len(segments)
        if nring > self.size:
            raise UsageError(f"chain of {nring} does not fit a ring of {self.size}")
        ident = self._free_ids.popleft()
        if indirect_addr is not None:
            table = bytearray()
            for addr, length, writable in segments:
                table += self.s.pvirtq_desc.build(
                    {
                        "addr": addr,
                        "len": length,
                        "id": 0,
                        "flags": VIRTQ_DESC_F_WRITE if writable else 0,
                    }
                )
            self.memory.write(indirect_addr, bytes(table))
            items: list[tuple[int, int, int]] = [(indirect_addr, len(table), VIRTQ_DESC_F_INDIRECT)]
        else:
            items = [
                (
                    addr,
                    length,
                    (VIRTQ_DESC_F_WRITE if writable else 0)
                    | (VIRTQ_DESC_F_NEXT if k < len(segments) - 1 else 0),
                )
                for k, (addr, length, writable) in enumerate(segments)
            ]
        # write the first descriptor last, as 2.8.21 asks (its flags publish the whole chain)
        placed: list[tuple[int, int, int, int, int]] = []
        pos, wrap = self.position, self.wrap_counter
        for addr, length, flags in items:
            placed.append((pos, addr, length, flags | avail_flags(wrap), ident))
            pos += 1
            if pos == self.size:
                pos, wrap = 0, wrap ^ 1
        for p, addr, length, flags, i in reversed(placed):
            self.write_desc(p, addr, length, i, flags)
        self.position, self.wrap_counter = pos, wrap
        self.chain_lengths[ident] = nring
        return ident

    def release(self, ident: int) -> None:
        """Return a used buffer id to the free list."""
        if ident not in self.chain_lengths:
            raise UsageError(f"buffer id {ident} is not outstanding", field="id")
        del self.chain_lengths[ident]
        self._free_ids.append(ident)
