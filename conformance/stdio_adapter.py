"""The ``stdio:'CMD ...'`` adapter: an external testee speaking docs/stdio-protocol.md.

:class:`StdioDevice` runs one process for many cases over framed JSON on its stdin/stdout
(protocol version :data:`STDIO_PROTOCOL`, frames of at most :data:`MAX_FRAME` bytes, each step
bounded by a timeout, :data:`DEFAULT_TIMEOUT` unless the runner says otherwise).
"""

from __future__ import annotations

import contextlib
import shlex
from typing import Any

from virtio_balloon_proto.errors import PeerError, VBProtoError
from virtio_balloon_proto.framing import FramedProcess, PeerUnsupported

from .dut import Negotiated, Segment, Setup, Unsupported, Used
from .dut_json import (
    _hex,
    _text,
    negotiated_from_json,
    segment_to_json,
    setup_to_json,
    used_from_json,
    validate_result,
)

#: protocol version spoken by this runner (docs/stdio-protocol.md)
STDIO_PROTOCOL = 1
#: frames longer than this are refused before anything is allocated
MAX_FRAME = 16 << 20
DEFAULT_TIMEOUT = 5.0


class StdioDevice:
    """An external testee speaking docs/stdio-protocol.md.

    One process serves many cases (start ... stop, start ... stop).  Any transport problem --
    exit, hang past the step timeout, a frame that is not JSON, a frame length over
    :data:`MAX_FRAME` -- raises PeerError naming the step; the process is then killed and the
    next call to :meth:`start` spawns a fresh one.  Exit status 127 (before or during a case)
    or an ``{"unsupported": "..."}`` answer raises Unsupported.
    """

    def __init__(
        self, argv: list[str], timeout: float = DEFAULT_TIMEOUT, max_frame: int = MAX_FRAME
    ) -> None:
        self.argv = argv
        self.timeout = timeout
        self.max_frame = max_frame
        self.name = f"stdio:{shlex.join(argv)}"
        self.peer_name: str | None = None
        self._peer = FramedProcess(argv, timeout=timeout, max_frame=max_frame, role="testee")
        self._seq = 0
        #: when a list, every request and response object is appended (debugging, tests)
        self.frame_log: list[dict[str, Any]] | None = None

    # --- process management ----------------------------------------------------------------
    def _spawn(self) -> None:
        self._peer.spawn()
        result = self._request("hello", {"protocol": STDIO_PROTOCOL}, step="hello")
        if isinstance(result, dict) and result.get("protocol") == STDIO_PROTOCOL:
            try:
                validate_result(result, "hello_result", "hello")
            except PeerError:
                self._kill()
                raise
        if not isinstance(result, dict) or result.get("protocol") != STDIO_PROTOCOL:
            self._kill()
            raise PeerError(
                "testee speaks protocol "
                f"{result.get('protocol') if isinstance(result, dict) else result!r}, "
                f"runner speaks {STDIO_PROTOCOL}",
                where="hello",
            )
        name = result.get("name")
        self.peer_name = name if isinstance(name, str) else None

    @property
    def _proc(self) -> Any:
        return self._peer.proc

    def _kill(self) -> None:
        self._peer.kill()

    def close(self) -> None:
        """End the testee: close its stdin (it exits at EOF), then kill it if it lingers."""
        self._peer.close()

    def _fail(self, message: str, step: str) -> VBProtoError:
        err = self._peer.fail(message, step)
        if isinstance(err, PeerUnsupported):
            return Unsupported(f"testee exited with status 127 during {step}", where=step)
        return err

    def _request(self, method: str, params: dict[str, Any], step: str) -> Any:
        self._seq += 1
        request = {"id": self._seq, "method": method, "params": params}
        if self.frame_log is not None:
            self.frame_log.append(request)
        try:
            msg = self._peer.exchange(request, step)
        except PeerUnsupported as exc:
            raise Unsupported(exc.message, where=step, by="device") from None
        if self.frame_log is not None:
            self.frame_log.append(msg)
        if msg.get("id") != self._seq:
            raise self._fail(
                f"answer id {msg.get('id')!r} does not match request id {self._seq}", step
            )
        try:
            validate_result(msg, "response", step)
        except PeerError as exc:
            raise self._fail(exc.message, step) from None
        if "unsupported" in msg:
            raise Unsupported(_text(msg["unsupported"]) or "unsupported", where=step, by="device")
        if "error" in msg:
            raise PeerError(f"testee reported an error: {_text(msg['error'])}", where=step)
        if "result" not in msg:
            raise self._fail("answer has neither 'result', 'error' nor 'unsupported'", step)
        return msg["result"]

    def _call(self, method: str, params: dict[str, Any], step: str) -> Any:
        if self._proc is None:
            raise PeerError("testee is not running (start failed or it died)", where=step)
        return self._request(method, params, step)

    # --- DeviceUnderTest ---------------------------------------------------------------------
    def start(self, setup: Setup) -> Negotiated:
        if self._proc is not None and self._proc.poll() is not None:
            self._kill()
        if self._proc is None:
            self._spawn()
        result = self._call("start", setup_to_json(setup), "start")
        return negotiated_from_json(result, "start")

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        step = f"avail {role} head {head}"
        params = {"role": role, "head": head, "segments": [segment_to_json(s) for s in segments]}
        result = self._call("avail", params, step)
        if not isinstance(result, dict):
            raise self._fail("avail result must be an object", step)
        validate_result({"used": [], **result}, "used_result", step)
        return used_from_json(result.get("used", []), step)

    def config_read(self, offset: int, size: int) -> bytes:
        step = f"config_read {offset}+{size}"
        result = self._call("config_read", {"offset": offset, "size": size}, step)
        if not isinstance(result, dict):
            raise self._fail("config_read result must be an object", step)
        validate_result(result, "config_read_result", step)
        return _hex(result, "data", step)

    def config_write(self, offset: int, data: bytes) -> None:
        self._call("config_write", {"offset": offset, "data": data.hex()}, f"config_write {offset}")

    def host_request(self, kind: str, params: dict[str, Any]) -> list[Used]:
        step = f"host_request {kind}"
        result = self._call("host_request", {"kind": kind, "params": params}, step)
        if not isinstance(result, dict):
            raise self._fail("host_request result must be an object", step)
        validate_result({"used": [], **result}, "used_result", step)
        return used_from_json(result.get("used", []), step)

    def observe(self) -> dict[str, Any]:
        result = self._call("observe", {}, "observe")
        if not isinstance(result, dict):
            raise self._fail("observe result must be an object", "observe")
        validate_result(result, "observe_result", "observe")
        return result

    def stop(self) -> None:
        """End the case; whatever the testee left behind in its process group (a forked
        child of a testee that has exited) is killed here."""
        try:
            if self._proc is not None:
                self._call("stop", {}, "stop")
        finally:
            self._peer.reap_strays()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._kill()
