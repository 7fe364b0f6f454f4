"""A line-oriented unix-socket channel with a timeout on every read.

Both qtest and QMP are newline-terminated text protocols.  Every read is bounded in time
(``timeout``) and in size (``max_line``) so a hung or babbling QEMU turns into a PeerError that
says what QEMU last printed, never a hang or unbounded memory.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from ..errors import PeerError

#: the largest reply line accepted: a 64 MiB ``read`` is 128 MiB of hex
DEFAULT_MAX_LINE = 160 << 20


class LineChannel:
    def __init__(
        self,
        sock: socket.socket,
        name: str,
        *,
        timeout: float,
        diagnose: Callable[[], str],
        max_line: int = DEFAULT_MAX_LINE,
    ) -> None:
        self._sock = sock
        self._name = name
        self.timeout = timeout
        self._diagnose = diagnose
        self._max_line = max_line
        self._buf = bytearray()
        self._closed = False

    def fail(self, message: str) -> PeerError:
        return PeerError(f"{message}{self._diagnose()}", where=f"QEMU {self._name}")

    def send(self, line: str) -> None:
        if self._closed:
            raise self.fail("channel already closed")
        try:
            self._sock.sendall(line.encode("ascii") + b"\n")
        except OSError as e:
            raise self.fail(f"send failed ({e.strerror or e})") from None

    def readline(self, timeout: float | None = None) -> str:
        """Next line without its newline; PeerError on timeout, EOF or an oversized line."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl >= 0:
                raw = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                try:
                    return raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise self.fail(f"reply is not UTF-8: {raw[:80]!r}") from None
            start = len(self._buf)
            if len(self._buf) > self._max_line:
                raise self.fail(f"reply line longer than {self._max_line} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.fail(f"no reply within {limit:g} s")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(1 << 20)
            except TimeoutError:
                raise self.fail(f"no reply within {limit:g} s") from None
            except OSError as e:
                raise self.fail(f"receive failed ({e.strerror or e})") from None
            if not chunk:
                self._closed = True
                raise self.fail("connection closed by QEMU")
            self._buf += chunk

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass
