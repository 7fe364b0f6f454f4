"""Capture a real Linux guest's balloon traffic from QEMU's trace log.

The guest (a Debian kernel and a busybox initramfs from ``tools/build_guest.py``) boots under
TCG with the balloon device; QMP ``balloon`` moves the target down and back up while QEMU's
trace events record every buffer the driver made available and every PFN the device processed
(hw/virtio/virtio-balloon.c logs one ``handle_output`` or ``bad_addr`` line per 32-bit word it
reads).  The trace log is then rewritten as a ``vbproto-trace/1`` file (docs/trace-format.md):
the PFN array of each inflate/deflate buffer is rebuilt word for word from those lines.

What a QEMU trace cannot tell (and so stays ``null`` in the capture): descriptor addresses and
head ids, the bytes of stats buffers, trailing bytes of a buffer whose length is not a multiple
of 4.  As an independent check one ring snapshot is taken after the inflate: the VM is stopped,
``x-query-virtio-queue-status`` gives the inflate ring's addresses, and qtest reads the last used
chain's descriptor and the driver's PFN array from guest RAM.
"""

from __future__ import annotations

import dataclasses
import shlex
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PeerError, UsageError
from ..profiles import SPEC, TRANSPORT_FEATURES, QueueRole
from ..trace import (
    AvailEvent,
    ConfigEvent,
    Event,
    FeaturesEvent,
    HostEvent,
    StatusEvent,
    TraceDescriptor,
    TraceHeader,
    TraceSource,
    TraceWriter,
    UsedEvent,
)
from .device import BACKEND_PATH
from .memory import QtestMemory, parse_size
from .process import QEMU_BINARY, QemuOptions, QemuProcess, find_qemu
from .tracelog import TraceBuffer, TraceLog

GUEST_TRACE_EVENTS = (
    "virtio_balloon_*",
    "virtqueue_pop",
    "virtqueue_fill",
    "virtio_set_status",
    "virtio_queue_notify",
)
DRIVER_OK = 4
APPEND = "console=ttyS0 panic=-1 quiet"

#: QMP's feature names (x-query-virtio-status) -> bit
_QMP_FEATURE_ALIASES = {
    "REPORTING": "PAGE_REPORTING",
    "INDIRECT_DESC": "RING_INDIRECT_DESC",
    "EVENT_IDX": "RING_EVENT_IDX",
    "IOMMU_PLATFORM": "ACCESS_PLATFORM",
}


def features_from_qmp(block: dict[str, Any]) -> int:
    """A ``host-features``/``guest-features`` object of x-query-virtio-status -> feature word."""
    word = 0
    for key in ("dev-features", "transports"):
        for text in block.get(key, []):
            name = str(text).split(":", 1)[0]
            for prefix in ("VIRTIO_BALLOON_F_", "VIRTIO_RING_F_", "VIRTIO_F_"):
                name = name.removeprefix(prefix)
            name = _QMP_FEATURE_ALIASES.get(name, name)
            if name in SPEC.features:
                word |= 1 << SPEC.features[name]
            elif name in TRANSPORT_FEATURES:
                word |= 1 << TRANSPORT_FEATURES[name]
            else:
                raise PeerError(
                    f"unknown feature name {text!r} from QMP", where="x-query-virtio-status"
                )
    unknown = block.get("unknown-dev-features", 0)
    if isinstance(unknown, int):
        word |= unknown
    return word


#: feature bits QEMU's modern virtio-pci interface never shows (legacy-only: NOTIFY_ON_EMPTY,
#: ANY_LAYOUT, BAD_FEATURE), although x-query-virtio-status lists them in host-features
LEGACY_ONLY_BITS = (1 << 24) | (1 << 27) | (1 << 30)


def offered_by_transport(host_features: int, transport: str) -> int:
    """What the driver saw offered: QMP's host-features as the transport's register shows it
    (checked against real register reads in tests/test_qemu_capture.py)."""
    if transport == "modern":
        return host_features & ~LEGACY_ONLY_BITS
    return host_features & 0xFFFFFFFF  # the legacy register is 32 bits wide


@dataclass
class GuestCapture:
    header: TraceHeader
    events: list[Event]
    buffers: list[TraceBuffer]
    roles: dict[int, QueueRole]
    timings: dict[str, float] = field(default_factory=dict)
    ring_snapshot: dict[str, Any] | None = None
    console: str = ""
    command: list[str] = field(default_factory=list)

    def pfn_lists(self) -> list[dict[str, Any]]:
        """``[{"role": "inflate"|"deflate", "queue": n, "pfns": [...]}]`` per buffer."""
        out = []
        for b in self.buffers:
            role = self.roles.get(b.queue) if b.queue is not None else None
            if role in (QueueRole.INFLATE, QueueRole.DEFLATE):
                assert role is not None
                out.append({"role": role.value, "queue": b.queue, "pfns": list(b.pfns)})
        return out


def _wait(what: str, cond: Callable[[], bool], timeout: float, proc: QemuProcess) -> float:
    t0 = time.monotonic()
    while not cond():
        if not proc.alive():
            raise PeerError(f"QEMU exited while waiting for {what}{proc.diagnose()}")
        if time.monotonic() - t0 > timeout:
            raise PeerError(f"timed out after {timeout:g} s waiting for {what}{proc.diagnose()}")
        time.sleep(0.02)
    return time.monotonic() - t0


def wait_driver_ok(log: TraceLog, timeout: float, proc: QemuProcess) -> float:
    """Seconds until the guest's balloon driver set DRIVER_OK (VIRTIO 1.2 3.1.1 step 8), seen
    in QEMU's trace log; raises PeerError when QEMU exits or ``timeout`` passes first."""
    return _wait("the guest's balloon driver (DRIVER_OK)",
                 lambda: any(v & DRIVER_OK for v in log.update().statuses), timeout, proc)


def qemu_version() -> str:
    try:
        out = subprocess.run(
            [find_qemu(), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0].strip() if out else "unknown"


def capture_guest(
    kernel: Path,
    initrd: Path,
    *,
    memory: str | int = "512M",
    balloon_to: str | int = "384M",
    transport: str = "modern",
    device: dict[str, bool] | None = None,
    output: Path | None = None,
    workdir: Path | None = None,
    boot_timeout: float = 240.0,
    step_timeout: float = 120.0,
    provenance: str | None = None,
) -> GuestCapture:
    """Boot, inflate to ``balloon_to``, snapshot, deflate back, and rebuild the traffic."""
    for p in (kernel, initrd):
        if not Path(p).is_file():
            raise UsageError(f"{p} does not exist (build it with tools/build_guest.py)")
    ram = parse_size(memory)
    target = parse_size(balloon_to)
    if not 0 < target <= ram:
        raise UsageError(f"balloon target {target} must be in (0, {ram}]", field="balloon_to")
    props = dict(device or {})
    if transport == "legacy":
        props.setdefault("disable-modern", True)
    elif transport != "modern":
        raise UsageError(f"unknown transport {transport!r} (modern or legacy)")
    work = workdir
    serial = None if work is None else work / "guest-console.log"
    opts = QemuOptions(
        memory=ram,
        device=props,
        running=True,
        kernel=Path(kernel),
        initrd=Path(initrd),
        append=APPEND,
        trace_events=GUEST_TRACE_EVENTS,
    )
    proc = QemuProcess(opts, workdir=work, timeout=30.0)
    if serial is None:
        serial = proc.workdir / "guest-console.log"
    proc.options = dataclasses.replace(opts, serial=serial)
    log = TraceLog(proc.trace_log)
    timings: dict[str, float] = {}
    host_events: list[tuple[int, HostEvent]] = []
    snapshot: dict[str, Any] | None = None
    t_all = time.monotonic()
    try:
        proc.start()
        timings["qemu_start"] = proc.start_seconds
        timings["boot_to_driver"] = wait_driver_ok(log, boot_timeout, proc)
        st = proc.qmp.execute("x-query-virtio-status", {"path": BACKEND_PATH})
        offered = offered_by_transport(features_from_qmp(st["host-features"]), transport)
        negotiated = features_from_qmp(st["guest-features"])

        def balloon(value: int, action_note: str) -> float:
            pages = (ram - value) // 4096
            host_events.append(
                (
                    log.update().lines_read,
                    HostEvent("set-target", num_pages=pages, note=action_note),
                )
            )
            proc.qmp.execute("balloon", {"value": value})
            return _wait(
                f"query-balloon to reach {value >> 20} MiB",
                lambda: int(proc.qmp.execute("query-balloon")["actual"]) == value,
                step_timeout,
                proc,
            )

        timings["inflate"] = balloon(target, f"QMP balloon value={target}")
        snapshot = _ring_snapshot(proc, ram)
        timings["deflate"] = balloon(ram, f"QMP balloon value={ram}")
        console = serial.read_text(errors="replace") if serial.exists() else ""
        proc.quit_and_wait()
        log.update()
    finally:
        command = list(proc.command)
        proc.close()
    timings["total"] = time.monotonic() - t_all

    roles = {i: r for r, i in SPEC.queue_index(offered, negotiated, "offered").items()}
    header = TraceHeader.for_features(
        "spec",
        offered,
        negotiated,
        index_model="offered",
        source=TraceSource(
            command=shlex.join(command),
            provenance=provenance
            or f"{qemu_version()}; Linux guest captured through QEMU trace events",
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        ),
    )
    events = _events(log, roles, offered, negotiated, host_events)
    cap = GuestCapture(header, events, log.buffers, roles, timings, snapshot, console, command)
    if output is not None:
        with TraceWriter(output, header) as w:
            for ev in events:
                w.write(ev)
    return cap


def _events(
    log: TraceLog,
    roles: dict[int, QueueRole],
    offered: int,
    negotiated: int,
    host: list[tuple[int, HostEvent]],
    *,
    endian: str = "le",
    chains: dict[int, AvailEvent] | None = None,
    stats_polling: bool = False,
    reports: dict[int, list[tuple[int, int]]] | None = None,
) -> list[Event]:
    """Merge trace-log records and host actions in log order.

    ``chains``: pop line -> the chain read from guest RAM for that buffer (descriptors and
    bytes, qemu/guestcap.py); ``reports``: pop line -> (gpa, len) of a reporting buffer's
    descriptors from QEMU's discard lines.  PFN arrays are written in ``endian`` order."""
    chains = chains or {}
    reports = reports or {}
    # negotiation happened just before the status write that sets FEATURES_OK (legacy drivers:
    # DRIVER_OK, they never set FEATURES_OK)
    feat_bit = 8 if negotiated >> 32 & 1 else DRIVER_OK
    feat_line = next((ln for ln, v in log.status_lines if v & feat_bit), 0)
    timed: list[tuple[int, int, Event]] = [(feat_line, 0, FeaturesEvent(offered, negotiated, True))]
    if stats_polling:
        # QEMU returns the stats buffer it holds when its polling timer fires: that is the
        # host's stats request, logged as the buffer's used element
        for b in log.buffers:
            if (b.queue is not None and roles.get(b.queue) is QueueRole.STATS
                    and b.used_line is not None):
                timed.append((b.used_line, 2, HostEvent(
                    "stats-request", note="QEMU's guest-stats-polling-interval timer")))
    for line, value in log.status_lines:
        timed.append((line, 1, StatusEvent(value)))
    for line, ev in host:
        # the action happened after the lines already read: sort it just after them
        timed.append((line, 2, ev))
    for line, actual in log.set_config_lines:
        # virtio_balloon_set_config fires on the driver's config write (Linux:
        # update_balloon_size() -> virtio_cwrite_le(actual)); config space is LE in every mode
        timed.append((line, 3, ConfigEvent(True, 4, (actual & 0xFFFFFFFF).to_bytes(4, "little"),
                                           note="actual, from virtio_balloon_set_config")))
    for b in log.buffers:
        if b.queue is None or b.queue not in roles:
            continue
        role = roles[b.queue]
        if b.line in chains:
            c = chains[b.line]
            timed.append((b.line, 3, dataclasses.replace(
                c, note=f"descriptors and bytes read from guest RAM (QMP pmemsave) while QEMU "
                        f"held the buffer popped at trace line {b.line}")))
            if b.used_len is not None and b.used_line is not None:
                timed.append((b.used_line, 3, UsedEvent(role, b.queue, b.used_len, id=c.id)))
            continue
        if b.line in reports and len(reports[b.line]) == b.in_num and b.in_num:
            ext = reports[b.line]
            descs = tuple(
                TraceDescriptor(gpa, n, 2 | (1 if k + 1 < len(ext) else 0), None, None, None,
                                None)
                for k, (gpa, n) in enumerate(ext))
            timed.append((b.line, 3, AvailEvent(
                role, b.queue, (), tuple(n for _, n in ext), descriptors=descs,
                note=f"addresses from QEMU's ram_block_discard_range lines after trace line "
                     f"{b.line} (host address - RAM block base); flags inferred (WRITE, NEXT "
                     "but the last)")))
            if b.used_len is not None and b.used_line is not None:
                timed.append((b.used_line, 3, UsedEvent(role, b.queue, b.used_len)))
            continue
        if role in (QueueRole.INFLATE, QueueRole.DEFLATE):
            words = np.asarray(b.pfns, dtype=np.int64).astype("<u4" if endian == "le" else ">u4")
            out: tuple[bytes | None, ...] = (words.tobytes(),)
            note = f"PFNs rebuilt from QEMU trace lines {b.line}+; descriptors not traced"
            if b.out_num != 1:
                out = (None,) * b.out_num
                note = f"{b.out_num} out-buffers; split points not traced"
        else:
            out = (None,) * b.out_num
            note = "buffer contents not traced"
        timed.append((b.line, 3, AvailEvent(role, b.queue, out, (None,) * b.in_num, note=note)))
        if b.used_len is not None and b.used_line is not None:
            timed.append((b.used_line, 3, UsedEvent(role, b.queue, b.used_len)))
    timed.sort(key=lambda t: (t[0], t[1]))
    return [ev for _, _, ev in timed]


def _ring_snapshot(proc: QemuProcess, ram: int) -> dict[str, Any]:
    """Stop the VM, read the last used inflate chain's head descriptor and its bytes."""
    proc.qmp.execute("stop")
    try:
        qs = proc.qmp.execute("x-query-virtio-queue-status", {"path": BACKEND_PATH, "queue": 0})
        mem = QtestMemory(proc.qtest, ram)
        num = int(qs["vring-num"])
        used_idx = int(qs["used-idx"])
        if num == 0 or used_idx == 0:
            raise PeerError("inflate queue has no used entries to snapshot")
        slot = (used_idx - 1) % num
        elem_id, elem_len = struct.unpack("<II", mem.read(int(qs["vring-used"]) + 4 + 8 * slot, 8))
        if elem_id >= num:
            raise PeerError(f"used element id {elem_id} is not below the queue size {num}")
        addr, length, flags, nxt = struct.unpack(
            "<QIHH", mem.read(int(qs["vring-desc"]) + 16 * elem_id, 16)
        )
        data = mem.read(addr, length) if length <= 1 << 20 and mem.contains(addr, length) else b""
        return {
            "queue_status": qs,
            "used_id": elem_id,
            "used_len": elem_len,
            "desc": {"addr": addr, "len": length, "flags": flags, "next": nxt},
            "data": data,
        }
    finally:
        proc.qmp.execute("cont")


__all__ = ["QEMU_BINARY", "GuestCapture", "capture_guest", "features_from_qmp"]
