"""Length-prefixed JSON frames over pipes: the transport of both stdio protocols.

The conformance testee protocol (docs/stdio-protocol.md) and the vector codec protocol
(docs/vectors.md) share one framing: a 4-byte little-endian length, then that many bytes of
UTF-8 JSON; one request, one answer.  This module holds the framing and the child-process
handling both clients need: its own session (so a kill reaches grandchildren), a deadline on
every answer, a frame cap checked before anything is allocated, the tail of the child's
stderr quoted in errors, and exit status 127 meaning "unsupported".
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from typing import IO, Any, BinaryIO

from .errors import PeerError, UsageError
from .limits import MAX_JSON_DEPTH, dumps_strict, loads_json

EXIT_UNSUPPORTED = 127


class PeerUnsupported(PeerError):
    """The child exited with status 127: it does not implement what was asked."""


def encode_frame(obj: Any) -> bytes:
    """One frame: a 4-byte LE length, then strict ASCII JSON (no NaN/Infinity: non-finite
    floats travel as strings; lone surrogates as ``\\udXXX`` escapes)."""
    body = dumps_strict(obj, separators=(",", ":")).encode("ascii")
    return struct.pack("<I", len(body)) + body


def decode_body(raw: bytes, what: str, where: str) -> Any:
    """A frame's JSON, parsed strictly (limits.loads_json): depth, numbers, UTF-8."""
    return loads_json(raw, what=what, error=PeerError, max_bytes=len(raw),
                      max_depth=MAX_JSON_DEPTH, where=where)


def write_frame(out: BinaryIO, obj: Any) -> None:
    out.write(encode_frame(obj))
    out.flush()


def read_frame(inp: BinaryIO, max_frame: int) -> Any | None:
    """One frame from a blocking stream (a server's stdin); None at a clean EOF."""
    head = inp.read(4)
    if not head:
        return None
    if len(head) < 4:
        raise PeerError("stream ended inside a frame length", where="stdio")
    (n,) = struct.unpack("<I", head)
    if n > max_frame:
        raise PeerError(f"frame of {n} bytes exceeds {max_frame}", where="stdio")
    body = inp.read(n)
    if len(body) < n:
        raise PeerError("stream ended inside a frame", where="stdio")
    return decode_body(body, "frame", "stdio")


def kill_group(pgid: int) -> None:
    """SIGKILL the process group ``pgid`` (a session we started: its id is our child's pid,
    which the kernel does not reuse while any member of the group lives)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


#: environment variable that tags every descendant of a child we spawn (inherited through
#: fork, exec and setsid alike) with that child's token
TAG_VARIABLE = "VBPROTO_PEER_TAG"
PR_SET_CHILD_SUBREAPER = 36
_subreaper = False


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants (Linux ``prctl``): a
    descendant orphaned by its parent's exit is re-parented to us, not to init, so it stays
    in our tree -- findable, killable and reaped here.  False where unsupported."""
    global _subreaper
    if not _subreaper and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            _subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    return _subreaper


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``TAG_VARIABLE=tag`` (from /proc: Linux)."""
    needle = f"{TAG_VARIABLE}={tag}".encode() + b"\0"
    out = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    env = f.read()
                if (b"\0" + env).find(b"\0" + needle) >= 0:
                    out.append(int(entry.name))
    return out


def kill_tagged(tag: str, rounds: int = 5) -> int:
    """SIGKILL every process tagged ``tag`` -- the descendants that left the child's process
    group (``setsid()``, a double fork) -- until none is left; reap those that are ours (as
    subreaper, the orphans are).  Returns how many were killed."""
    killed: set[int] = set()
    for _ in range(rounds):
        pids = [p for p in tagged_pids(tag) if p != os.getpid()]
        alive = [p for p in pids if _state(p) not in ("Z", "X", "")]
        if not alive:
            break
        for p in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
            killed.add(p)
        time.sleep(0.01)
    for p in killed:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(p, os.WNOHANG)
    return len(killed)


def _stat(pid: int | str) -> tuple[str, int, int]:
    """(state, parent pid, start time in clock ticks) of ``pid`` from /proc, or ("", 0, 0)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return rest[0], int(rest[1]), int(rest[19])
    except (OSError, IndexError, ValueError):
        return "", 0, 0


def descendants(root: int) -> list[tuple[int, int]]:
    """Live descendants of ``root`` as (pid, start time): whatever they did to their session
    or environment, as long as their chain of parents up to ``root`` is unbroken (Linux)."""
    children: dict[int, list[tuple[int, int]]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                state, ppid, start = _stat(entry.name)
                if state and state not in "ZX":
                    children.setdefault(ppid, []).append((int(entry.name), start))
    out: list[tuple[int, int]] = []
    todo = [root]
    while todo:
        for pid, start in children.get(todo.pop(), ()):
            out.append((pid, start))
            todo.append(pid)
    return out


def kill_listed(procs: list[tuple[int, int]]) -> int:
    """SIGKILL each (pid, start time) that is still that same process; reap our own."""
    n = 0
    for pid, start in procs:
        state, _, now = _stat(pid)
        if state and state not in "ZX" and now == start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                n += 1
    for pid, _ in procs:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
    return n


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


class FramedProcess:
    """A child process answering frames on its stdout to frames on its stdin."""

    def __init__(self, argv: list[str], *, timeout: float, max_frame: int,
                 role: str = "peer", field: str = "device") -> None:
        if not argv:
            raise UsageError(f"the {role} needs a command", field=field)
        if timeout <= 0:
            raise UsageError("timeout must be positive", field="timeout")
        self.argv = argv
        self.timeout = timeout
        self.max_frame = max_frame
        self.role = role
        self.field = field
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._tag = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        self._stderr = tempfile.TemporaryFile()
        # its own session (killpg reaches its group) and a tag in its environment (reaches
        # what left the group); we are subreaper, so orphans stay in our tree
        become_subreaper()
        self._tag = uuid.uuid4().hex
        env = {**os.environ, TAG_VARIABLE: self._tag}
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._stderr,
                                         bufsize=0, start_new_session=True, env=env)
        except OSError as exc:
            self._stderr.close()
            self._stderr = None
            raise UsageError(f"cannot start {self.role} {self.argv[0]!r}: "
                             f"{exc.strerror or exc}", field=self.field) from None

    def stderr_tail(self, limit: int = 400) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(0, self._stderr.tell() - limit))
            tail = self._stderr.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""
        return f"; {self.role} stderr: {tail!r}" if tail else ""

    def kill(self, tree: list[tuple[int, int]] | None = None) -> int | None:
        """Kill the child's whole session (every descendant still in its process group, even
        when the child itself has already exited), every process carrying its tag, and its
        live descendants (``tree``: a list taken earlier, else taken now) -- a descendant
        that left the group *and* wiped its environment is reached through its parents; one
        orphaned before this call is not (docs/fuzzing.md, "What is guaranteed").  Returns
        the child's exit status if it had one."""
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if tree is None:
                tree = descendants(proc.pid) if proc.poll() is None else []
            with contextlib.suppress(OSError):
                if proc.stdin:
                    proc.stdin.close()
            if proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.2)
            code = proc.poll()
            kill_group(proc.pid)
            if self._tag:
                kill_tagged(self._tag)
            kill_listed(tree)
            if code is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2)
            if proc.stdout:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return code

    def reap_strays(self) -> None:
        """End of a case: if the child has exited, kill what it left behind (in its group or
        out of it: :meth:`kill`).  A child that still serves keeps its descendants until the
        run ends (:meth:`close`)."""
        if self.proc is not None and self.proc.poll() is not None:
            self.kill()

    def close(self) -> None:
        """Close the child's stdin (it exits at EOF), then kill it if it lingers."""
        proc = self.proc
        tree: list[tuple[int, int]] | None = None
        if proc is not None and proc.poll() is None:
            # its descendants before it exits: once it has, they are orphans of no one's
            tree = descendants(proc.pid)
            with contextlib.suppress(OSError):
                if proc.stdin:
                    proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        self.kill(tree)

    def fail(self, message: str, where: str) -> PeerError:
        """Kill the child and build the error to raise (PeerUnsupported on status 127)."""
        tail = self.stderr_tail()
        code = self.kill()
        if code == EXIT_UNSUPPORTED:
            return PeerUnsupported(f"{self.role} exited with status 127 during {where}",
                                   where=where)
        if code is not None and "exited" not in message:
            message += f" ({self.role} exited with status {code})"
        return PeerError(message + tail, where=where)

    def _read_exact(self, n: int, deadline: float, where: str) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        chunks: list[bytes] = []
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.fail(f"no answer within {self.timeout:g} s (hang)", where)
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=0.5)
                raise self.fail(f"{self.role} closed its stdout after {got} of {n} bytes",
                                where)
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _write_all(self, data: bytes, deadline: float, where: str) -> None:
        """Write ``data`` to the child's stdin without ever blocking past ``deadline``: a
        child that stops reading is a hang, not a runner stuck in write()."""
        assert self.proc is not None and self.proc.stdin is not None
        fd = self.proc.stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        off = 0
        while off < len(view):
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.fail(f"{self.role} did not read the request within "
                                f"{self.timeout:g} s ({off} of {len(view)} bytes taken; hang)",
                                where)
            _, ready, _ = select.select([], [fd], [], left)
            if not ready:
                continue
            try:
                off += os.write(fd, view[off:off + (1 << 16)])
            except BlockingIOError:
                continue
            except OSError:
                raise self.fail(f"the {self.role} is gone (broken pipe while sending)",
                                where) from None

    def exchange(self, obj: Any, where: str) -> dict[str, Any]:
        """Send one frame and wait for the answer frame; the whole exchange (writing the
        request and reading the answer) is bounded by ``timeout``."""
        if self.proc is None or self.proc.stdin is None:
            raise PeerError(f"the {self.role} is not running", where=where)
        deadline = time.monotonic() + self.timeout
        self._write_all(encode_frame(obj), deadline, where)
        (length,) = struct.unpack("<I", self._read_exact(4, deadline, where))
        if length > self.max_frame:
            raise self.fail(f"{self.role} announced a frame of {length} bytes "
                            f"(limit {self.max_frame}, MAX_FRAME)", where)
        raw = self._read_exact(length, deadline, where)
        try:
            msg = decode_body(raw, "answer", where)
        except PeerError as exc:
            raise self.fail(f"{exc.message}: {raw[:60]!r}", where) from None
        if not isinstance(msg, dict):
            raise self.fail(f"answer is not a JSON object: {raw[:60]!r}", where)
        return msg
