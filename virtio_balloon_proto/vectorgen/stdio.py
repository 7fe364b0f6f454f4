"""The vector stdio protocol (docs/vectors.md "Checking another codec"): frames of a 4-byte
little-endian length and that many bytes of UTF-8 JSON, one request and one answer at a time.

:class:`StdioCodec` is the verifier's client; :func:`serve` is the server loop a codec in
Python can wrap around its own handler (``python -m virtio_balloon_proto.vectorgen.serve``
serves the reference codec).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any, BinaryIO

from ..errors import PeerError, UsageError

#: frames above this are refused before anything is allocated
MAX_FRAME = 64 << 20
EXIT_UNSUPPORTED = 127
DEFAULT_TIMEOUT = 5.0
#: consecutive crashes/hangs after which the codec is given up on (every later request fails)
MAX_RESTARTS = 3


def write_frame(out: BinaryIO, obj: Any) -> None:
    body = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    out.write(struct.pack("<I", len(body)) + body)
    out.flush()


def read_frame(inp: BinaryIO) -> Any | None:
    """One frame from a blocking stream; None at a clean EOF."""
    head = inp.read(4)
    if not head:
        return None
    if len(head) < 4:
        raise PeerError("stream ended inside a frame length", where="stdio")
    (n,) = struct.unpack("<I", head)
    if n > MAX_FRAME:
        raise PeerError(f"frame of {n} bytes exceeds {MAX_FRAME}", where="stdio")
    body = inp.read(n)
    if len(body) < n:
        raise PeerError("stream ended inside a frame", where="stdio")
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PeerError(f"frame is not UTF-8 JSON: {exc}", where="stdio") from None


def serve(handler: Callable[[Any], dict[str, Any]], inp: BinaryIO, out: BinaryIO) -> int:
    """Answer frames until EOF; returns the number of requests served."""
    n = 0
    while True:
        req = read_frame(inp)
        if req is None:
            return n
        write_frame(out, handler(req))
        n += 1


class StdioCodec:
    """A codec in another process, reached over the frame protocol.

    One process serves every request.  A hang past ``timeout`` or a crash fails that request
    (the process is killed and respawned for the next); exit status 127 marks the codec as
    unsupported for everything that follows.
    """

    def __init__(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        try:
            self.argv = shlex.split(command)
        except ValueError as exc:
            raise UsageError(f"cannot parse codec command: {exc}", field="impl") from None
        if not self.argv:
            raise UsageError("stdio: needs a command", field="impl")
        if timeout <= 0:
            raise UsageError("timeout must be positive", field="timeout")
        self.timeout = timeout
        self.name = f"stdio:{command}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.unsupported: str | None = None
        self._failures = 0

    def _spawn(self) -> None:
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self._stderr,
                                          bufsize=0, start_new_session=True)
        except OSError as exc:
            self._stderr.close()
            self._stderr = None
            raise UsageError(f"cannot start codec {self.argv[0]!r}: {exc.strerror or exc}",
                             field="impl") from None

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        with contextlib.suppress(OSError):
            self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(0, self._stderr.tell() - 300))
            tail = self._stderr.read().decode("utf-8", "replace").strip()
            return f"; codec stderr: {tail!r}" if tail else ""
        return ""

    def _kill(self) -> int | None:
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            with contextlib.suppress(OSError):
                if proc.stdin:
                    proc.stdin.close()
            if proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.2)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session, started by us
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2)
            code = proc.poll()
            if proc.stdout:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return code

    def close(self) -> None:
        self._kill()

    def _fail(self, message: str) -> PeerError:
        tail = self._stderr_tail()
        code = self._kill()
        self._failures += 1
        if code == EXIT_UNSUPPORTED:
            self.unsupported = "codec exited with status 127 (unsupported)"
        elif code is not None:
            message += f" (codec exited with status {code})"
        return PeerError(message + tail, where=self.name)

    def _read_exact(self, n: int, deadline: float) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        chunks: list[bytes] = []
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(f"no answer within {self.timeout:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=0.5)
                raise self._fail(f"codec closed its stdout after {got} of {n} bytes")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.unsupported is not None:
            return {"unsupported": self.unsupported}
        if self._failures >= MAX_RESTARTS:
            raise PeerError(f"codec failed {self._failures} times in a row; given up",
                            where=self.name)
        if self._proc is None:
            self._spawn()
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        body = json.dumps(req, separators=(",", ":")).encode("utf-8")
        try:
            proc.stdin.write(struct.pack("<I", len(body)) + body)
            proc.stdin.flush()
        except OSError:
            err = self._fail("codec is gone (broken pipe)")
            if self.unsupported is not None:
                return {"unsupported": self.unsupported}
            raise err from None
        deadline = time.monotonic() + self.timeout
        try:
            (n,) = struct.unpack("<I", self._read_exact(4, deadline))
            if n > MAX_FRAME:
                raise self._fail(f"codec announced a frame of {n} bytes (limit {MAX_FRAME})")
            raw = self._read_exact(n, deadline)
        except PeerError:
            if self.unsupported is not None:
                return {"unsupported": self.unsupported}
            raise
        try:
            ans = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._fail(f"answer is not UTF-8 JSON ({exc})") from None
        if not isinstance(ans, dict):
            raise self._fail("answer is not a JSON object")
        self._failures = 0
        return ans
