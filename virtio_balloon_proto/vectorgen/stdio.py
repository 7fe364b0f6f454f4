"""The vector stdio protocol (docs/vectors.md "Checking another codec"): frames of a 4-byte
little-endian length and that many bytes of UTF-8 JSON, one request and one answer at a time.

:class:`StdioCodec` is the verifier's client; :func:`serve` is the server loop a codec in
Python can wrap around its own handler (``python -m virtio_balloon_proto.vectorgen.serve``
serves the reference codec).
"""

from __future__ import annotations

__all__ = ["EXIT_UNSUPPORTED", "MAX_FRAME", "StdioCodec", "read_frame", "serve", "write_frame"]

import shlex
from collections.abc import Callable
from typing import Any, BinaryIO

from ..errors import PeerError, UsageError
from ..framing import EXIT_UNSUPPORTED, FramedProcess, PeerUnsupported, read_frame, write_frame

#: frames above this are refused before anything is allocated
MAX_FRAME = 64 << 20
DEFAULT_TIMEOUT = 5.0
#: consecutive crashes/hangs after which the codec is given up on (every later request fails)
MAX_RESTARTS = 3


def serve(handler: Callable[[Any], dict[str, Any]], inp: BinaryIO, out: BinaryIO) -> int:
    """Answer frames until EOF; returns the number of requests served."""
    n = 0
    while True:
        req = read_frame(inp, MAX_FRAME)
        if req is None:
            return n
        try:
            answer = handler(req)
        except Exception as exc:  # a request the handler did not foresee: answer, never die
            answer = {"error": {"class": "UsageError",
                                "message": f"request not served: {type(exc).__name__}: "
                                           f"{str(exc)[:200]}"}}
        write_frame(out, answer)
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
        self.timeout = timeout
        self.name = f"stdio:{command}"
        self._peer = FramedProcess(self.argv, timeout=timeout, max_frame=MAX_FRAME,
                                   role="codec", field="impl")
        self.unsupported: str | None = None
        self._failures = 0

    def close(self) -> None:
        self._peer.kill()

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.unsupported is not None:
            return {"unsupported": self.unsupported}
        if self._failures >= MAX_RESTARTS:
            raise PeerError(f"codec failed {self._failures} times in a row; given up",
                            where=self.name)
        if not self._peer.running:
            self._peer.kill()
            self._peer.spawn()
        try:
            ans = self._peer.exchange(req, self.name)
        except PeerUnsupported:
            self.unsupported = "codec exited with status 127 (unsupported)"
            return {"unsupported": self.unsupported}
        except PeerError:
            self._failures += 1  # killed by exchange(); respawned for the next request
            raise
        self._failures = 0
        return ans
