"""Importers: turn what people actually have into a ``vbproto-trace/1`` trace.

* :func:`import_split_ring` / :func:`import_packed_ring` -- a raw guest-memory dump holding a
  ring (``--memory FILE[@GPA]``) plus the ring's addresses.
* :func:`import_qemu_core` -- an ELF core from QEMU's ``dump-guest-memory`` (PT_LOAD segments
  by ``p_paddr``) plus the JSON ``x-query-virtio-queue-status`` returns for each queue.
* :func:`import_qemu_log` -- a QEMU ``-trace virtio_balloon_* -trace virtqueue_*`` log.

Each returns a header and an iterator of events; :func:`write_import` writes them atomically.
The walkers' errors (RingError) propagate unchanged: an importer never papers over a broken
ring.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..errors import RingError, TraceError, UsageError, VBProtoError
from ..findings import Finding
from ..limits import MAX_JSON, check_int, loads_json, open_regular, read_bounded
from ..profiles import VERSION_1, QueueRole, get_profile
from ..virtqueue.chains import Chain, ChainDescriptor
from ..virtqueue.filemem import MappedMemory
from ..virtqueue.memory import GuestMemory
from ..virtqueue.packed_device import PackedQueueDevice
from ..virtqueue.split_device import SplitQueueDevice
from .events import AvailEvent, ConfigEvent, Event, HostEvent, StatusEvent, UsedEvent
from .header import TraceHeader, TraceSource, TraceWindow
from .lengths import absurd_lengths
from .writer import TraceWriter

ImportResult = tuple[TraceHeader, Iterator[Event]]


def parse_int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(f"{text!r} is not a number (decimal or 0x-hex)", field=what) from None


def parse_memory_spec(spec: str) -> tuple[str, int]:
    """``FILE[@GPA]`` -> (file, gpa); GPA defaults to 0."""
    path, sep, gpa = spec.rpartition("@")
    if not sep:
        return spec, 0
    return path, parse_int(gpa, "memory")


def load_memory(specs: Sequence[str]) -> MappedMemory:
    """Map raw dump files at their guest-physical addresses."""
    if not specs:
        raise UsageError("at least one --memory FILE[@GPA] is needed", field="memory")
    mem = MappedMemory()
    for spec in specs:
        path, gpa = parse_memory_spec(spec)
        h = mem.map_file(path)
        mem.add(gpa, h)
    return mem


def load_elf_core(path: str | os.PathLike[str]) -> MappedMemory:
    """Guest memory of a QEMU ``dump-guest-memory`` ELF core: its PT_LOAD segments at
    ``p_paddr`` (QEMU writes the guest-physical address there; ``p_vaddr`` is 0 or virtual)."""
    mem = MappedMemory()
    h = mem.map_file(path)
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            loads = [
                (int(s["p_paddr"]), int(s["p_offset"]), int(s["p_filesz"]))
                for s in elf.iter_segments()
                if s["p_type"] == "PT_LOAD" and s["p_filesz"] > 0
            ]
    except (ELFError, struct.error, ValueError) as exc:
        mem.close()
        raise TraceError(f"not a readable ELF core: {exc}", where=str(path)) from None
    except OSError as exc:
        mem.close()
        raise TraceError(f"cannot read: {exc.strerror or exc}", where=str(path)) from None
    if not loads:
        mem.close()
        raise TraceError("ELF core has no PT_LOAD segment with data", where=str(path))
    for paddr, offset, size in loads:
        mem.add(paddr, h, offset, size)
    return mem


def _header(
    profile: str,
    offered: int | None,
    negotiated: int | None,
    endian: str,
    index_model: str,
    ring: str,
    source: TraceSource,
    pin: Mapping[QueueRole, int],
    **kw: Any,
) -> TraceHeader:
    """Header whose queue map follows the index model, with ``pin`` (role -> index the input
    states outright) overriding it; a disagreement makes the model ``custom``."""
    if endian not in ("le", "be"):
        raise UsageError(f"endian must be le or be, not {endian!r}", field="endian")
    prof = get_profile(profile)
    if negotiated is None:
        negotiated = VERSION_1 if endian == "le" else 0
    if offered is None:
        offered = negotiated
    queues = dict(prof.queue_index(offered, negotiated, index_model))
    model = index_model
    for role, idx in pin.items():
        if queues.get(role) != idx:
            queues = {r: i for r, i in queues.items() if i != idx}
            queues[role] = idx
            model = "custom"
    return TraceHeader(
        profile,
        offered,
        negotiated,
        virtio_endian=endian,  # type: ignore[arg-type]
        queues=queues,
        index_model=model,
        ring=ring,  # type: ignore[arg-type]
        source=source,
        **kw,
    )


def _role(text: str | QueueRole) -> QueueRole:
    try:
        return QueueRole(text)
    except ValueError:
        roles = ", ".join(r.value for r in QueueRole)
        raise UsageError(f"unknown queue role {text!r} ({roles})", field="role") from None


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


# --- QEMU ELF core + x-query-virtio-queue-status -----------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """The fields of ``x-query-virtio-queue-status`` (QEMU qapi/virtio.json
    VirtQueueStatus) an import needs."""

    queue_index: int
    vring_num: int
    vring_desc: int
    vring_avail: int
    vring_used: int
    last_avail_idx: int
    used_idx: int
    name: str | None = None

    @classmethod
    def from_json(cls, o: Mapping[str, Any], where: str) -> QueueStatus:
        if "return" in o and isinstance(o["return"], dict):
            o = o["return"]  # a raw QMP reply
        u16, u64 = 0xFFFF, (1 << 64) - 1

        def num(key: str, hi: int) -> int:
            if key not in o:
                raise TraceError(f"queue status lacks {key!r}", where=where)
            return check_int(o[key], field=key, hi=hi, error=TraceError, where=where)

        name = o.get("name")
        if name is not None and not isinstance(name, str):
            raise TraceError(f"must be a string, got {type(name).__name__}", field="name",
                             where=where)
        return cls(num("queue-index", u16), num("vring-num", 32768), num("vring-desc", u64),
                   num("vring-avail", u64), num("vring-used", u64), num("last-avail-idx", u16),
                   num("used-idx", u16), name)


@dataclass(frozen=True, slots=True)
class VirtioStatus:
    """What an import needs of ``x-query-virtio-status`` (QEMU qapi/virtio.json VirtioStatus):
    the device's offered features (``host-features``; without the legacy-only bits when
    VERSION_1 was negotiated: what a modern driver read), the negotiated ones
    (``guest-features``: what the driver acknowledged) and the device's byte order."""

    offered: int
    negotiated: int
    endian: str

    @classmethod
    def from_json(cls, o: Any, where: str) -> VirtioStatus:
        if isinstance(o, dict) and isinstance(o.get("return"), dict):
            o = o["return"]  # a raw QMP reply
        if not isinstance(o, dict):
            raise TraceError("virtio status is not a JSON object", where=where)

        # QEMU's names -> bits: the same reading `capture attach` uses (qemu/capture.py)
        from ..errors import PeerError
        from ..qemu.capture import features_from_qmp, offered_by_transport

        def word(key: str) -> int:
            f = o.get(key)
            if not isinstance(f, dict):
                raise TraceError(f"virtio status lacks the object {key!r}", where=where)
            try:
                w = features_from_qmp(f)
            except PeerError as exc:
                raise TraceError(f"{key}: {exc.message}", where=where) from None
            if not 0 <= w < 1 << 64:
                raise TraceError(f"{key} is not a 64-bit feature word", where=where)
            return w

        endian = o.get("device-endian", "little")
        if endian not in ("little", "big"):
            raise TraceError(f"device-endian {endian!r} is not little or big", where=where)
        negotiated = word("guest-features")
        # what the driver read: a modern transport never shows the legacy-only bits (VIRTIO
        # 1.2 6.3: NOTIFY_ON_EMPTY 24, ANY_LAYOUT 27, bit 30 "SHOULD NOT be negotiated"),
        # the legacy register is 32 bits wide; QEMU's host-features has them all
        offered = offered_by_transport(word("host-features"),
                                       "modern" if negotiated >> 32 & 1 else "legacy")
        return cls(offered, negotiated, "le" if endian == "little" else "be")


def load_virtio_status(path: str | os.PathLike[str]) -> VirtioStatus:
    """The ``x-query-virtio-status`` reply (or its ``return`` object) in a JSON file."""
    raw = read_bounded(path, what="virtio status file", limit=MAX_JSON, error=TraceError)
    data = loads_json(raw, what="virtio status", error=TraceError, where=str(path))
    return VirtioStatus.from_json(data, str(path))


def load_queue_status(paths: Iterable[str | os.PathLike[str]]) -> list[QueueStatus]:
    """Queue status objects from JSON files (one object, a QMP reply, or a list of them)."""
    out = []
    for p in paths:
        raw = read_bounded(p, what="queue status file", limit=MAX_JSON, error=TraceError)
        data = loads_json(raw, what="queue status", error=TraceError, where=str(p))
        items = data if isinstance(data, list) else [data]
        for k, item in enumerate(items):
            if not isinstance(item, dict):
                raise TraceError("queue status is not a JSON object", where=f"{p} item {k}")
            out.append(QueueStatus.from_json(item, f"{p} item {k}"))
    return out


def _say_features(source: TraceSource, *, reported: bool) -> TraceSource:
    """The provenance says when the features are a default, not what the source reported."""
    if reported:
        return source
    return dataclasses.replace(source, provenance=(
        (source.provenance + "; " if source.provenance else "")
        + "features assumed (VERSION_1): give --virtio-status (x-query-virtio-status) or "
          "--negotiated"))


def import_qemu_core(
    core: str | os.PathLike[str],
    statuses: Sequence[QueueStatus],
    *,
    profile: str,
    offered: int | None = None,
    negotiated: int | None = None,
    index_model: str = "offered",
    endian: str = "le",
    source: TraceSource | None = None,
    virtio_status: VirtioStatus | None = None,
    host_page_size: int | None = None,
) -> tuple[TraceHeader, Iterator[Event], MappedMemory]:
    """Events of every queue in ``statuses``: used entries still in each used ring, then the
    chains between QEMU's last-avail-idx and avail.idx.  Queue index -> role follows the
    profile and the index model (QEMU: ``offered``).  Features: as given, else as QEMU
    reported them (``virtio_status``: offered = host-features, negotiated = guest-features),
    else VERSION_1.  Returns the memory too (close it after the events are consumed)."""
    if not statuses:
        raise UsageError("at least one --queue-status file is needed", field="queue-status")
    if virtio_status is not None:
        offered = virtio_status.offered if offered is None else offered
        negotiated = virtio_status.negotiated if negotiated is None else negotiated
        if not negotiated >> 32 & 1:  # legacy: the ring is in the device's (guest's) order
            endian = virtio_status.endian
    mem = load_elf_core(core)
    try:
        header = _header(
            profile,
            offered,
            negotiated,
            endian,
            index_model,
            "split",
            _say_features(source or TraceSource(
                provenance=f"QEMU dump-guest-memory core {Path(core).name}"),
                reported=virtio_status is not None or negotiated is not None),
            {},
            window=snapshot_window(host_page_size),
        )
        roles = {}
        for st in statuses:
            role = header.role_of(st.queue_index)
            if role is None:
                qmap = {r.value: i for r, i in header.queues.items()}
                raise UsageError(
                    f"queue {st.queue_index} has no role under profile {profile} with these "
                    f"features and index model {index_model!r} ({qmap})",
                    field="queue-status",
                )
            roles[st.queue_index] = role
    except BaseException:
        mem.close()
        raise

    def events() -> Iterator[Event]:
        for st in sorted(statuses, key=lambda s: s.queue_index):
            if st.vring_desc == 0:
                continue  # QEMU reports 0 for a queue the driver never set up
            yield from split_ring_events(
                mem,
                desc=st.vring_desc,
                avail=st.vring_avail,
                used=st.vring_used,
                size=st.vring_num,
                role=roles[st.queue_index],
                queue=st.queue_index,
                little_endian=endian == "le",
                last_avail=st.last_avail_idx,
                used_from=(st.used_idx - min(st.vring_num, st.used_idx)) & 0xFFFF,
                header=header,
            )

    return header, events(), mem


# --- QEMU trace log ----------------------------------------------------------------------------

_HEX = r"(0x[0-9a-fA-F]+|\(nil\))"
_RE = {
    "pop": re.compile(rf"virtqueue_pop vq {_HEX} elem {_HEX} in_num (\d+) out_num (\d+)"),
    "page": re.compile(r"virtio_balloon_handle_output section name: (\S*) gpa: (0x[0-9a-fA-F]+)"),
    "bad": re.compile(r"virtio_balloon_bad_addr (0x[0-9a-fA-F]+)"),
    "fill": re.compile(rf"virtqueue_fill vq {_HEX} elem {_HEX} len (\d+) idx (\d+)"),
    "notify": re.compile(rf"virtio_queue_notify vdev {_HEX} n (\d+) vq {_HEX}"),
    "status": re.compile(rf"virtio_set_status vdev {_HEX} val (\d+)"),
    "set_config": re.compile(r"virtio_balloon_set_config actual: (\d+) oldactual: (\d+)"),
    "get_config": re.compile(r"virtio_balloon_get_config num_pages: (\d+) actual: (\d+)"),
    "to_target": re.compile(
        r"virtio_balloon_to_target balloon target: (0x[0-9a-fA-F]+) num_pages: (\d+)"
    ),
}
_MAX_LOG_LINE = 1 << 20
_PFN_QUEUES = (QueueRole.INFLATE, QueueRole.DEFLATE)


def _log_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    # a regular file only: the log is read twice, and a FIFO must not block open()
    f, _ = open_regular(path, what="QEMU trace log", error=TraceError)
    with f:
        n = 0
        while True:
            raw = f.readline(_MAX_LOG_LINE + 1)
            if not raw:
                return
            n += 1
            if len(raw) > _MAX_LOG_LINE:
                raise TraceError(
                    f"line is longer than {_MAX_LOG_LINE} bytes: not a QEMU trace log",
                    where=f"{path} line {n}",
                )
            yield n, raw.decode("utf-8", "replace")


def _queue_map(path: str | os.PathLike[str]) -> tuple[dict[str, int], bool, bool]:
    """vq pointer -> queue index: from ``virtio_queue_notify`` lines when present (exact),
    else by pointer order (QEMU allocates the VirtQueue array in one block, q0 lowest); whether
    it was inferred; whether a status write of 0 (a reset) comes before the first buffer."""
    exact: dict[str, int] = {}
    seen: set[int] = set()
    reset: bool | None = None
    for _, line in _log_lines(path):
        m = _RE["notify"].search(line)
        if m:
            exact[m.group(3).lower()] = int(m.group(2))
            continue
        m = _RE["pop"].search(line) or _RE["fill"].search(line)
        if m:
            seen.add(int(m.group(1), 16))
            reset = bool(reset)
            continue
        m = _RE["status"].search(line) if reset is None else None
        if m and int(m.group(2)) == 0:
            reset = True
    known = {int(p, 16): i for p, i in exact.items()}
    inferred = False
    # a stride from two exactly known queues places the rest exactly
    stride = None
    if len(known) >= 2:
        (p0, i0), (p1, i1) = sorted(known.items())[:2]
        if i1 != i0 and (p1 - p0) % (i1 - i0) == 0:
            stride = (p1 - p0) // (i1 - i0)
    out = {f"{p:#x}": i for p, i in known.items()}
    rest = sorted(seen - set(known))
    for k, p in enumerate(rest):
        if stride and known:
            p0, i0 = next(iter(sorted(known.items())))
            if (p - p0) % stride == 0:
                out[f"{p:#x}"] = i0 + (p - p0) // stride
                continue
        out[f"{p:#x}"] = k  # pointer order
        inferred = True
    return out, inferred, bool(reset)


def import_qemu_log(
    path: str | os.PathLike[str],
    *,
    profile: str,
    offered: int | None = None,
    negotiated: int | None = None,
    index_model: str = "offered",
    endian: str = "le",
    source: TraceSource | None = None,
    quiet_ok: bool = False,
) -> ImportResult:
    """The device's view from a QEMU trace log (PROTOCOL.md, research/qemu-peer.md section 3).

    Each ``virtqueue_pop`` starts a buffer; the ``handle_output``/``bad_addr`` lines after it
    (one per PFN, in array order) rebuild its PFN array as ``__virtio32`` bytes.  The log has no
    descriptor addresses and no bytes of other queues: those buffers get ``null`` out/in
    entries.  Defaults: QEMU's own feature set (STATS_VQ|VERSION_1) and its index model.

    A log with no virtio trace line at all raises TraceError (it is not a QEMU trace log),
    unless ``quiet_ok``: the caller switched the events on itself, so silence is a quiet device.
    """
    if negotiated is None:
        negotiated = (1 << 1) | (VERSION_1 if endian == "le" else 0)
    vq_map, inferred, reset = _queue_map(path)
    prov = "QEMU -trace log"
    if inferred:
        prov += "; queue indices inferred from vq pointer order (no virtio_queue_notify lines)"
    header = _header(
        profile,
        offered,
        negotiated,
        endian,
        index_model,
        "unknown",
        source or TraceSource(provenance=prov),
        {},
        # a log sees the device from QEMU's start: it starts at a reset when a status write
        # of 0 comes before any buffer; it ends wherever the log was taken (cut).  It has
        # status, config and host lines, and the bytes of PFN buffers only.  Its config lines
        # (virtio_balloon_get_config/set_config) show num_pages and actual, never poison_val
        window=TraceWindow("reset" if reset else "mid", "cut", None, (
            "status", "config-actual", "host", "avail", "used", "driver-bytes")),
    )
    pfn_fmt = "<I" if endian == "le" else ">I"

    def role_of(vq: str, where: str) -> tuple[QueueRole, int]:
        idx = vq_map.get(vq.lower())
        role = None if idx is None else header.role_of(idx)
        if idx is None or role is None:
            raise TraceError(
                f"vq {vq} (queue {idx}) has no role under profile {profile} with features "
                f"{header.features_negotiated:#x} (give --negotiated/--offered)",
                where=where,
            )
        return role, idx

    def events() -> Iterator[Event]:
        pending: dict[str, Any] | None = None
        anything = False

        def flush() -> Iterator[Event]:
            nonlocal pending
            if pending is None:
                return
            p, pending = pending, None
            role, idx = p["role"], p["queue"]
            if role in _PFN_QUEUES and p["out_num"] >= 1:
                data = b"".join(struct.pack(pfn_fmt, x) for x in p["pfns"])
                out: tuple[bytes | None, ...] = (data,)
                note = (
                    None
                    if p["out_num"] == 1
                    else f"{p['out_num']} readable buffers, PFN bytes concatenated"
                )
            else:
                out, note = (None,) * p["out_num"], None
            yield AvailEvent(
                role,
                idx,
                out,
                (None,) * p["in_num"],
                ref=p["elem"],
                note=note,
            )

        for n, line in _log_lines(path):
            where = f"{path} line {n}"
            if "virtio_balloon_handle_output" in line or "virtio_balloon_bad_addr" in line:
                m = _RE["page"].search(line)
                gpa = int(m.group(2), 16) if m else None
                if m is None:
                    mb = _RE["bad"].search(line)
                    gpa = int(mb.group(1), 16) if mb else None
                if gpa is None:
                    raise TraceError(f"unrecognised balloon line: {line.strip()}", where=where)
                if pending is None or pending["role"] not in _PFN_QUEUES:
                    raise TraceError("a PFN line outside an inflate/deflate buffer", where=where)
                if gpa & 0xFFF or gpa >> 12 >= 1 << 32:
                    raise TraceError(f"gpa {gpa:#x} is not a 32-bit PFN << 12", where=where)
                pending["pfns"].append(gpa >> 12)
                continue
            m = _RE["pop"].search(line)
            if m:
                yield from flush()
                role, idx = role_of(m.group(1), where)
                in_num, out_num = int(m.group(3)), int(m.group(4))
                if in_num + out_num > 32768:  # a chain has at most Queue Size (<= 32768) descs
                    raise TraceError(f"virtqueue_pop in_num {in_num} + out_num {out_num} is more "
                                     "than a virtqueue's 32768 descriptors", where=where)
                pending = {
                    "role": role,
                    "queue": idx,
                    "elem": m.group(2).lower(),
                    "in_num": in_num,
                    "out_num": out_num,
                    "pfns": [],
                }
                continue
            m = _RE["fill"].search(line)
            if m:
                yield from flush()
                role, idx = role_of(m.group(1), where)
                yield UsedEvent(role, idx, int(m.group(3)), ref=m.group(2).lower())
                continue
            other = _other_event(line)
            if other is not None:
                yield from flush()
                yield other
                anything = True
        yield from flush()
        if not vq_map and not anything and not quiet_ok:
            # no pop/fill/notify/status/config line: not a QEMU trace log (an empty file, a
            # binary, a log of other trace events), not a trace of a quiet device -- it was
            # written as an empty trace, exit 0
            raise TraceError("no QEMU virtio trace line (virtqueue_pop, virtqueue_fill, "
                             "virtio_queue_notify, virtio_set_status, virtio_balloon_*): "
                             "was QEMU run with -trace 'virt*'?", where=str(path))

    return header, events()


def _other_event(line: str) -> Event | None:
    m = _RE["status"].search(line)
    if m:
        return StatusEvent(int(m.group(2)))
    m = _RE["set_config"].search(line)
    if m:
        return ConfigEvent(True, 4, struct.pack("<I", int(m.group(1)) & 0xFFFFFFFF))
    m = _RE["get_config"].search(line)
    if m:
        data = struct.pack("<II", int(m.group(1)) & 0xFFFFFFFF, int(m.group(2)) & 0xFFFFFFFF)
        return ConfigEvent(False, 0, data)
    m = _RE["to_target"].search(line)
    if m:
        return HostEvent("set-target", num_pages=int(m.group(2)), detail=f"target {m.group(1)}")
    return None


def write_import(out: str | os.PathLike[str], header: TraceHeader, events: Iterable[Event]) -> int:
    """Write an import atomically; returns the number of events.  On any error nothing is
    left at ``out``."""
    try:
        with TraceWriter(out, header) as w:
            for ev in events:
                w.write(ev)
            return w.count - 1
    except VBProtoError:
        raise
