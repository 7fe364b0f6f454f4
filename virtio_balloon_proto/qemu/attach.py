"""Snapshot the balloon queues of a QEMU someone else runs (``vbproto capture attach``).

Everything goes through that QEMU's QMP monitor, read-only towards the guest:

* ``x-query-virtio`` finds the balloon's virtio backend (QOM path), ``x-query-virtio-status``
  gives the offered (host) and negotiated (guest) features, the status byte, the device byte
  order and the number of queues, ``x-query-virtio-queue-status`` each queue's ring addresses,
  size, ``last-avail-idx`` and ``used-idx``;
* guest RAM (``human-monitor-command info mtree -f``: the flat view's ``ram`` ranges) bounds
  every read; ring and buffer bytes are read with ``pmemsave`` into a private file (QEMU writes
  it, we read it and delete it), one read per ring or buffer, within a byte budget;
* ``x-query-virtio-queue-element`` gives QEMU's own view of each chain in flight, checked
  against the chain our walker (virtqueue/split_device.py) read from the bytes.

For a consistent window the VM is paused (``stop``) while reading and resumed (``cont``) only
if it was running before; ``pause=False`` reads a running guest (then the rings may move
under the reads, and the header says so).  Optionally (``record``) QEMU's balloon trace events
are switched on for N seconds (``trace-event-set-state``); this points QEMU's log (``-D``) at a
file of ours through HMP ``logfile`` -- the one change attach makes to QEMU's settings, named
in the trace's provenance.
"""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import PeerError, RingError, UsageError
from ..profiles import QueueRole
from ..trace import (
    Event,
    FeaturesEvent,
    HostEvent,
    StatusEvent,
    TraceHeader,
    TraceSource,
    TraceWindow,
    TraceWriter,
)
from ..trace.import_ring import split_ring_events
from .capture import features_from_qmp, offered_by_transport
from .channel import LineChannel
from .qmp import QmpClient

#: the most bytes one attach reads from guest RAM (rings + buffers)
DEFAULT_BUDGET = 64 << 20
#: one buffer larger than this is not read (its bytes stay uncaptured)
MAX_BUFFER = 16 << 20
VERSION_1_BIT = 32
#: what a snapshot sees (format 1.2 window ``captured``): features and status from QMP, the
#: rings and the driver's buffer bytes from memory
SNAPSHOT_SEES = ("features", "status", "avail", "used", "driver-bytes")
_MTREE_RAM = re.compile(
    r"^\s*([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, (ram|rom|ramd|i/o|romd)\): (\S+)", re.M
)


def connect_qmp(path: str | os.PathLike[str], timeout: float = 10.0) -> QmpClient:
    """Connect to a QMP server socket (``-qmp unix:PATH,server=on,wait=off``) and handshake."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(os.fspath(path))
    except OSError as e:
        sock.close()
        raise PeerError(f"cannot connect to QMP socket {path}: {e.strerror or e}",
                        where="QMP") from None
    sock.settimeout(None)
    qmp = QmpClient(LineChannel(sock, "QMP", timeout=timeout, diagnose=lambda: ""))
    qmp.handshake()
    return qmp


def find_balloon(qmp: QmpClient) -> str:
    """QOM path of the (one) virtio-balloon backend: ``x-query-virtio``."""
    devs = qmp.execute("x-query-virtio")
    paths = [d["path"] for d in devs if isinstance(d, dict) and d.get("name") == "virtio-balloon"]
    if not paths:
        raise PeerError("this QEMU has no virtio-balloon device (x-query-virtio)", where="QMP")
    if len(paths) > 1:
        raise UsageError(f"several balloon devices ({', '.join(paths)}); give --path",
                         field="path")
    return str(paths[0])


def ram_regions(qmp: QmpClient) -> list[tuple[int, int, str]]:
    """(gpa, size, name) of RAM in the system address space (HMP ``info mtree -f``)."""
    text = str(qmp.execute("human-monitor-command", {"command-line": "info mtree -f"}))
    # the first flat view is the system memory map ("FlatView #0 ... AS "memory"")
    m = re.search(r'AS "memory".*?\n(.*?)(?:\nFlatView|\Z)', text, re.S)
    body = m.group(1) if m else text
    out: list[tuple[int, int, str]] = []
    for a, b, kind, name in _MTREE_RAM.findall(body):
        if kind not in ("ram", "ramd"):
            continue
        start, end = int(a, 16), int(b, 16)
        if out and out[-1][0] + out[-1][1] == start and out[-1][2] == name:
            out[-1] = (out[-1][0], end + 1 - out[-1][0], name)
        else:
            out.append((start, end + 1 - start, name))
    if not out:
        raise PeerError("no RAM ranges in `info mtree -f`", where="QMP")
    return out


@dataclass
class PmemsaveMemory:
    """:class:`~virtio_balloon_proto.virtqueue.memory.GuestMemory` read through QMP
    ``pmemsave`` (never written).  Reads outside RAM, larger than ``max_read`` or beyond the
    budget raise RingError (the walker then reports those bytes as not captured)."""

    qmp: QmpClient
    regions: list[tuple[int, int, str]]
    workdir: Path
    budget: int = DEFAULT_BUDGET
    max_read: int = MAX_BUFFER
    bytes_read: int = 0
    reads: int = 0
    #: (gpa, size) of every range read, for the header's list of captured bytes
    captured: list[tuple[int, int]] = field(default_factory=list)
    _cache: list[tuple[int, bytes]] = field(default_factory=list)

    def contains(self, gpa: int, size: int) -> bool:
        return any(s <= gpa and gpa + size <= s + n for s, n, _ in self.regions)

    def read(self, gpa: int, size: int) -> bytes:
        if size == 0:
            return b""
        for start, data in self._cache:
            if start <= gpa and gpa + size <= start + len(data):
                return data[gpa - start:gpa - start + size]
        if not self.contains(gpa, size):
            raise RingError(f"{gpa:#x}+{size:#x} is not inside guest RAM")
        if size > self.max_read:
            raise RingError(f"{size} bytes at {gpa:#x} exceed the {self.max_read}-byte read cap")
        if self.bytes_read + size > self.budget:
            raise RingError(f"reading {size} bytes at {gpa:#x} exceeds the {self.budget}-byte "
                            "budget of this attach")
        path = self.workdir / f"pmem-{self.reads}.bin"
        self.qmp.execute("pmemsave", {"val": gpa, "size": size, "filename": str(path)})
        try:
            data = path.read_bytes()
        finally:
            path.unlink(missing_ok=True)
        if len(data) != size:
            raise PeerError(f"pmemsave wrote {len(data)} of {size} bytes at {gpa:#x}",
                            where="QMP pmemsave")
        self.reads += 1
        self.bytes_read += size
        self.captured.append((gpa, size))
        self._cache.append((gpa, data))
        return data

    def write(self, gpa: int, data: bytes) -> None:
        raise RingError("attach never writes guest memory")


@dataclass
class Snapshot:
    header: TraceHeader
    events: list[Event]
    path: str
    statuses: list[dict[str, Any]]
    #: QMP x-query-virtio-queue-element replies of the chains in flight, per queue
    elements: dict[int, list[dict[str, Any]]]
    status: int
    paused_seconds: float
    bytes_read: int
    reads: int
    regions: list[tuple[int, int, str]]
    #: the signal (KeyboardInterrupt or the CLI's Interrupted) that cut a recording short; the
    #: snapshot and the events recorded until then are kept, the caller writes them and re-raises
    stopped_by: BaseException | None = None


_STATUS_BITS = {"ACKNOWLEDGE": 1, "DRIVER": 2, "DRIVER_OK": 4, "FEATURES_OK": 8,
                "NEEDS_RESET": 64, "FAILED": 128}


def status_byte(block: Any) -> int:
    """x-query-virtio-status's ``status`` (``{"statuses": ["VIRTIO_CONFIG_S_DRIVER: ..."]}``,
    or an integer in some QEMU versions) -> the device status byte."""
    if isinstance(block, int):
        return block
    value = 0
    for text in block.get("statuses", []):
        name = str(text).split(":", 1)[0].removeprefix("VIRTIO_CONFIG_S_")
        if name not in _STATUS_BITS:
            raise PeerError(f"unknown status name {text!r} from QMP", where="x-query-virtio-status")
        value |= _STATUS_BITS[name]
    unknown = block.get("unknown-statuses", 0)
    return value | (unknown if isinstance(unknown, int) else 0)


def _endian(st: dict[str, Any], negotiated: int) -> str:
    if negotiated >> VERSION_1_BIT & 1:
        return "le"
    return "be" if st.get("device-endian") == "big" else "le"


def snapshot(
    qmp: QmpClient,
    *,
    path: str | None = None,
    profile: str = "spec",
    pause: bool = True,
    budget: int = DEFAULT_BUDGET,
    workdir: Path | None = None,
    command: str | None = None,
    record: float = 0.0,
    record_log: Path | None = None,
) -> Snapshot:
    """One consistent window of every balloon queue (see the module docstring).

    ``record`` > 0: after the rings are read and before the VM resumes, QEMU's balloon trace
    events are switched on (their log pointed at ``record_log``) for ``record`` seconds; the
    recorded buffers follow the snapshot's events (qemu-log importer), so nothing the guest
    did between the two is lost."""
    if record < 0 or record > 3600:
        raise UsageError(f"record must be 0-3600 s, not {record}", field="record")
    if record and record_log is None:
        raise UsageError("recording needs a log file (record_log)", field="record_log")
    path = path or find_balloon(qmp)
    running = bool(qmp.execute("query-status").get("running"))
    t0 = time.monotonic()
    if pause and running:
        qmp.execute("stop")
    recording = False
    try:
        with tempfile.TemporaryDirectory(prefix="vbproto-attach-", dir=workdir) as tmp:
            snap = _read(qmp, path, profile, budget, Path(tmp), pause or not running, command)
        if record and record_log is not None:
            _set_recording(qmp, record_log, True)
            recording = True
    finally:
        if pause and running:
            qmp.execute("cont")
    snap.paused_seconds = time.monotonic() - t0 if pause and running else 0.0
    if recording and record_log is not None:
        t1 = time.monotonic()
        try:
            time.sleep(record)
        except BaseException as e:  # SIGINT/SIGTERM: keep the snapshot and what was recorded
            snap.stopped_by = e
        finally:
            _set_recording(qmp, record_log, False)
        recorded = time.monotonic() - t1
        snap.events.extend(_recorded(snap, record_log, profile, recorded))
        if snap.stopped_by is not None:
            record = recorded
        window = snap.header.window or TraceWindow("mid", "cut")
        snap.header = dataclasses.replace(
            snap.header,
            # the recording sees the num_pages/actual accesses QEMU logs (get/set_config trace
            # lines; never poison_val) and every host action from then on
            window=dataclasses.replace(window, captured=(*SNAPSHOT_SEES, "config-actual", "host")),
            source=dataclasses.replace(
                snap.header.source, provenance=f"{snap.header.source.provenance}; then "
                f"{record:g} s of QEMU trace events (trace-event-set-state, HMP logfile "
                f"{record_log})"))
    return snap


#: what a recording switches on (and off again): the events the qemu-log importer reads
RECORD_EVENTS = ("virtio_balloon_*", "virtqueue_pop", "virtqueue_fill", "virtio_queue_notify",
                 "virtio_set_status")


def _set_recording(qmp: QmpClient, log: Path, on: bool) -> None:
    if on:
        qmp.execute("human-monitor-command", {"command-line": f"logfile {log}"})
    for name in RECORD_EVENTS:
        qmp.execute("trace-event-set-state", {"name": name, "enable": on})


def _recorded(snap: Snapshot, log: Path, profile: str, seconds: float) -> list[Event]:
    from ..trace.import_log import import_qemu_log

    h = snap.header
    # an idle guest logs nothing: an empty recording is a valid (quiet) window, not an error
    _, events = import_qemu_log(log, profile=profile, offered=h.features_offered,
                                negotiated=h.features_negotiated, endian=h.virtio_endian,
                                quiet_ok=True)
    recorded = list(events)
    out: list[Event] = [HostEvent("other", note=(
        f"QEMU trace events recorded from here for {seconds:.3g} s ({log.name})"
        + ("" if recorded else ": none logged (a quiet device)")))]
    out.extend(recorded)
    return out


def _read(qmp: QmpClient, path: str, profile: str, budget: int, tmp: Path,
          stopped: bool, command: str | None) -> Snapshot:
    st = qmp.execute("x-query-virtio-status", {"path": path})
    negotiated = features_from_qmp(st["guest-features"])
    host = features_from_qmp(st["host-features"])
    # the driver's negotiation says which interface it uses; before any (status 0, nothing
    # negotiated) a device offering VERSION_1 is shown as its modern interface sees it, and the
    # provenance says so (QA: it was the legacy 32-bit view, without VERSION_1)
    unnegotiated = negotiated == 0
    modern = bool((host if unnegotiated else negotiated) >> VERSION_1_BIT & 1)
    offered = offered_by_transport(host, "modern" if modern else "legacy")
    endian = _endian(st, negotiated)
    regions = ram_regions(qmp)
    mem = PmemsaveMemory(qmp, regions, tmp, budget)
    statuses = [
        qmp.execute("x-query-virtio-queue-status", {"path": path, "queue": q})
        for q in range(int(st["num-vqs"]))
    ]
    header = TraceHeader.for_features(
        profile, offered, negotiated, index_model="offered", virtio_endian=endian,
        memory=tuple((g, n) for g, n, _ in regions),
        # a window into the device's life: not from reset, ends with buffers in flight; what
        # QMP + memory reads see (config space is not read: num_pages/actual unknown)
        window=TraceWindow("mid", "cut", resource.getpagesize(), SNAPSHOT_SEES),
        source=TraceSource(
            command=command,
            provenance=(
                f"{qmp.greeting.get('QMP', {}).get('version', {}).get('package', '').strip()} "
                f"QEMU {_version(qmp)}; vbproto capture attach: QMP x-query-virtio-queue-status "
                f"+ pmemsave of rings and buffers, device {path}, "
                + ("VM paused while read" if stopped else "VM running while read (not atomic)")
                + ("; no driver had negotiated features: offered is the "
                   f"{'modern' if modern else 'legacy'} interface's view" if unnegotiated
                   else "")
            ).strip(),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        ),
    )
    events: list[Event] = [FeaturesEvent(offered, negotiated, True),
                           StatusEvent(status_byte(st["status"]))]
    elements: dict[int, list[dict[str, Any]]] = {}
    for qs in statuses:
        q = int(qs["queue-index"])
        role = header.role_of(q)
        if role is None or int(qs["vring-desc"]) == 0:
            continue
        events.extend(_queue_events(mem, qs, role, q, endian, header))
        raw_idx = mem.read(int(qs["vring-avail"]) + 2, 2)
        avail_idx = int.from_bytes(raw_idx, "little" if endian == "le" else "big")
        elements[q] = _elements(qmp, path, qs, avail_idx)
    return Snapshot(header, events, path, statuses, elements, status_byte(st["status"]), 0.0,
                    mem.bytes_read, mem.reads, regions)


def _queue_events(mem: PmemsaveMemory, qs: dict[str, Any], role: QueueRole, q: int,
                  endian: str, header: TraceHeader) -> Iterator[Event]:
    num = int(qs["vring-num"])
    used_idx = int(qs["used-idx"])
    # read each ring whole once (the walker's small reads then hit the cache)
    desc, avail, used = int(qs["vring-desc"]), int(qs["vring-avail"]), int(qs["vring-used"])
    mem.read(desc, 16 * num)
    mem.read(avail, 6 + 2 * num)
    mem.read(used, 6 + 8 * num)
    # chains QEMU popped but has not returned (a stats buffer it holds) start at used-idx: the
    # balloon returns buffers in order
    yield from split_ring_events(
        mem, desc=desc, avail=avail, used=used, size=num, role=role, queue=q,
        little_endian=endian == "le", last_avail=used_idx,
        used_from=(used_idx - min(num, used_idx)) & 0xFFFF, header=header,
    )


def _elements(
    qmp: QmpClient, path: str, qs: dict[str, Any], avail_idx: int
) -> list[dict[str, Any]]:
    """QEMU's own reading of each chain between used-idx and the avail index."""
    out = []
    start = int(qs["used-idx"])
    n = (avail_idx - start) & 0xFFFF
    for k in range(min(n, int(qs["vring-num"]))):
        out.append(qmp.execute("x-query-virtio-queue-element", {
            "path": path, "queue": int(qs["queue-index"]), "index": (start + k) & 0xFFFF}))
    return out


def _version(qmp: QmpClient) -> str:
    v = qmp.greeting.get("QMP", {}).get("version", {}).get("qemu", {})
    return f"{v.get('major', '?')}.{v.get('minor', '?')}.{v.get('micro', '?')}"


def write_snapshot(snap: Snapshot, output: str | os.PathLike[str]) -> int:
    with TraceWriter(output, snap.header) as w:
        for ev in snap.events:
            w.write(ev)
    return len(snap.events)


__all__ = [
    "PmemsaveMemory",
    "Snapshot",
    "connect_qmp",
    "find_balloon",
    "ram_regions",
    "snapshot",
    "write_snapshot",
]
