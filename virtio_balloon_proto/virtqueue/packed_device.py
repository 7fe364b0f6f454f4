"""The device side of a packed virtqueue (VIRTIO 1.2 section 2.8).

:class:`PackedQueueDevice` walks the chains the driver made available (2.8.1, 2.8.6).  Like the
split walker, every refusal is a :class:`RingError` naming the ring position and the clause;
rule breaks that can be walked are findings on the chain.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping

from ..errors import RingError, UsageError
from ..findings import Finding
from ..limits import MAX_WALK_DESCRIPTORS
from .chains import (
    DEFAULT_MAX_CHAIN_BYTES,
    MAX_INDIRECT_ENTRIES,
    MAX_TABLE_CACHE,
    VIRTQ_DESC_F_WRITE,
    Chain,
    ChainDescriptor,
    chain_cap,
)
from .memory import GuestMemory, read_at
from .packed_ring import (
    EventSuppress,
    PackedUsed,
    is_available,
    is_used,
    packed_structs,
    used_flags,
)
from .split_ring import DESC_SIZE, check_queue_size


def _where(position: int, table: int | None, head: int) -> str:
    if table is None:
        return f"packed descriptor {position} (chain at {head})"
    return f"indirect descriptor {position} of table {table:#x} (chain at {head})"


class PackedQueueDevice:
    """Device-side view of a packed ring: walks the chains the driver made available."""

    def __init__(
        self,
        memory: GuestMemory,
        size: int,
        desc_addr: int,
        driver_event_addr: int | None = None,
        device_event_addr: int | None = None,
        little_endian: bool = True,
        *,
        resolve_data: bool = True,
        check_writable: bool = True,
        max_chain_bytes: int = DEFAULT_MAX_CHAIN_BYTES,
    ) -> None:
        check_queue_size(size, packed=True)
        self.memory = memory
        self.size = size
        self.desc_addr = desc_addr
        self.driver_event_addr = driver_event_addr
        self.device_event_addr = device_event_addr
        self.little_endian = little_endian
        self.s = packed_structs(little_endian)
        self.resolve_data = resolve_data
        self.check_writable = check_writable
        self.max_chain_bytes = max_chain_bytes
        # struct pvirtq_desc {le64 addr; le32 len; le16 id; le16 flags;}
        self._desc_fmt = struct.Struct("<QIHH" if little_endian else ">QIHH")
        self._tables: dict[tuple[int, int], bytes] = {}
        self._table_bytes = 0
        self._walk_left = MAX_WALK_DESCRIPTORS

    def _table(self, addr: int, length: int, where: str) -> bytes:
        """An indirect table's bytes, read once per walk (chains may share one table)."""
        raw = self._tables.get((addr, length))
        if raw is None:
            if self._table_bytes + length > MAX_TABLE_CACHE:
                self._tables.clear()
                self._table_bytes = 0
            raw = read_at(self.memory, addr, length, where, "spec.driver.ring.addr-in-memory")
            self._tables[(addr, length)] = raw
            self._table_bytes += length
        return raw

    def read_desc(self, position: int, table: int | None, head: int) -> ChainDescriptor:
        base = self.desc_addr if table is None else table
        where = _where(position, table, head)
        d = self.s.pvirtq_desc.parse(
            read_at(self.memory, base + DESC_SIZE * position, DESC_SIZE, where, None)
        )
        return ChainDescriptor(
            position, int(d.addr), int(d.len), int(d.flags), 0, table, None, int(d.id)
        )

    def driver_event(self) -> EventSuppress | None:
        if self.driver_event_addr is None:
            return None
        raw = read_at(self.memory, self.driver_event_addr, 4, "driver event suppression", None)
        return EventSuppress.parse(raw, self.little_endian)

    def device_event(self) -> EventSuppress | None:
        if self.device_event_addr is None:
            return None
        raw = read_at(self.memory, self.device_event_addr, 4, "device event suppression", None)
        return EventSuppress.parse(raw, self.little_endian)

    def available(self, position: int, wrap_counter: int) -> Iterator[Chain]:
        """Yield available chains from ``position`` under the driver ``wrap_counter``.

        Stops at the first descriptor that is not available, or after one full ring (a driver
        cannot have more than ``size`` descriptors outstanding).
        """
        if not 0 <= position < self.size:
            raise UsageError(f"position {position} is outside the ring of {self.size}")
        consumed = 0
        pos, wrap = position, wrap_counter & 1
        self._tables.clear()  # tables are cached for one walk: memory may change between walks
        self._table_bytes = 0
        self._walk_left = MAX_WALK_DESCRIPTORS
        while consumed < self.size:
            first = self.read_desc(pos, None, pos)
            if not is_available(first.flags, wrap):
                return
            chain, n = self.read_chain(pos, wrap, budget=self.size - consumed, keep_tables=True)
            yield chain
            consumed += n
            pos += n
            if pos >= self.size:
                pos -= self.size
                wrap ^= 1

    def read_chain(
        self, position: int, wrap_counter: int, *, budget: int | None = None,
        keep_tables: bool = False,
    ) -> tuple[Chain, int]:
        """Walk the chain whose first descriptor is at ``position``; return it and the number
        of ring entries it occupies.  At most MAX_CHAIN_DESCRIPTORS descriptors are walked (a
        ``spec.driver.ring.chain-len`` finding says where it stopped); ``keep_tables``: the
        indirect tables read earlier in the same walk are still valid."""
        if not keep_tables:
            self._tables.clear()
            self._table_bytes = 0
            self._walk_left = MAX_WALK_DESCRIPTORS
        cap, cap_name = chain_cap(self._walk_left)
        budget = self.size if budget is None else budget
        head = position
        out: list[ChainDescriptor] = []
        findings: list[Finding] = []
        nbytes = 0
        seen_writable = False
        pos, wrap = position, wrap_counter & 1
        nring = 0
        while True:
            where = _where(pos, None, head)
            if nring >= budget:
                last = (pos - 1) % self.size  # the descriptor whose NEXT ran past the budget
                raise RingError(
                    f"chain does not end within {budget} descriptors (queue size {self.size})",
                    where=_where(last, None, head),
                    field="flags",
                    clause="spec.driver.packed.chain-len",
                )
            d = self.read_desc(pos, None, head)
            if nring and not is_available(d.flags, wrap):
                raise RingError(
                    "chain continues (NEXT) into a descriptor that is not available",
                    where=where,
                    field="flags",
                    clause="spec.driver.packed.chain-len",
                )
            nring += 1
            out.append(d)
            if d.indirect:
                if d.has_next:
                    raise RingError(
                        "descriptor has both INDIRECT and NEXT",
                        where=where,
                        field="flags",
                        clause="spec.driver.packed.indirect-with-next",
                    )
                if d.len == 0 or d.len % DESC_SIZE or d.len // DESC_SIZE > MAX_INDIRECT_ENTRIES:
                    raise RingError(
                        f"indirect table length {d.len} is not a non-zero multiple of 16 "
                        f"of at most {MAX_INDIRECT_ENTRIES} entries",
                        where=where,
                        field="len",
                        clause="spec.driver.ring.indirect-len",
                    )
                self._check_present(d.addr, d.len, where)
                table = self._table(d.addr, d.len, where)
                for k in range(d.len // DESC_SIZE):
                    if len(out) >= cap:
                        findings.append(Finding(
                            "spec.driver.ring.chain-len",
                            f"chain at position {head} has more than {cap} descriptors "
                            f"({cap_name}): the walk stops there, the rest of the indirect "
                            "table is not decoded"))
                        break
                    a, n, i, f = self._desc_fmt.unpack_from(table, DESC_SIZE * k)
                    e = ChainDescriptor(k, a, n, f, 0, d.addr, None, i)
                    ew = _where(k, d.addr, head)
                    if e.indirect:
                        raise RingError(
                            "INDIRECT descriptor inside an indirect table",
                            where=ew,
                            field="flags",
                            clause="spec.driver.packed.indirect-nested",
                        )
                    e, nbytes, seen_writable = self._buffer(e, ew, nbytes, seen_writable, findings)
                    out.append(e)
            else:
                d, nbytes, seen_writable = self._buffer(d, where, nbytes, seen_writable, findings)
                out[-1] = d
            pos += 1
            if pos == self.size:
                pos, wrap = 0, wrap ^ 1
            if not d.has_next:
                break
        self._walk_left = max(0, self._walk_left - len(out))
        last_ring = [x for x in out if x.table is None][-1]
        return (
            Chain(
                last_ring.id if last_ring.id is not None else 0,
                position,
                tuple(out),
                tuple(findings),
                wrap_counter & 1,
            ),
            nring,
        )

    def _buffer(
        self,
        d: ChainDescriptor,
        where: str,
        nbytes: int,
        seen_writable: bool,
        findings: list[Finding],
    ) -> tuple[ChainDescriptor, int, bool]:
        if d.flags & VIRTQ_DESC_F_WRITE:
            if self.check_writable:
                self._check_present(d.addr, d.len, where)
            return d, nbytes, True
        if seen_writable:
            findings.append(
                Finding(
                    "spec.driver.ring.writable-after-readable",
                    f"{where}: device-readable buffer after a device-writable one",
                    field="flags",
                )
            )
        if not self.resolve_data:
            self._check_present(d.addr, d.len, where)
            return d, nbytes, seen_writable
        nbytes += d.len
        if nbytes > self.max_chain_bytes:
            raise RingError(
                f"chain's readable buffers exceed {self.max_chain_bytes} bytes",
                where=where,
                field="len",
            )
        data = read_at(self.memory, d.addr, d.len, where, "spec.driver.ring.addr-in-memory")
        return (
            ChainDescriptor(d.index, d.addr, d.len, d.flags, d.next, d.table, data, d.id),
            nbytes,
            seen_writable,
        )

    def _check_present(self, gpa: int, size: int, where: str) -> None:
        contains = getattr(self.memory, "contains", None)
        if contains is not None and not contains(gpa, size):
            raise RingError(
                f"buffer {gpa:#x}+{size:#x} is outside guest memory",
                where=where,
                field="addr",
                clause="spec.driver.ring.addr-in-memory",
            )

    def used_entries(
        self,
        position: int,
        wrap_counter: int,
        chain_lengths: Mapping[int, int] | None = None,
    ) -> Iterator[PackedUsed]:
        """Yield used descriptors from ``position`` under the device ``wrap_counter``.

        The device writes one used descriptor per buffer and skips the ring entries the buffer
        occupied (2.8.9); ``chain_lengths`` maps buffer id -> ring entries (default 1).
        """
        lengths = chain_lengths or {}
        pos, wrap, consumed = position, wrap_counter & 1, 0
        while consumed < self.size:
            d = self.read_desc(pos, None, pos)
            if not is_used(d.flags, wrap):
                return
            ident = d.id if d.id is not None else 0
            yield PackedUsed(pos, wrap, ident, d.len, d.flags)
            step = lengths.get(ident, 1)
            if step < 1 or step > self.size:
                raise RingError(
                    f"buffer id {ident} occupies {step} entries", where=_where(pos, None, pos)
                )
            consumed += step
            pos += step
            if pos >= self.size:
                pos -= self.size
                wrap ^= 1

    def push_used(self, position: int, wrap_counter: int, ident: int, length: int) -> None:
        """Write a used descriptor (device role; tests and simulated devices)."""
        raw = self.s.pvirtq_desc.build(
            {"addr": 0, "len": length, "id": ident, "flags": used_flags(wrap_counter)}
        )
        self.memory.write(self.desc_addr + DESC_SIZE * position, raw)
