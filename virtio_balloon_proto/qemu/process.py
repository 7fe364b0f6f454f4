"""Start and stop qemu-system-x86_64 with a qtest socket and a QMP monitor.

The command line is libqtest's (research/qemu-peer.md, "Exact QEMU command lines"): Python
creates both unix sockets as listeners and QEMU connects to them.  Debian deletes the qtest
accelerator, so the device model runs under ``-accel tcg -S`` (vCPU stopped).

QEMU must never outlive us: the child gets ``PR_SET_PDEATHSIG(SIGKILL)`` (what libqtest does),
every started process is killed by PID in :meth:`QemuProcess.close` and in an ``atexit`` hook,
and every socket read has a timeout.
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ..errors import PeerError, PeerStartError, UsageError
from .channel import LineChannel
from .qmp import QmpClient
from .qtest import QtestClient

QEMU_BINARY = "qemu-system-x86_64"
INSTALL_HINT = "apt-get install -y --no-install-recommends qemu-system-x86"
INSTALL_HINTS = {
    QEMU_BINARY: INSTALL_HINT,
    "qemu-system-ppc64": "apt-get install -y --no-install-recommends qemu-system-ppc",
}

#: trace events the balloon session parses (tracelog.py); cheap enough to keep on always
DEFAULT_TRACE_EVENTS: tuple[str, ...] = (
    "virtio_balloon_*",
    "virtqueue_pop",
    "virtqueue_fill",
    "virtqueue_flush",
    "virtio_set_status",
    "virtio_queue_notify",
    "virtio_notify",
)

#: device properties of QEMU 7.2's virtio-balloon-pci that a session may set
DEVICE_PROPERTIES = (
    "deflate-on-oom",
    "free-page-reporting",
    "free-page-hint",
    "page-poison",
    "disable-legacy",
    "disable-modern",
)

_PR_SET_PDEATHSIG = 1
#: bytes and lines of QEMU's stderr kept in an error message (diagnose)
STDERR_TAIL_CHARS = 2000
STDERR_TAIL_LINES = 12


def find_qemu(binary: str = QEMU_BINARY) -> str:
    """Path of the QEMU binary, or PeerError saying how to install it.

    ``binary`` is a name looked up on PATH or a path (``binary=`` of ``--device qemu:``).
    The error is a :class:`PeerStartError`: no device was reached.
    """
    path = shutil.which(binary)
    if path is None:
        if os.sep in binary:
            what = "is a directory" if os.path.isdir(binary) else (
                "is not executable" if os.path.exists(binary) else "does not exist")
            raise PeerStartError(f"QEMU binary {binary} {what}", where="QEMU")
        hint = INSTALL_HINTS.get(binary, INSTALL_HINT)
        raise PeerStartError(
            f"{binary} not found on PATH; install Debian's QEMU with: {hint}", where="QEMU"
        )
    return path


#: firmware directories of an unpacked Debian QEMU tree (its --firmwarepath), relative to the
#: tree's root; searched by :func:`data_dirs_for` so an unpacked build finds its own ROMs
_TREE_DATA_DIRS = ("usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu", "usr/share/slof")


def data_dirs_for(binary: str) -> tuple[Path, ...]:
    """``-L`` directories for a QEMU binary unpacked outside ``/usr`` (``ROOT/usr/bin/qemu-*``).

    A system binary (``/usr/bin``) needs none: it has its compiled-in firmware path.
    """
    real = Path(binary).resolve()
    if real.parent.name != "bin" or real.parent.parent.name != "usr":
        return ()
    root = real.parent.parent.parent
    if root == Path("/"):
        return ()
    return tuple(root / d for d in _TREE_DATA_DIRS if (root / d).is_dir())


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_LIVE: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _kill_leftovers() -> None:
    for pid, proc in list(_LIVE.items()):
        if proc.poll() is None:
            try:
                os.kill(pid, signal.SIGKILL)
                proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        _LIVE.pop(pid, None)


def _size_arg(value: int | str) -> str:
    if isinstance(value, int):
        if value <= 0 or value % (1 << 20):
            raise UsageError(f"memory size {value} is not a positive multiple of 1 MiB")
        return f"{value >> 20}M"
    return value


@dataclass(frozen=True)
class QemuOptions:
    """What to put on the QEMU command line.

    ``device`` holds virtio-balloon-pci properties (``{"deflate-on-oom": True}``);
    ``free-page-hint`` also adds the iothread it needs.
    """

    memory: int | str = 256 << 20
    machine: str = "q35"
    device: dict[str, bool] = field(default_factory=dict)
    #: False: ``-S`` (vCPU stopped; the qtest peer mode).  True: the guest runs.
    running: bool = False
    #: firmware image (``-bios``); used with ``icount`` so virtual time flows with a halted CPU
    bios: Path | None = None
    icount: bool = False
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    smp: int = 1
    #: file that receives the guest's serial console (``-serial file:``)
    serial: Path | None = None
    trace_events: tuple[str, ...] = DEFAULT_TRACE_EVENTS
    extra_args: tuple[str, ...] = ()
    #: the balloon's QOM type: virtio-balloon-pci, or virtio-balloon-device on virtio-mmio
    device_type: str = "virtio-balloon-pci"
    #: further device properties as given (``vectors=0``): not on/off, not checked here
    device_values: tuple[tuple[str, str], ...] = ()
    #: ``-L`` firmware directories (an unpacked QEMU build, see :func:`data_dirs_for`)
    data_dirs: tuple[Path, ...] = ()
    #: False: no ``-accel tcg`` (a machine whose default accelerator is already TCG)
    accel_tcg: bool = True
    #: the accelerator given with ``-accel`` (``kvm`` for a guest that runs; qtest peers: tcg)
    accel: str = "tcg"

    def device_arg(self) -> str:
        parts = [self.device_type, "id=balloon0"]
        for name, on in self.device.items():
            if name not in DEVICE_PROPERTIES:
                raise UsageError(
                    f"unknown virtio-balloon-pci option {name!r} "
                    f"(known: {', '.join(DEVICE_PROPERTIES)})",
                    field="device",
                )
            parts.append(f"{name}={'on' if on else 'off'}")
        parts += [f"{k}={v}" for k, v in self.device_values]
        if self.device.get("free-page-hint"):
            # QEMU refuses free-page-hint=on without an iothread to run the hinting in
            parts.append("iothread=io0")
        return ",".join(parts)

    def command(self, binary: str, qtest_sock: Path, qmp_sock: Path, trace_log: Path) -> list[str]:
        args = [
            binary,
            "-qtest", f"unix:{qtest_sock}",
            "-qtest-log", "/dev/null",
            "-chardev", f"socket,path={qmp_sock},id=char0",
            "-mon", "chardev=char0,mode=control",
            "-display", "none",
            "-nodefaults",
        ]  # fmt: skip
        for d in self.data_dirs:
            args += ["-L", str(d)]
        if self.accel_tcg:
            args += ["-accel", self.accel]
        args += [
            "-machine", self.machine,
            "-m", _size_arg(self.memory),
            "-smp", str(self.smp),
        ]  # fmt: skip
        for ev in self.trace_events:
            args += ["-trace", ev]
        args += ["-D", str(trace_log)]
        if self.device.get("free-page-hint"):
            args += ["-object", "iothread,id=io0"]
        args += ["-device", self.device_arg()]
        if self.bios is not None:
            args += ["-bios", str(self.bios)]
        if self.icount:
            args += ["-icount", "shift=0,sleep=off"]
        if self.kernel is not None:
            args += ["-kernel", str(self.kernel)]
            if self.initrd is not None:
                args += ["-initrd", str(self.initrd)]
            if self.append is not None:
                args += ["-append", self.append]
            args += ["-no-reboot"]
        if self.serial is not None:
            args += ["-serial", f"file:{self.serial}"]
        args += list(self.extra_args)
        if not self.running:
            args.append("-S")
        return args


class QemuProcess:
    """One running QEMU with its qtest and QMP connections.  Use as a context manager."""

    def __init__(
        self,
        options: QemuOptions | None = None,
        *,
        workdir: Path | None = None,
        binary: str = QEMU_BINARY,
        timeout: float = 10.0,
    ) -> None:
        self.options = options or QemuOptions()
        self.binary = find_qemu(binary)
        self.timeout = timeout
        self._own_dir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="vbproto-qemu-")) if workdir is None else workdir
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.qtest_path = self.workdir / "qtest.sock"
        self.qmp_path = self.workdir / "qmp.sock"
        self.trace_log = self.workdir / "trace.log"
        self.stderr_path = self.workdir / "qemu.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.qtest: QtestClient
        self.qmp: QmpClient
        self.command: list[str] = []
        self.start_seconds = 0.0

    # --- diagnostics ---------------------------------------------------------------------
    def stderr_tail(self, limit: int = STDERR_TAIL_CHARS, lines: int = STDERR_TAIL_LINES) -> str:
        """QEMU's last stderr lines: at most ``lines`` non-empty lines and ``limit`` bytes of
        them (a peer that floods stderr does not flood our messages), saying what was left
        out."""
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - limit))
                raw = f.read()
        except OSError:
            return ""
        text = raw.decode("utf-8", "replace")
        if size > limit:  # the first line read is cut: drop it
            text = text.partition("\n")[2]
        kept = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
        cut = kept[:-lines] if len(kept) > lines else []
        kept = kept[-lines:]
        left = size - sum(len(ln) + 1 for ln in kept)
        head = f"[{left} earlier byte(s) left out] " if left > 0 and (cut or size > limit) else ""
        return head + " | ".join(kept) if kept else ""

    def diagnose(self) -> str:
        """Suffix for error messages: exit status and QEMU's last stderr lines."""
        text = ""
        if self.proc is not None:
            rc = self.proc.poll()
            if rc is not None:
                text += f"; QEMU exited with status {rc}"
        tail = self.stderr_tail()
        if tail:
            text += f"; QEMU stderr: {tail}"
        return text

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- lifetime ------------------------------------------------------------------------
    def start(self) -> QemuProcess:
        t0 = time.monotonic()
        listeners: list[socket.socket] = []
        try:
            for path in (self.qtest_path, self.qmp_path):
                if path.exists():
                    path.unlink()
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.bind(str(path))
                s.listen(1)
                listeners.append(s)
            opts = self.options
            if not opts.data_dirs:
                opts = dataclasses.replace(opts, data_dirs=data_dirs_for(self.binary))
            self.command = opts.command(self.binary, self.qtest_path, self.qmp_path, self.trace_log)
            with open(self.stderr_path, "wb") as err:
                self.proc = subprocess.Popen(
                    self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    preexec_fn=_die_with_parent,
                    close_fds=True,
                )
            _LIVE[self.proc.pid] = self.proc
            qtest_sock = self._accept(listeners[0], "qtest")
            qmp_sock = self._accept(listeners[1], "QMP")
        except OSError as e:
            diag = self.diagnose()
            self.close()
            raise PeerStartError(f"cannot start QEMU: {e}{diag}", where="QEMU") from None
        except PeerError as e:
            self.close()
            raise PeerStartError(e.message, where=e.where) from None
        except BaseException:
            self.close()
            raise
        finally:
            for s in listeners:
                s.close()
        try:
            self.qtest = QtestClient(
                LineChannel(qtest_sock, "qtest", timeout=self.timeout, diagnose=self.diagnose)
            )
            self.qmp = QmpClient(
                LineChannel(qmp_sock, "QMP", timeout=self.timeout, diagnose=self.diagnose)
            )
            self.qtest.handshake()
            self.qmp.handshake()
        except PeerError as e:
            # QEMU connected and went away before answering (a property it does not have, a
            # program that is no QEMU): it never started -- the case could not be run
            diag = "" if "QEMU stderr:" in e.message else self.diagnose()
            self.close()
            raise PeerStartError(f"QEMU did not start: {e.message}{diag}",
                                 where=e.where) from None
        except BaseException:
            self.close()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _accept(self, listener: socket.socket, what: str) -> socket.socket:
        deadline = time.monotonic() + self.timeout
        listener.settimeout(0.02)
        while True:
            try:
                conn, _ = listener.accept()
                conn.setblocking(True)
                return conn
            except TimeoutError:
                pass
            if not self.alive():
                raise PeerError(
                    f"QEMU exited before connecting to the {what} socket{self.diagnose()}",
                    where="QEMU",
                )
            if time.monotonic() > deadline:
                raise PeerError(
                    f"QEMU did not connect to the {what} socket within {self.timeout:g} s"
                    f"{self.diagnose()}",
                    where="QEMU",
                )

    def quit_and_wait(self, timeout: float = 10.0) -> None:
        """QMP ``quit`` and wait for the process to exit (a guest capture's orderly end, so
        QEMU flushes its trace log).  Raises PeerError if it has not exited in ``timeout`` s."""
        self.qmp.quit()
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PeerError(f"QEMU did not exit after quit{self.diagnose()}") from None

    def close(self, *, graceful: bool = True) -> None:
        """Quit QEMU (QMP ``quit``, then SIGKILL by PID) and remove the work dir if ours."""
        proc = self.proc
        if proc is not None and proc.poll() is None and graceful and hasattr(self, "qmp"):
            try:
                self.qmp.quit(timeout=2.0)
            except PeerError:
                pass
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    proc.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    pass
            _LIVE.pop(proc.pid, None)
        for client in ("qtest", "qmp"):
            c = getattr(self, client, None)
            if c is not None:
                c.close()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> QemuProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def run_checked(args: Sequence[str], what: str, timeout: float = 600.0) -> str:
    """Run a helper command (apt-get, dpkg-deb) and return stdout; PeerError on failure."""
    try:
        res = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PeerError(f"{what}: {' '.join(args)} failed: {e}") from None
    if res.returncode != 0:
        raise PeerError(
            f"{what}: {' '.join(args)} exited {res.returncode}: {res.stderr.strip()[-1500:]}"
        )
    return res.stdout
