"""The device side of a split virtqueue (VIRTIO 1.2 sections 2.7.5-2.7.8).

:class:`SplitQueueDevice` walks what the driver made available, the way a device does, refusing
everything a device must not follow (loops, out-of-range heads, nested indirect tables,
addresses outside memory) with a :class:`RingError` that names the descriptor, the chain head
and the clause.  Input that can be walked but breaks a rule is kept and reported as a
:class:`Finding` on the chain.

The ring's structs and layout are in :mod:`.split_ring`, the driver-side builder in
:mod:`.split_driver`, the decoded records in :mod:`.chains`.  Everything goes through
:class:`~virtio_balloon_proto.virtqueue.memory.GuestMemory` (sans-IO).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ..errors import RingError
from ..findings import Finding
from ..limits import MAX_WALK_DESCRIPTORS
from .chains import (
    DEFAULT_MAX_CHAIN_BYTES,
    MAX_INDIRECT_ENTRIES,
    MAX_TABLE_CACHE,
    Chain,
    ChainDescriptor,
    UsedElem,
    chain_cap,
)
from .memory import GuestMemory, read_at
from .split_ring import DESC_SIZE, USED_ELEM_SIZE, _SplitRing, read_used_entries


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
        raw = read_at(self.memory, self.avail_addr, 4, "avail ring", None)
        h = self.s.virtq_avail_hdr.parse(raw)
        return int(h.flags), int(h.idx)

    def avail_idx(self) -> int:
        return self.avail_header()[1]

    def used_header(self) -> tuple[int, int]:
        h = self.s.virtq_used_hdr.parse(read_at(self.memory, self.used_addr, 4, "used ring", None))
        return int(h.flags), int(h.idx)

    def used_idx(self) -> int:
        return self.used_header()[1]

    def avail_entry(self, i: int) -> int:
        slot = i % self.size
        raw = read_at(self.memory, self.avail_addr + 4 + 2 * slot, 2, f"avail.ring[{slot}]", None)
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
        raw = read_at(self.memory, base + DESC_SIZE * index, DESC_SIZE, where, None)
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
        self._tables[addr] = read_at(self.memory, addr, length, where,
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
                    data = read_at(
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
