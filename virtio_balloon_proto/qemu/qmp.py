"""Client of QEMU's QMP monitor (JSON lines over a unix socket).

Handshake: QEMU sends a greeting ``{"QMP": ...}``; the client answers ``qmp_capabilities``.
Asynchronous events (``{"event": ...}``) can arrive at any time; they are kept (bounded) in
:attr:`QmpClient.events` and never mistaken for a command's reply.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from ..errors import PeerError
from ..limits import loads_json
from .channel import LineChannel


class QmpError(PeerError):
    """QEMU answered a QMP command with ``{"error": {"class": ..., "desc": ...}}``."""

    def __init__(self, message: str, *, error_class: str, command: str) -> None:
        super().__init__(message, where=f"QMP {command}")
        self.error_class = error_class
        self.command = command


class QmpClient:
    def __init__(self, channel: LineChannel) -> None:
        self._ch = channel
        self.events: deque[dict[str, Any]] = deque(maxlen=1024)
        self.greeting: dict[str, Any] = {}
        self._id = 0

    def _next_message(self, timeout: float | None = None) -> dict[str, Any]:
        line = self._ch.readline(timeout)
        try:
            # the shared strict loader: nesting depth and integer size capped (a line of ten
            # million '[' is one clear error, not a RecursionError)
            msg = loads_json(line, what="QMP message", error=PeerError)
        except PeerError as e:
            raise self._ch.fail(f"QMP sent invalid JSON ({e}): {line[:200]!r}") from None
        if not isinstance(msg, dict):
            raise self._ch.fail(f"QMP sent a non-object: {line[:200]!r}")
        return msg

    def handshake(self) -> None:
        msg = self._next_message()
        if "QMP" not in msg:
            raise self._ch.fail(f"expected the QMP greeting, got {json.dumps(msg)[:200]}")
        self.greeting = msg
        self.execute("qmp_capabilities")

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Run ``command``; return its ``return`` value (QmpError on an ``error`` reply)."""
        self._id += 1
        req: dict[str, Any] = {"execute": command, "id": self._id}
        if arguments:
            req["arguments"] = arguments
        self._ch.send(json.dumps(req))
        for _ in range(100_000):
            msg = self._next_message(timeout)
            if "event" in msg:
                self.events.append(msg)
                continue
            if msg.get("id") != self._id:
                raise self._ch.fail(f"QMP reply for another command: {json.dumps(msg)[:200]}")
            if "error" in msg:
                err = msg["error"] if isinstance(msg["error"], dict) else {}
                raise QmpError(
                    f"{err.get('class', 'Error')}: {err.get('desc', msg['error'])}",
                    error_class=str(err.get("class", "")),
                    command=command,
                )
            if "return" not in msg:
                raise self._ch.fail(f"QMP reply without 'return': {json.dumps(msg)[:200]}")
            return msg["return"]
        raise self._ch.fail("too many QMP events without a reply")

    def quit(self, timeout: float = 2.0) -> None:
        """``quit``; QEMU may close the socket before or after replying, both are fine."""
        try:
            self.execute("quit", timeout=timeout)
        except QmpError:
            raise
        except PeerError:
            pass

    def close(self) -> None:
        self._ch.close()
