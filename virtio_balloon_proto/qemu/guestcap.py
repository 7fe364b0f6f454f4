"""Real guests beyond x86 Linux 6.1 (issue 14 item 4): one scenario runner for every capture
committed under ``conformance/real-guests/``.

A scenario boots a Debian kernel + busybox initramfs (``tools/build_guest.py``) under KVM or
TCG, on x86 (virtio-pci) or s390x (virtio-ccw, ``qemu-system-s390x`` from an unpacked
qemu-system-misc), and records QEMU's trace events as :func:`capture.capture_guest` does.  On
top of that:

* **stats bytes**: with ``stats_interval`` QEMU polls the guest's statistics; each time the
  driver hands QEMU a filled stats buffer, the VM is paused and the chain QEMU holds is read
  through QMP + ``pmemsave`` (qemu/attach.py): its descriptors and bytes replace the trace
  log's ``null`` for that buffer.
* **reporting addresses**: QEMU discards each reported range with ``ram_block_discard_range``
  (traced: RAM block name, host address, length).  The inflate lines pair a guest address
  with its host address (``handle_output gpa`` then the 4 KiB discard of that page), which
  gives the RAM block's host base; each reporting buffer's discard lines then give its
  descriptors' guest addresses and lengths, in chain order.  QEMU skips the discard when the
  driver set a non-zero poison value: those buffers stay ``null``.
* **hinting**: a migration to ``exec:cat >/dev/null`` started over QMP makes QEMU ask the
  guest for free page hints (``free-page-hint=on``).
* **memory pressure**: ``vbproto.eat=DELAY,MIB`` on the kernel command line makes the guest
  fill and free RAM (deflate-on-oom; freed pages for reporting).
"""

from __future__ import annotations

import itertools
import re
import resource
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..errors import PeerError, UsageError
from ..profiles import SPEC, QueueRole
from ..trace import (
    AvailEvent,
    Event,
    HostEvent,
    TraceHeader,
    TraceSource,
    TraceWindow,
    TraceWriter,
)
from .attach import PmemsaveMemory, ram_regions
from .capture import (
    GUEST_TRACE_EVENTS,
    _events,
    _wait,
    features_from_qmp,
    offered_by_transport,
    wait_driver_ok,
)
from .memory import parse_size
from .process import QemuOptions, QemuProcess
from .tracelog import TraceLog

#: TCG is slow enough that the 6.12 kernel's IO-APIC timer check fails ("IO-APIC + timer
#: doesn't work!" panic); 6.1 passes it
_TCG_APPEND = "no_timer_check"
EXTRA_EVENTS = ("ram_block_discard_range", "virtqueue_flush")
_DISCARD = re.compile(r"ram_block_discard_range (\S+)@(0x[0-9a-f]+) \+ (0x[0-9a-f]+)")
_HANDLE = re.compile(r"virtio_balloon_handle_output section name: (\S+) gpa: (0x[0-9a-f]+)")
_POP = re.compile(r"virtqueue_pop vq (0x[0-9a-f]+) elem (0x[0-9a-f]+) in_num (\d+)")


@dataclass(frozen=True)
class Machine:
    """How one guest architecture runs under QEMU."""

    arch: str = "x86_64"
    binary: str = "qemu-system-x86_64"
    machine: str = "q35"
    device_type: str = "virtio-balloon-pci"
    console: str = "ttyS0"
    data_dirs: tuple[Path, ...] = ()

    @classmethod
    def s390x(cls, binary: str, data_dir: Path) -> Machine:
        return cls("s390x", binary, "s390-ccw-virtio", "virtio-balloon-ccw", "ttysclp0",
                   (data_dir, Path("/usr/share/qemu")))


@dataclass
class Scenario:
    name: str
    memory: str = "512M"
    balloon_to: str = "384M"
    device: dict[str, bool] = field(default_factory=dict)
    device_values: tuple[tuple[str, str], ...] = ()
    append: str = ""
    stats_interval: int | None = None
    stats_snapshots: int = 3
    #: wait for the guest's vbproto.eat run (console marks) before deflating
    eat: bool = False
    migrate: bool = False


@dataclass
class ScenarioResult:
    header: TraceHeader
    events: list[Event]
    timings: dict[str, float]
    console: str
    command: list[str]
    stats_chains: dict[int, AvailEvent]
    reports: dict[int, list[tuple[int, int]]]


def report_extents(log_path: Path, vq_of_queue: dict[int, int], queue: int
                   ) -> dict[int, list[tuple[int, int]]]:
    """pop line -> [(gpa, len)] of the reporting buffers QEMU discarded (module docstring).
    The RAM block's host base comes from any inflate page (gpa, then its 4 KiB discard); every
    inflate page must agree on it."""
    base: dict[str, int] = {}
    pending: list[tuple[int, str, int, int]] = []  # (pop line, block, hva, len)
    out: dict[int, list[tuple[int, int]]] = {}
    pending_gpa: int | None = None
    current: int | None = None
    target_vq = vq_of_queue.get(queue)
    with open(log_path, errors="replace") as f:
        for n, line in enumerate(f, 1):
            m = _HANDLE.search(line)
            if m:
                pending_gpa = int(m.group(2), 16)
                continue
            m = _POP.search(line)
            if m:
                current = n if int(m.group(1), 16) == target_vq else None
                pending_gpa = None
                if current is not None:
                    out[current] = []
                continue
            m = _DISCARD.search(line)
            if not m:
                continue
            name, hva, length = m.group(1), int(m.group(2), 16), int(m.group(3), 16)
            if pending_gpa is not None and length == 4096:
                if base.setdefault(name, hva - pending_gpa) != hva - pending_gpa:
                    raise PeerError(f"{log_path}:{n}: {name} host base moved")
                pending_gpa = None
            elif current is not None:
                pending.append((current, name, hva, length))
    for pop_line, block, host, size in pending:
        if block not in base:
            raise PeerError(f"{log_path}: no inflate gave the host address of RAM block {block}")
        out[pop_line].append((host - base[block], size))
    return out


def _stats_chain(proc: QemuProcess, path: str, queue: int, regions: list[tuple[int, int, str]],
                 endian: str) -> AvailEvent | None:
    """Pause, read the stats chain QEMU holds (avail entry used-idx), resume."""
    from ..trace.import_ring import split_ring_events

    proc.qmp.execute("stop")
    try:
        qs = proc.qmp.execute("x-query-virtio-queue-status", {"path": path, "queue": queue})
        with tempfile.TemporaryDirectory(prefix="vbproto-stats-") as tmp:
            mem = PmemsaveMemory(proc.qmp, regions, Path(tmp))
            used_idx = int(qs["used-idx"])
            evs = list(split_ring_events(
                mem, desc=int(qs["vring-desc"]), avail=int(qs["vring-avail"]),
                used=int(qs["vring-used"]), size=int(qs["vring-num"]), role=QueueRole.STATS,
                queue=queue, little_endian=endian == "le", last_avail=used_idx,
                used_from=used_idx))
    finally:
        proc.qmp.execute("cont")
    held = [e for e in evs if isinstance(e, AvailEvent)]
    return held[0] if held else None


def run_scenario(
    sc: Scenario,
    kernel: Path,
    initrd: Path,
    *,
    machine: Machine | None = None,
    accel: str = "kvm",
    output: Path | None = None,
    workdir: Path | None = None,
    provenance: str = "",
    boot_timeout: float = 300.0,
    step_timeout: float = 180.0,
) -> ScenarioResult:
    mach = machine or Machine()
    ram = parse_size(sc.memory)
    target = parse_size(sc.balloon_to)
    if not 0 < target <= ram:
        raise UsageError(f"balloon target {target} must be in (0, {ram}]", field="balloon_to")
    work = workdir or Path(tempfile.mkdtemp(prefix="vbproto-guest-"))
    work.mkdir(parents=True, exist_ok=True)
    console = work / "guest-console.log"
    extra: tuple[str, ...] = ("-no-reboot",)
    if mach.arch == "s390x":
        extra += ("-chardev", f"file,id=con0,path={console}", "-device",
                  "sclpconsole,chardev=con0")
    values = sc.device_values
    if accel == "kvm":
        extra += ("-cpu", "kvm64")
    opts = QemuOptions(
        memory=ram,
        machine=mach.machine,
        device=dict(sc.device),
        device_type=mach.device_type,
        device_values=values,
        data_dirs=mach.data_dirs,
        accel=accel,
        running=True,
        kernel=kernel,
        initrd=initrd,
        append=" ".join(filter(None, (
            f"console={mach.console} panic=-1 quiet",
            _TCG_APPEND if accel == "tcg" and mach.arch == "x86_64" else "", sc.append))),
        serial=console if mach.arch != "s390x" else None,
        trace_events=GUEST_TRACE_EVENTS + EXTRA_EVENTS,
        extra_args=extra,
    )
    proc = QemuProcess(opts, workdir=work, timeout=30.0, binary=mach.binary)
    log = TraceLog(proc.trace_log)
    timings: dict[str, float] = {}
    host: list[tuple[int, HostEvent]] = []
    stats_chains: dict[int, AvailEvent] = {}
    t_all = time.monotonic()
    try:
        proc.start()
        timings["qemu_start"] = proc.start_seconds
        timings["boot_to_driver"] = wait_driver_ok(log, boot_timeout, proc)
        backend = _backend_path(proc)
        st = proc.qmp.execute("x-query-virtio-status", {"path": backend})
        negotiated = features_from_qmp(st["guest-features"])
        modern = bool(negotiated >> 32 & 1)
        offered = offered_by_transport(features_from_qmp(st["host-features"]),
                                       "modern" if modern else "legacy")
        endian = "le" if modern or st.get("device-endian") != "big" else "be"
        roles = {i: r for r, i in SPEC.queue_index(offered, negotiated, "offered").items()}
        regions = ram_regions(proc.qmp)
        stats_q = next((i for i, r in roles.items() if r is QueueRole.STATS), None)
        cfg = _config_space(proc, work)
        if cfg is not None:
            host.append((log.update().lines_read, HostEvent("other", detail=cfg, note=(
                "the device's config space as the host read it (QMP pmemsave of the "
                "virtio-pci device-cfg region), not a driver access"))))

        def stats_pops() -> list[int]:
            log.update()
            return [b.line for b in log.buffers if b.queue == stats_q]

        def grab_stats(what: str) -> None:
            if stats_q is None or sc.stats_interval is None:
                return
            seen = len(stats_pops())
            _wait(f"a stats buffer ({what})", lambda: len(stats_pops()) > seen,
                  step_timeout, proc)
            time.sleep(0.2)
            chain = _stats_chain(proc, backend, stats_q, regions, endian)
            lines = stats_pops()
            if chain is not None and lines:
                stats_chains[lines[-1]] = chain

        if sc.stats_interval is not None:
            host.append((log.update().lines_read, HostEvent(
                "other", note=f"QMP qom-set guest-stats-polling-interval={sc.stats_interval}")))
            proc.qmp.execute("qom-set", {"path": backend.removesuffix("/virtio-backend"),
                                         "property": "guest-stats-polling-interval",
                                         "value": sc.stats_interval})
            t0 = time.monotonic()
            for k in range(sc.stats_snapshots):
                grab_stats(f"poll {k}")
            timings["stats_polls"] = time.monotonic() - t0

        def balloon(value: int, note: str) -> float:
            host.append((log.update().lines_read,
                         HostEvent("set-target", num_pages=(ram - value) // 4096, note=note)))
            proc.qmp.execute("balloon", {"value": value})
            return _wait(f"query-balloon to reach {value >> 20} MiB",
                         lambda: int(proc.qmp.execute("query-balloon")["actual"]) == value,
                         step_timeout, proc)

        timings["inflate"] = balloon(target, f"QMP balloon value={target}")
        grab_stats("after inflate")
        if sc.eat:
            t0 = time.monotonic()
            _wait("the guest's memory eater (VBPROTO-EAT-FREED)",
                  lambda: "VBPROTO-EAT-FREED" in _read(console), step_timeout, proc)
            time.sleep(4)  # page reporting runs ~2 s after pages are freed
            timings["eat"] = time.monotonic() - t0
        if sc.migrate:
            t0 = time.monotonic()
            host.append((log.update().lines_read, HostEvent(
                "other", note="QMP migrate uri=exec:cat >/dev/null (free page hinting)")))
            proc.qmp.execute("migrate", {"uri": "exec:cat >/dev/null"})
            _wait("the migration to complete",
                  lambda: proc.qmp.execute("query-migrate").get("status") in
                  ("completed", "failed"), step_timeout, proc)
            mig = proc.qmp.execute("query-migrate")
            if mig.get("status") != "completed":
                raise PeerError(f"migration ended {mig.get('status')}: {mig}")
            proc.qmp.execute("cont")
            timings["migrate"] = time.monotonic() - t0
            cfg = _config_space(proc, work)
            if cfg is not None:
                host.append((log.update().lines_read, HostEvent("other", detail=cfg, note=(
                    "config space after the migration, as the host read it (QMP pmemsave)"))))
        timings["deflate"] = balloon(ram, f"QMP balloon value={ram}")
        grab_stats("after deflate")
        text = _read(console)
        proc.quit_and_wait()
        log.update()
    finally:
        command = list(proc.command)
        proc.close()
    timings["total"] = time.monotonic() - t_all
    inferred = _map_queues(log)
    rep_q = next((i for i, r in roles.items() if r is QueueRole.REPORTING), None)
    reports = ({} if rep_q is None else
               report_extents(proc.trace_log, {i: vq for vq, i in log.queues.items()}, rep_q))
    header = TraceHeader.for_features(
        "spec", offered, negotiated, index_model="offered",
        virtio_endian=endian,
        # the guest's unsigned long: s390x is big-endian whatever the transport
        bitmap_word_order="be" if mach.arch == "s390x" else "le",
        # QEMU started with the capture: the driver's reset is in it.  A stats buffer is
        # always held by QEMU at the end (in flight).  Config reads are not traced as events;
        # the driver's writes of actual are (virtio_balloon_set_config), never of poison_val
        window=TraceWindow("reset", "cut", resource.getpagesize(),
                           ("status", "features", "config-actual", "host", "avail", "used",
                            "driver-bytes")),
        memory=tuple((g, n) for g, n, _ in regions),
        source=TraceSource(
            command=shlex.join(command),
            provenance=provenance + ("; queue of each vq pointer from pointer order (KVM "
                                     "ioeventfd notifies are not traced), evenly spaced"
                                     if inferred else ""),
            created=datetime.now(UTC).isoformat(timespec="seconds")),
    )
    events = _events(log, roles, offered, negotiated, host, endian=endian,
                     chains=stats_chains, reports=reports,
                     stats_polling=sc.stats_interval is not None)
    if output is not None:
        with TraceWriter(output, header) as w:
            for ev in events:
                w.write(ev)
    return ScenarioResult(header, events, timings, text, command, stats_chains, reports)


def _map_queues(log: TraceLog) -> bool:
    """vq pointer -> queue index for pointers no ``virtio_queue_notify`` line named (KVM's
    ioeventfd notifies are not traced): QEMU allocates the VirtQueue array in one block, so
    with one stride the pointers in order are queues 0, 1, ...; checked, never guessed."""
    ptrs = sorted({b.vq for b in log.buffers} | set(log.queues))
    if all(p in log.queues for p in ptrs):
        return False
    steps = {b - a for a, b in itertools.pairwise(ptrs)}
    if len(steps) > 1:
        raise PeerError(f"vq pointers {[hex(p) for p in ptrs]} are not evenly spaced: the "
                        "queue of a buffer cannot be told without virtio_queue_notify lines")
    for k, p in enumerate(ptrs):
        if p in log.queues and log.queues[p] != k:
            raise PeerError(f"vq {p:#x} is queue {log.queues[p]} by notify, {k} by order")
        log.queues[p] = k
    for b in log.buffers:
        b.queue = log.queues.get(b.vq)
    return True


def _config_space(proc: QemuProcess, work: Path) -> str | None:
    """num_pages, actual, free_page_hint_cmd_id, poison_val (le32 each) read through the
    memory API from the virtio-pci device-cfg BAR region (virtio_balloon_get_config has no
    side effect); None where the transport maps no such region (virtio-ccw)."""
    text = str(proc.qmp.execute("human-monitor-command", {"command-line": "info mtree -f"}))
    m = re.search(r"^\s*([0-9a-f]+)-[0-9a-f]+ \(prio -?\d+, i/o\): "
                  r"virtio-pci-device-virtio-balloon\s*$", text, re.M)
    if m is None:
        return None
    out = work / "config.bin"
    proc.qmp.execute("pmemsave", {"val": int(m.group(1), 16), "size": 16, "filename": str(out)})
    raw = out.read_bytes()
    out.unlink()
    names = ("num_pages", "actual", "free_page_hint_cmd_id", "poison_val")
    return "config " + " ".join(
        f"{n}={int.from_bytes(raw[4 * k:4 * k + 4], 'little'):#x}" for k, n in enumerate(names))


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


def _backend_path(proc: QemuProcess) -> str:
    devs = proc.qmp.execute("x-query-virtio")
    for d in devs:
        if d.get("name") == "virtio-balloon":
            return str(d["path"])
    raise PeerError("no virtio-balloon in x-query-virtio")


__all__ = ["Machine", "Scenario", "ScenarioResult", "report_extents", "run_scenario"]
