"""Importing a ring from a guest-memory snapshot (VIRTIO 1.2 sections 2.7 and 2.8).

:func:`import_split_ring` / :func:`import_packed_ring` walk a split or packed ring found in a raw
dump (``--memory FILE[@GPA]``) at the given addresses; :func:`split_ring_events` turns a split
ring's avail and used entries into trace events (also used by the QEMU attach and guest capture).
A snapshot is a window (:func:`snapshot_window`): the walkers are lenient about buffers outside
the dump, and the walkers' errors (RingError) propagate unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from ..errors import RingError, UsageError
from ..findings import Finding
from ..profiles import QueueRole
from ..virtqueue.chains import Chain, ChainDescriptor
from ..virtqueue.memory import GuestMemory
from ..virtqueue.packed_device import PackedQueueDevice
from ..virtqueue.split_device import SplitQueueDevice
from .events import AvailEvent, Event, UsedEvent
from .header import TraceHeader, TraceSource, TraceWindow
from .import_common import ImportResult, _header, _role
from .lengths import absurd_lengths

# --- split / packed ring dumps ---------------------------------------------------------------


def _ring_header(
    profile: str,
    offered: int | None,
    negotiated: int | None,
    endian: str,
    index_model: str,
    ring: str,
    source: TraceSource | None,
    role: str | QueueRole,
    queue: int | None,
) -> tuple[TraceHeader, QueueRole]:
    """The header of a one-queue ring import, and the role, which must have a queue index."""
    r = _role(role)
    header = _header(
        profile, offered, negotiated, endian, index_model, ring,
        source or TraceSource(provenance=f"{ring} ring in a guest memory dump"),
        {r: queue} if queue is not None else {},
    )
    if r not in header.queues:
        raise UsageError(
            f"role {r.value} has no queue index with these features; give --queue", field="queue"
        )
    return header, r


#: a trace record is at most MAX_LINE (64 MiB) of JSON, bytes as hex: a snapshot keeps at most
#: this many bytes of one chain; a longer chain's bytes are "not captured" (named), not an error
SNAPSHOT_MAX_CHAIN_BYTES = 16 << 20
#: what a ring snapshot sees: the rings and the buffers' bytes, no config, status or host
SNAPSHOT_CAPTURED = ("avail", "used", "driver-bytes")


def snapshot_window(host_page_size: int | None = None) -> TraceWindow:
    """A snapshot of guest memory: the device was not reset inside it (``mid``) and it stops
    at an arbitrary moment (``cut``)."""
    return TraceWindow("mid", "cut", host_page_size, SNAPSHOT_CAPTURED)


class _Lenient:
    """A ring walker that does not read buffer bytes (``resolve_data=False``): a buffer
    outside the dump is recorded in ``missing`` (a finding of its chain), not an error ending
    the import.  Ring structure errors (heads, loops, tables) still end it."""

    memory: GuestMemory
    missing: set[tuple[int, int]]

    def _check_present(self, gpa: int, size: int, where: str) -> None:
        contains = getattr(self.memory, "contains", None)
        if contains is not None and not contains(gpa, size):
            self.missing.add((gpa, size))


class _SnapshotWalker(_Lenient, SplitQueueDevice):
    pass


class _PackedSnapshotWalker(_Lenient, PackedQueueDevice):
    pass


def _snapshot_chain(walker: _Lenient, memory: GuestMemory, chain: Chain, role: QueueRole,
                    queue: int, header: TraceHeader | None) -> AvailEvent:
    """An avail event of a chain still owned by the device: bytes read where the dump holds
    them; a buffer outside the dump or past SNAPSHOT_MAX_CHAIN_BYTES is ``null`` with a
    finding (outside) or a note (too long), and the lengths' own findings are added."""
    findings = list(chain.findings)
    descs = []
    left = SNAPSHOT_MAX_CHAIN_BYTES
    long_ = False
    unread: list[str] = []
    for d in chain.descriptors:
        if d.indirect:
            descs.append(d)
            continue
        outside = (d.addr, d.len) in walker.missing
        if outside:
            findings.append(Finding(
                "spec.driver.ring.addr-in-memory",
                f"buffer {d.addr:#x}+{d.len:#x} of chain head {chain.head} is outside the "
                "memory dump (VIRTIO 1.2 2.7.5: addr is guest-physical): its bytes were not "
                "captured", field="addr"))
        if d.writable or outside:
            descs.append(d)
            continue
        if d.len > left:
            long_ = True
            descs.append(d)
            continue
        try:
            data: bytes | None = memory.read(d.addr, d.len)
        except RingError as exc:  # e.g. a capture's read budget: not captured, no rule broken
            data = None
            unread.append(exc.message)
        left -= d.len
        # the constructor, not dataclasses.replace: 65,536 descriptors of a shared indirect
        # table took 1.1 s in replace() alone
        descs.append(ChainDescriptor(d.index, d.addr, d.len, d.flags, d.next, d.table, data))
    ev = AvailEvent.from_chain(dataclasses.replace(chain, descriptors=tuple(descs),
                                                   findings=tuple(findings)), role, queue)
    if long_:
        unread.append(f"readable buffers past {SNAPSHOT_MAX_CHAIN_BYTES} bytes are not "
                      "captured (a trace record holds 64 MiB)")
    if unread:
        ev = dataclasses.replace(ev, note="; ".join(unread)[:300])
    if header is not None:
        extra = tuple(f for f in absurd_lengths(header, ev) if f not in ev.findings)
        if extra:
            ev = dataclasses.replace(ev, findings=ev.findings + extra)
    return ev


def split_ring_events(
    memory: GuestMemory,
    *,
    desc: int,
    avail: int,
    used: int,
    size: int,
    role: QueueRole,
    queue: int,
    little_endian: bool = True,
    last_avail: int | None = None,
    used_from: int | None = None,
    header: TraceHeader | None = None,
) -> Iterator[Event]:
    """The events a snapshot of one split ring proves, in causal order (an avail event always
    before the used event of the same chain).

    * ``used_from`` .. used.idx (default: the ``min(size, used.idx)`` entries the used ring
      still holds): the chains the device returned.
    * ``last_avail`` .. avail.idx (``last_avail``: the device's next avail index; default
      used.idx): chains made available.  A device takes avail entries in ring order and has
      used used.idx chains, so a position below used.idx was taken by the device.  Such a
      chain is matched with its used entry (same head, in used order) and written before it;
      the driver owns its descriptors again once it is used (VIRTIO 1.2 2.7.14), so its bytes
      in the dump are not proof of what it held: they are ``null`` (not captured).
    * a used entry matching no chain of the snapshot names a chain made available before the
      window (format 1.2 ``window.start`` = ``mid``: no blame, pages unknown).
    * positions from used.idx on are walked, their bytes read (the device still owns them).
    """
    walker = _SnapshotWalker(memory, size, desc, avail, used, little_endian,
                             resolve_data=False, check_writable=True)
    walker.missing = set()
    used_idx = walker.used_idx()
    avail_idx = walker.avail_idx()
    first = used_idx if last_avail is None else last_avail & 0xFFFF
    n = (avail_idx - first) & 0xFFFF
    if n > size:
        raise RingError(
            f"avail.idx {avail_idx} is {n} entries past last_avail {first}, more than the "
            f"queue size {size}", where="avail ring", field="idx",
            clause="spec.driver.ring.avail-idx-advance")
    behind = (used_idx - first) & 0xFFFF
    taken = min(behind, n) if behind <= size else 0  # positions first .. first+taken-1
    heads = [(p, walker.avail_entry(p)) for p in ((first + k) & 0xFFFF for k in range(taken))]
    start = used_from if used_from is not None else (used_idx - min(size, used_idx)) & 0xFFFF
    used_list = list(walker.used_entries(start, upto=used_idx))
    match: dict[int, int] = {}  # used entry number -> taken position number
    free = list(range(len(heads)))
    for u, e in enumerate(used_list):
        k = next((k for k in free if heads[k][1] == e.id), None)
        if k is not None:
            free.remove(k)
            match[u] = k
    emitted = 0

    def taken_event(k: int) -> AvailEvent:
        p, head = heads[k]
        why = ("used before the snapshot" if k not in free else
               "taken by the device before the snapshot (position below used.idx), its used "
               "entry not in the ring")
        return AvailEvent(role, queue, (None,), (), id=head, avail_idx=p,
                          note=f"{why}: the driver may have reused its descriptors, so their "
                               "bytes are not captured")

    for u, e in enumerate(used_list):
        if u in match:
            while emitted <= match[u]:
                yield taken_event(emitted)
                emitted += 1
        yield UsedEvent(role, queue, e.len, id=e.id, used_idx=e.used_idx,
                        note=None if u in match else "a chain made available before the window")
    while emitted < len(heads):
        yield taken_event(emitted)
        emitted += 1
    for chain in walker.available((first + taken) & 0xFFFF):
        yield _snapshot_chain(walker, memory, chain, role, queue, header)


def import_split_ring(
    memory: GuestMemory,
    *,
    desc: int,
    avail: int,
    used: int,
    size: int,
    role: str | QueueRole,
    profile: str,
    endian: str = "le",
    last_avail: int | None = None,
    queue: int | None = None,
    offered: int | None = None,
    negotiated: int | None = None,
    index_model: str = "negotiated",
    source: TraceSource | None = None,
) -> ImportResult:
    header, r = _ring_header(profile, offered, negotiated, endian, index_model, "split",
                             source, role, queue)
    header = dataclasses.replace(header, window=snapshot_window())
    events = split_ring_events(
        memory,
        desc=desc,
        avail=avail,
        used=used,
        size=size,
        role=r,
        queue=header.queues[r],
        little_endian=endian == "le",
        last_avail=last_avail,
        header=header,
    )
    return header, events


def import_packed_ring(
    memory: GuestMemory,
    *,
    desc: int,
    size: int,
    role: str | QueueRole,
    profile: str,
    position: int = 0,
    wrap: int = 1,
    used_position: int | None = None,
    used_wrap: int | None = None,
    driver_event: int | None = None,
    device_event: int | None = None,
    queue: int | None = None,
    offered: int | None = None,
    negotiated: int | None = None,
    index_model: str = "negotiated",
    source: TraceSource | None = None,
) -> ImportResult:
    """Packed ring: used descriptors from (used_position, used_wrap) when given, then the
    available chains from (position, wrap).  Packed rings imply VERSION_1: little-endian."""
    header, r = _ring_header(profile, offered, negotiated, "le", index_model, "packed",
                             source, role, queue)
    # a packed ring overwrites a used chain's descriptors with the used element, so the used
    # entries and the available chains are different chains: used first is causal
    header = dataclasses.replace(header, window=snapshot_window())
    q = header.queues[r]
    dev = _PackedSnapshotWalker(memory, size, desc, driver_event, device_event,
                                resolve_data=False)
    dev.missing = set()

    def events() -> Iterator[Event]:
        if used_position is not None:
            for u in dev.used_entries(used_position, 1 if used_wrap is None else used_wrap):
                yield UsedEvent(r, q, u.len, id=u.id, used_idx=u.position,
                                note="a chain made available before the window")
        for chain in dev.available(position, wrap):
            yield _snapshot_chain(dev, memory, chain, r, q, header)

    return header, events()
