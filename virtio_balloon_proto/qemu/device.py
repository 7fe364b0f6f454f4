"""A driver-side session with QEMU's virtio-balloon device: :class:`QemuBalloon`.

Typical use::

    with QemuBalloon(transport="modern", device={"deflate-on-oom": True}) as b:
        b.negotiate()                       # offered & (balloon bits | VERSION_1)
        b.setup_queues()                    # every queue the device has, then DRIVER_OK
        b.fill_pages(0x8000, 16, 0xAA)
        used = b.exchange("inflate", [pfn_array(range(0x8000, 0x8010))])
        assert b.read_pages(0x8000, 16) == bytes(16 * 4096)   # QEMU discarded them

A 15 MiB window of guest RAM belongs to the session: rings in its first MiB, out-buffers in
the rest.  By default it is 1 MiB-16 MiB and tests put balloon pages above it; the conformance
adapter moves it above the RAM a recorded trace can name (``window_base``).

Under ``-accel tcg -S`` QEMU handles a notify synchronously (no ioeventfd without KVM), so the
used ring is final when the notify write returns.  With ``stats_clock=True`` the machine runs a
halting firmware under ``-icount`` so device timers (stats polling) fire; then :meth:`wait_used`
polls with a deadline.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..errors import PeerError, PeerStartError, UsageError
from ..profiles import SPEC, VERSION_1, QueueRole
from ..virtqueue.chains import UsedElem
from ..virtqueue.split_driver import SplitQueueDriver
from ..virtqueue.split_ring import compact_layout, legacy_layout
from .buffers import Posted, RawSegment, pfn_array, stats_buffer
from .extents import extents_from_trace, to_extents
from .firmware import write_halt_bios
from .machines import (
    DIMM_BASE,
    DIMM_SIZE,
    MMIO_TRANSPORTS,
    SPAPR_DIMM_SIZE,
    TRANSPORTS,
    machine_layout,
    open_pci,
)
from .memory import BumpAllocator, QtestMemory, parse_size
from .mmio import MmioTransport, find_mmio_device
from .pci import PciFunction, msix_enable
from .process import QEMU_BINARY, QemuOptions, QemuProcess
from .qmp import QmpError
from .tracelog import TraceLog
from .transport import QueueAddrs, Transport

RING_BASE = 0x100000
#: session window: rings in the first MiB, out-buffers in the remaining 14 MiB
WINDOW_SIZE = 15 << 20
RING_AREA = 1 << 20
#: --device qemu:arch=... -> default binary (x86_64: q35/microvm; ppc64: pseries, big-endian)
ARCHES = {"x86_64": QEMU_BINARY, "ppc64": "qemu-system-ppc64"}
PAGE = 4096
BALLOON_PATH = "/machine/peripheral/balloon0"
BACKEND_PATH = BALLOON_PATH + "/virtio-backend"
#: balloon-specific feature bits of the spec profile (0-5); transport bits are added per kind
BALLOON_BITS = (1 << 6) - 1


class QemuBalloon:
    """One QEMU process with its balloon driven from Python."""

    def __init__(
        self,
        *,
        transport: str = "modern",
        device: dict[str, bool] | None = None,
        memory: int | str = 256 << 20,
        stats_clock: bool = False,
        timeout: float = 10.0,
        workdir: Path | None = None,
        queue_size: int = 128,
        window_base: int = RING_BASE,
        window_dimm: bool = False,
        binary: str | None = None,
        arch: str = "x86_64",
        device_values: tuple[tuple[str, str], ...] = (),
        msix: bool | None = None,
        extra_args: tuple[str, ...] = (),
        ram_dimms: tuple[tuple[int, int], ...] = (),
    ) -> None:
        if transport not in TRANSPORTS:
            raise UsageError(f"unknown transport {transport!r} ({', '.join(TRANSPORTS)})")
        dev = dict(device or {})
        if transport == "legacy" and dev.get("disable-legacy"):
            raise UsageError("legacy transport with disable-legacy=on has no I/O BAR")
        if transport == "modern" and dev.get("disable-modern"):
            raise UsageError("modern transport with disable-modern=on has no modern BAR")
        self.kind = transport
        if arch not in ARCHES:
            raise UsageError(f"unknown arch {arch!r} ({', '.join(ARCHES)})")
        if arch == "ppc64" and transport not in ("modern", "legacy"):
            raise UsageError(f"pseries has virtio-pci only, not {transport!r}")
        self.arch = arch
        self.binary = binary or ARCHES[arch]
        #: pseries DIMMs come in 256 MiB blocks (QEMU's SPAPR_MEMORY_BLOCK_SIZE)
        self.dimm_size = SPAPR_DIMM_SIZE if arch == "ppc64" else DIMM_SIZE
        self.big_endian = False  # the guest's order (qtest 'endianness'), known after start
        self._device_values = device_values
        #: enable MSI-X when the function has it (None: if present, as Linux does)
        self.want_msix = msix
        #: queue index -> MSI-X vector the device accepted (empty without MSI-X)
        self.vectors: dict[int, int] = {}
        self.config_vector: int | None = None
        self.ram_size = parse_size(memory)
        self.stats_clock = stats_clock
        self.queue_size = queue_size
        self._workdir = workdir
        self._device = dev
        self._timeout = timeout
        self.proc: QemuProcess | None = None
        self.fn: PciFunction
        self.transport: Transport
        self.mem: QtestMemory
        self.trace_log: TraceLog
        self.offered = 0
        self.accepted = 0
        self.queues: dict[int, SplitQueueDriver] = {}
        self.window_dimm = window_dimm
        self.mmio = transport in MMIO_TRANSPORTS
        if window_dimm and self.mmio:
            # microvm has no memory hotplug: the window is 16 MiB of RAM above the case's
            window_base = (self.ram_size + (1 << 20) - 1) >> 20 << 20
        elif window_dimm:
            window_base = DIMM_BASE
        if window_base % 4096:
            raise UsageError(f"session window {window_base:#x} is not page aligned")
        self.window_base = window_base
        self.scratch_base = window_base + RING_AREA
        self.scratch_end = window_base + WINDOW_SIZE
        self._scratch = BumpAllocator(self.scratch_base, self.scratch_end)
        self.timings: dict[str, float] = {}
        self._extra_args = extra_args
        #: further guest RAM as pc-dimms at given addresses (q35 only): (gpa, size)
        self.ram_dimms = tuple(ram_dimms)
        if self.ram_dimms and (self.mmio or arch != "x86_64" or not window_dimm):
            raise UsageError("RAM beyond one region needs q35 with the window DIMM (x86_64)")

    # --- lifetime ------------------------------------------------------------------------
    def start(self) -> QemuBalloon:
        t0 = time.monotonic()
        lay = machine_layout(
            arch=self.arch,
            kind=self.kind,
            ram_size=self.ram_size,
            window_dimm=self.window_dimm,
            window_base=self.window_base,
            dimm_size=self.dimm_size,
            ram_dimms=self.ram_dimms,
        )
        opts = QemuOptions(
            memory=lay.memory,
            machine=lay.machine,
            device_type=lay.device_type,
            device=self._device,
            extra_args=lay.extra + self._extra_args,
            device_values=self._device_values,
        )
        proc = QemuProcess(opts, workdir=self._workdir, timeout=self._timeout, binary=self.binary)
        if self.stats_clock:
            bios = write_halt_bios(proc.workdir / "halt.bin", self.arch)
            proc.options = dataclasses.replace(opts, bios=bios, icount=True)
        self.proc = proc
        try:
            proc.start()
        except PeerStartError as e:
            if "unsupported machine type" not in e.message:
                raise
            # e.g. binary=<an x86 QEMU>,arch=ppc64: say which build the arch needs
            raise PeerStartError(
                f"QEMU binary {self.binary} is not a {self.arch} build: it has no machine "
                f"{lay.machine.split(',')[0]!r} (arch={self.arch} runs {ARCHES[self.arch]}); "
                f"{e.message}",
                where=e.where,
            ) from None
        self.timings["qemu_start"] = proc.start_seconds
        try:
            if self.mmio:
                self.transport = MmioTransport(proc.qtest, find_mmio_device(proc.qtest))
                if self.transport.kind != self.kind:
                    raise PeerError(f"asked for {self.kind}, QEMU made {self.transport.kind}")
            else:
                self.big_endian = proc.qtest.handshake() == "big"
                self._open_pci(proc)
        except BaseException:
            self.stop()
            raise
        self.mem = QtestMemory(proc.qtest, self.ram_size, regions=list(lay.regions))
        if not self.mem.contains(self.window_base, WINDOW_SIZE):
            self.stop()
            raise UsageError(
                f"session window {self.window_base:#x}+15 MiB is not inside guest RAM "
                f"({self.ram_size >> 20} MiB)"
            )
        self.trace_log = TraceLog(proc.trace_log)
        self.timings["enumerate"] = time.monotonic() - t0 - proc.start_seconds
        return self

    def _open_pci(self, proc: QemuProcess) -> None:
        # on pseries the RTAS argument words live in the ring area's second-to-last page
        scratch = self.window_base + RING_AREA - 2 * PAGE
        self.fn, self.transport = open_pci(proc.qtest, self.arch, self.kind, scratch)
        if self.arch != "x86_64":
            return  # no MSI-X on pseries here (7.2's balloon has none)
        if self.want_msix and self.fn.msix is None:
            raise PeerError(
                f"msix=on, but the balloon at {self.fn.bdf} has no MSI-X "
                "capability (QEMU before 10.0, or vectors=0)"
            )
        if self.fn.msix is not None and self.want_msix is not False:
            # one message per vector, each writing its number + 1 into the last page of
            # the ring area (msix_fired() reads them back)
            n = self.fn.msix.table_size
            msix_enable(proc.qtest, self.fn, [(self.msix_slot(v), v + 1) for v in range(n)])
            self.transport.msix = True

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.close()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def _p(self) -> QemuProcess:
        if self.proc is None or not self.proc.alive():
            diag = "" if self.proc is None else self.proc.diagnose()
            raise PeerError(f"QEMU is not running{diag}", where="QEMU balloon")
        return self.proc

    def __enter__(self) -> QemuBalloon:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- negotiation and queues ----------------------------------------------------------
    def negotiate(self, features: int | None = None) -> tuple[int, int]:
        """Reset and negotiate; ``None`` accepts every offered balloon bit plus VERSION_1
        (modern).  Returns (offered, accepted)."""
        self._p()
        if features is None:
            features = BALLOON_BITS | (VERSION_1 if self.kind in ("modern", "mmio") else 0)
        self.queues.clear()
        self.offered, self.accepted = self.transport.negotiate(features)
        return self.offered, self.accepted

    def queue_roles(self) -> dict[QueueRole, int]:
        """Role -> index as QEMU numbers them: by *offered* features (research 2b), restricted
        to the roles the negotiated features enable."""
        return SPEC.queue_index(self.offered, self.accepted, "offered")

    def device_queue_slots(self) -> dict[QueueRole, int]:
        """Every queue QEMU created, by role (offered features only)."""
        return SPEC.queue_index(self.offered, self.offered, "offered")

    def setup_queues(self, indices: Sequence[int] | None = None, *, driver_ok: bool = True) -> None:
        """Lay split rings for ``indices`` (default: every queue the device has) and enable."""
        n = self.transport.num_queues()
        legacy = self.kind in ("legacy", "mmio-legacy")
        # each queue's rings where the one before it ends (page aligned, at least 12 KiB
        # apart): a legacy queue keeps the device's size (no QueueNum to lower it), and QEMU's
        # free page queue has 1,024 entries: 28 KiB of rings, which at a fixed 12 KiB stride
        # overlapped the reporting queue's (found by `vbproto fuzz` against 7.2 legacy: a used
        # id 0x50004 read from the free page queue's used ring)
        sizes, bases, at = [], [], self.window_base
        for i in range(n):
            size = self.transport.queue_max_size(i)
            if not legacy:
                size = min(size, self.queue_size)
            sizes.append(size)
            bases.append(at)
            end = (legacy_layout(at, size) if legacy else compact_layout(at, size)).end
            at = max(at + 0x3000, (end + PAGE - 1) // PAGE * PAGE)
        for i in range(n) if indices is None else indices:
            if not 0 <= i < n:
                raise UsageError(f"queue {i} does not exist (device has {n})", field="queue")
            size, base = sizes[i], bases[i]
            lay = legacy_layout(base, size) if legacy else compact_layout(base, size)
            if lay.end > self.scratch_base:
                raise UsageError(f"rings of queue {i} (size {size}) do not fit the ring area")
            # VERSION_1 rings are little-endian; legacy ones take the guest's order (2.7)
            le = not (legacy and self.big_endian)
            q = SplitQueueDriver(self.mem, size, lay.desc, lay.avail, lay.used, le)
            vector = None
            if self.transport.msix:
                assert self.fn.msix is not None
                # Linux's vp_find_vqs_msix: vector 0 for config changes, one per queue after
                # it while the table lasts, else every queue shares vector 1
                vector = i + 1 if i + 1 < self.fn.msix.table_size else 1
            got = self.transport.setup_queue(
                i, QueueAddrs(lay.desc, lay.avail, lay.used, size), vector
            )
            if vector is not None:
                self.vectors[i] = got
            self.queues[i] = q
        if self.transport.msix:
            self.config_vector = self.transport.set_config_vector(0)
            self.mem.fill(self.msix_slot(0), PAGE, 0)
        if driver_ok:
            self.transport.driver_ok()
        status = self.transport.get_status()
        if status & 0x40:
            raise PeerError(f"device needs reset after queue setup (status {status:#x})")

    def queue_index(self, queue: int | str | QueueRole) -> int:
        if isinstance(queue, int):
            return queue
        role = QueueRole(queue)
        slots = self.device_queue_slots()
        if role not in slots:
            raise UsageError(f"QEMU has no {role.value} queue with features {self.offered:#x}")
        return slots[role]

    def _queue(self, queue: int | str | QueueRole) -> tuple[int, SplitQueueDriver]:
        i = self.queue_index(queue)
        if i not in self.queues:
            raise UsageError(f"queue {i} is not set up", field="queue")
        return i, self.queues[i]

    # --- buffers -------------------------------------------------------------------------
    def place(self, data: bytes) -> int:
        """Copy driver bytes into session scratch RAM (wraps around when the window is full:
        QEMU copies an out-buffer when it pops it, and pops happen at the notify)."""
        if len(data) > self.scratch_end - self.scratch_base:
            raise UsageError(f"out buffer of {len(data)} bytes is larger than the scratch window")
        try:
            addr = self._scratch.alloc(max(len(data), 1), 16)
        except UsageError:
            self._scratch = BumpAllocator(self.scratch_base, self.scratch_end)
            addr = self._scratch.alloc(max(len(data), 1), 16)
        self.mem.write(addr, data)
        return addr

    def post(
        self,
        queue: int | str | QueueRole,
        segments: Sequence[bytes | RawSegment],
        *,
        notify: bool = True,
    ) -> Posted:
        """Make one chain available.  ``bytes`` segments are out-buffers placed in scratch RAM;
        ``(addr, len, writable)`` tuples are used as given (report ranges, MMIO addresses...)."""
        i, q = self._queue(queue)
        raw: list[RawSegment] = []
        for s in segments:
            if isinstance(s, bytes | bytearray):
                raw.append((self.place(bytes(s)), len(s), False))
            else:
                addr, length, writable = s
                if not (0 <= addr < 1 << 64 and 0 <= length < 1 << 32):
                    raise UsageError(f"segment {addr:#x}+{length:#x} does not fit a descriptor")
                raw.append((addr, length, bool(writable)))
        head = q.add_and_publish(raw)
        if notify:
            self.notify(i)
        return Posted(i, head, tuple(raw))

    def notify(self, queue: int | str | QueueRole) -> None:
        i = self.queue_index(queue)
        self.transport.notify(i)

    def used(self, queue: int | str | QueueRole) -> list[UsedElem]:
        """Used elements QEMU produced since the last call (their descriptors are reclaimed)."""
        _, q = self._queue(queue)
        return q.poll_used()

    def exchange(
        self, queue: int | str | QueueRole, segments: Sequence[bytes | RawSegment]
    ) -> list[UsedElem]:
        """post + notify + the used elements that appeared (synchronous under ``-S``)."""
        self.post(queue, segments)
        return self.used(queue)

    def wait_used(
        self, queue: int | str | QueueRole, count: int = 1, timeout: float = 5.0
    ) -> list[UsedElem]:
        """Poll until ``count`` used elements arrived (for timer-driven returns)."""
        deadline = time.monotonic() + timeout
        got: list[UsedElem] = []
        while True:
            got += self.used(queue)
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise PeerError(
                    f"{len(got)} of {count} used elements on queue {queue} after {timeout:g} s"
                    f"{self._p().diagnose()}",
                    where="QEMU balloon",
                )
            time.sleep(0.005)

    # --- MSI-X ---------------------------------------------------------------------------
    def msix_slot(self, vector: int) -> int:
        """Where MSI-X vector ``vector``'s message writes (4 bytes a vector, ring area's end)."""
        return self.window_base + RING_AREA - PAGE + 4 * vector

    def msix_fired(self) -> set[int]:
        """Vectors that signalled since the last call (their slots are cleared again)."""
        if not self.transport.msix or self.fn.msix is None:
            return set()
        n = self.fn.msix.table_size
        raw = np.frombuffer(self.mem.read(self.msix_slot(0), 4 * n), dtype="<u4")
        fired = {v for v in range(n) if raw[v] == v + 1}
        if fired:
            self.mem.fill(self.msix_slot(0), 4 * n, 0)
        return fired

    # --- guest pages ---------------------------------------------------------------------
    def fill_pages(self, pfn: int, count: int, value: int) -> None:
        self.mem.fill(pfn * PAGE, count * PAGE, value)

    def read_pages(self, pfn: int, count: int) -> bytes:
        return self.mem.read(pfn * PAGE, count * PAGE)

    def pages_zero(self, pfn: int, count: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Per page: True if all its bytes read back as zero."""
        raw = np.frombuffer(self.read_pages(pfn, count), dtype=np.uint64).reshape(count, -1)
        return np.asarray(~raw.any(axis=1))

    # --- config and interrupts -----------------------------------------------------------
    def config_read(self, offset: int, size: int) -> bytes:
        return self.transport.config_read(offset, size)

    def config_write(self, offset: int, data: bytes) -> None:
        self.transport.config_write(offset, data)

    def num_pages(self) -> int:
        return int.from_bytes(self.config_read(0, 4), "little")

    def actual(self) -> int:
        return int.from_bytes(self.config_read(4, 4), "little")

    def set_actual(self, pages: int) -> None:
        self.config_write(4, pages.to_bytes(4, "little"))

    def isr(self) -> int:
        return self.transport.isr()

    # --- QMP -----------------------------------------------------------------------------
    def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        return self._p().qmp.execute(command, arguments)

    @property
    def backend_path(self) -> str:
        """QOM path of the VirtIODevice (virtio-balloon-device itself on virtio-mmio)."""
        return BALLOON_PATH if self.mmio else BACKEND_PATH

    @property
    def vm_ram_size(self) -> int:
        """QEMU's get_current_ram_size(): base RAM plus DIMMs (the window's included)."""
        if self.mmio and self.window_dimm:
            return self.window_base + DIMM_SIZE
        extra = sum(n for _, n in self.ram_dimms)
        return self.ram_size + extra + (self.dimm_size if self.window_dimm else 0)

    def query_balloon(self) -> int:
        """QEMU's ``actual``: vm_ram_size - config.actual * 4096 (what the *driver* reported)."""
        return int(self.qmp("query-balloon")["actual"])

    def set_target(self, size_bytes: int) -> None:
        """QMP ``balloon value=``: the guest's target size; QEMU writes num_pages."""
        self.qmp("balloon", {"value": size_bytes})

    def set_stats_interval(self, seconds: int) -> None:
        self.qmp(
            "qom-set",
            {"path": BALLOON_PATH, "property": "guest-stats-polling-interval", "value": seconds},
        )

    def guest_stats(self) -> dict[str, Any]:
        """``qom-get guest-stats``: {"stats": {"stat-...": value}, "last-update": secs}."""
        out = self.qmp("qom-get", {"path": BALLOON_PATH, "property": "guest-stats"})
        if not isinstance(out, dict):
            raise PeerError(f"guest-stats is not an object: {out!r}", where="QMP qom-get")
        return out

    def queue_status(self, index: int) -> dict[str, Any]:
        out = self.qmp("x-query-virtio-queue-status", {"path": self.backend_path, "queue": index})
        if not isinstance(out, dict):
            raise PeerError(f"queue status is not an object: {out!r}")
        return out

    def cont(self) -> None:
        self.qmp("cont")

    def try_qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Like :meth:`qmp` but returns the QmpError instead of raising it."""
        try:
            return self.qmp(command, arguments)
        except QmpError as e:
            return e

    # --- trace ---------------------------------------------------------------------------
    def trace(self) -> TraceLog:
        """The ``-D`` trace log parsed up to now (incremental)."""
        return self.trace_log.update()

    def balloon_extents(self) -> list[tuple[int, int]]:
        """Pages QEMU processed on inflate minus those on deflate, as [first, count] extents.

        QEMU keeps no set of ballooned pages (it discards RAM and forgets), so this set is
        rebuilt from its own trace lines: inflate ``handle_output`` PFNs minus deflate ones.
        """
        roles = self.device_queue_slots()
        return extents_from_trace(self.trace(), roles[QueueRole.INFLATE], roles[QueueRole.DEFLATE])


__all__ = [
    "BACKEND_PATH",
    "DIMM_BASE",
    "DIMM_SIZE",
    "MMIO_TRANSPORTS",
    "TRANSPORTS",
    "QemuBalloon",
    "extents_from_trace",
    "pfn_array",
    "stats_buffer",
    "to_extents",
]
