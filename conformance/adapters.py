"""Adapters: how the runner reaches a device under test, chosen by a spec string.

* ``reference``            -- the built-in reference device (``models/device.py``)
* ``python:module:Class``  -- a class implementing :class:`~.dut.DeviceUnderTest`, instantiated
  with no arguments; ``module`` may also be a path to a ``.py`` file
* ``stdio:'CMD ...'``      -- an external process of any language speaking the framed JSON
  protocol of ``docs/stdio-protocol.md`` on its stdin/stdout
* ``qemu[:OPTIONS]``       -- QEMU over qtest (``qemu_adapter.py``); OPTIONS is ``k=v,k=v``

The reference and QEMU adapters are imported lazily: they live in modules other people write,
and the runner must stay importable (and the stdio/python adapters usable) without them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.resources
import importlib.util
import json
import re
import shlex
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import cache
from pathlib import Path
from typing import Any

from virtio_balloon_proto.errors import PeerError, UsageError, VBProtoError
from virtio_balloon_proto.framing import EXIT_UNSUPPORTED, FramedProcess, PeerUnsupported
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.schemas import shipped_schema

from .dut import DeviceUnderTest, Negotiated, Segment, Setup, Unsupported, Used

#: protocol version spoken by this runner (docs/stdio-protocol.md)
STDIO_PROTOCOL = 1
#: frames longer than this are refused before anything is allocated
MAX_FRAME = 16 << 20
#: exit status 127: a testee that does not support what it was asked (quic-interop-runner)
__all__ = ["EXIT_UNSUPPORTED", "MAX_FRAME", "STDIO_PROTOCOL", "StdioDevice", "open_device"]
DEFAULT_TIMEOUT = 5.0


# --------------------------------------------------------------------------- validation
SCHEMA_RESOURCE = "stdio-protocol.schema.json"


def _protocol_schema() -> dict[str, Any]:
    return shipped_schema(SCHEMA_RESOURCE, "virtio_balloon_proto.conformance")


@cache
def _result_validator(name: str) -> Any:
    """A validator for ``$defs/<name>`` of the shipped protocol schema (refs resolve inside)."""
    schema = _protocol_schema()
    # imported here: only an answer the fast checks below do not certainly accept needs the
    # schema, and jsonschema costs ~40-60 ms of every conform command's start-up
    from virtio_balloon_proto.schemas import ecma_validator

    return ecma_validator({"$defs": schema["$defs"], "$ref": f"#/$defs/{name}"})


_U64 = (1 << 64) - 1
#: results whose extent lists are checked by :func:`_extents_ok` before the schema sees the rest
_EXTENT_KEYS = {"observe_result": ("balloon", "hinted", "reported")}


def _extents_ok(v: Any) -> bool:
    """True if ``v`` certainly matches ``$defs/extents`` (a list of ``[u64, u64]`` lists).

    A fast sufficient test (plain ints only): False sends the value to the schema validator,
    which decides (and names the problem), so the verdict is the schema's either way.  The
    schema's per-item walk costs ~0.1 ms per extent: a 262,144-page balloon took 117 s.
    A PageSet (what an in-process device may answer: its extents are u64 by construction)
    is accepted as it is."""
    if type(v) is not list:
        return type(v) is PageSet
    for e in v:
        if type(e) is not list or len(e) != 2:
            return False
        a, b = e
        if type(a) is not int or type(b) is not int or not (0 <= a <= _U64 and 0 <= b <= _U64):
            return False
    return True


_HEX = re.compile(r"(?:[0-9a-f]{2})*")


def _used_ok(raw: Any) -> bool:
    """True if ``raw`` certainly matches ``$defs/used_result`` (the same contract as
    :func:`_extents_ok`: False leaves the verdict to the schema)."""
    if type(raw) is not dict or type(raw.get("used")) is not list:
        return False
    for u in raw["used"]:
        if type(u) is not dict or not u.keys() <= {"id", "len", "written"}:
            return False
        i, n, w = u.get("id"), u.get("len"), u.get("written", "")
        if (type(i) is not int or type(n) is not int or not (0 <= i <= 0xFFFF)
                or not (0 <= n <= 0xFFFFFFFF) or type(w) is not str or not _HEX.fullmatch(w)):
            return False
    return True


_DIGITS = re.compile(r"[0-9]+")
_PAGE_SIZE_KEY = re.compile(r"0x[0-9a-f]+")


def _observe_ok(raw: Any) -> bool:
    """True if ``raw`` certainly matches ``$defs/observe_result`` (the same contract as
    :func:`_extents_ok`); anything unusual goes to the schema."""
    if type(raw) is not dict:
        return False
    for k, each in (("unused", _extents_ok), ("unused_done", lambda v: type(v) is int and v >= 0)):
        m = raw.get(k, {})
        if type(m) is not dict or not all(
                type(a) is str and _PAGE_SIZE_KEY.fullmatch(a) and each(v) for a, v in m.items()):
            return False
    for k in ("num_pages", "actual", "hint_cmd_id"):
        v = raw.get(k, 0)
        if type(v) is not int or not 0 <= v <= 0xFFFFFFFF:
            return False
    stats = raw.get("stats", {})
    if type(stats) is not dict or not all(
            type(k) is str and _DIGITS.fullmatch(k) and type(v) is int and 0 <= v <= _U64
            for k, v in stats.items()):
        return False
    return all(_extents_ok(raw[k]) for k in ("balloon", "hinted", "reported") if k in raw)


def validate_result(raw: Any, name: str, step: str) -> None:
    """Check a testee's result against ``$defs/<name>`` of stdio-protocol.schema.json; the
    first problem (with its JSON path) becomes a PeerError naming the step."""
    if ((name == "extents" and _extents_ok(raw)) or (name == "used_result" and _used_ok(raw))
            or (name == "observe_result" and _observe_ok(raw))):
        return
    keys = _EXTENT_KEYS.get(name, ())
    if keys and type(raw) is dict and all(_extents_ok(raw[k]) for k in keys if k in raw):
        raw = {k: ([] if k in keys else v) for k, v in raw.items()}  # checked above
    err = next(iter(_result_validator(name).iter_errors(raw)), None)
    if err is not None:
        path = "/".join(str(p) for p in err.absolute_path) or "(result)"
        raise PeerError(f"{name.replace('_', ' ')} does not follow the protocol schema: "
                        f"{path}: {err.message[:200]}", where=step)


# --------------------------------------------------------------------------- JSON mapping
def setup_to_json(setup: Setup) -> dict[str, Any]:
    return {
        "profile": setup.profile,
        "driver_features": setup.driver_features,
        "endian": setup.endian,
        "word_size": setup.word_size,
        "word_order": setup.word_order,
        "page_size": setup.page_size,
        "device_options": dict(setup.device_options),
        "memory_size": setup.memory_size,
    }


def segment_to_json(seg: Segment) -> dict[str, Any]:
    return {"addr": seg.addr, "len": seg.length, "writable": seg.writable, "data": seg.data.hex()}


def _int(obj: dict[str, Any], key: str, step: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise PeerError(f"'{key}' must be an integer in [{lo}, {hi}], got {v!r}", where=step)
    return v


def _hex(obj: dict[str, Any], key: str, step: str, default: str | None = None) -> bytes:
    v = obj.get(key, default)
    if not isinstance(v, str):
        raise PeerError(f"'{key}' must be a hex string, got {type(v).__name__}", where=step)
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise PeerError(f"'{key}' is not valid hex: {v[:40]!r}", where=step) from None


def used_from_json(raw: Any, step: str) -> list[Used]:
    if not isinstance(raw, list):
        raise PeerError("'used' must be a list", where=step)
    out = []
    for i, u in enumerate(raw):
        if not isinstance(u, dict):
            raise PeerError(f"used[{i}] is not an object", where=step)
        written = _hex(u, "written", step, "")
        out.append(
            Used(
                id=_int(u, "id", step, hi=0xFFFF),
                length=_int(u, "len", step, hi=0xFFFFFFFF),
                written=written,
            )
        )
    return out


def negotiated_from_json(raw: Any, step: str) -> Negotiated:
    if not isinstance(raw, dict):
        raise PeerError("start result must be an object", where=step)
    validate_result(raw, "start_result", step)
    queues = raw.get("queues")
    if not isinstance(queues, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 65536
        for k, v in queues.items()
    ):
        raise PeerError("'queues' must map role names to queue indices", where=step)
    return Negotiated(
        offered=_int(raw, "offered", step),
        accepted=_int(raw, "accepted", step),
        queues=dict(queues),
        config_size=_int(raw, "config_size", step, hi=4096),
    )


def _checked_used(raw: Any, step: str) -> list[Used]:
    """An in-process device's used buffers, checked as a stdio testee's ``used`` answer is."""
    if not isinstance(raw, (list, tuple)):
        raise PeerError(f"expected a list of Used, got {type(raw).__name__}", where=step)
    if all(type(u) is Used and type(u.id) is int and 0 <= u.id <= 0xFFFF
           and type(u.length) is int and 0 <= u.length <= 0xFFFFFFFF and type(u.written) is bytes
           for u in raw):
        # certainly what the schema and used_from_json accept and give back (the usual answer:
        # one Used(head, 0) per buffer), without a JSON round trip per step
        return list(raw)
    as_json = []
    for i, u in enumerate(raw):
        if not isinstance(u, Used) or not isinstance(u.written, (bytes, bytearray)):
            raise PeerError(f"used[{i}] is {type(u).__name__}, not Used with bytes written",
                            where=step)
        as_json.append({"id": u.id, "len": u.length, "written": bytes(u.written).hex()})
    validate_result({"used": as_json}, "used_result", step)
    return used_from_json(as_json, step)


def _checked_observe(result: Any) -> dict[str, Any]:
    """An in-process device's observation, checked as a stdio testee's is (``balloon_delta``'s
    ``add``/``remove`` as extents too)."""
    if not isinstance(result, dict):
        raise PeerError(f"observe returned {type(result).__name__}, not a dict", where="observe")
    validate_result(result, "observe_result", "observe")
    delta = result.get("balloon_delta")
    if delta is not None:
        if not isinstance(delta, dict):
            raise PeerError("balloon_delta must be an object", where="observe")
        for key in ("add", "remove"):
            validate_result(delta.get(key, []), "extents", "observe")
    return result


def _text(v: Any, limit: int = 300) -> str:
    """A testee's free text for a report: a string (or the JSON of anything else), cut to
    ``limit`` characters; control characters and lone surrogates are escaped by the reports."""
    t = v if isinstance(v, str) else json.dumps(v, default=str)[:limit]
    return t[:limit]


# --------------------------------------------------------------------------- python adapter
class PythonDevice:
    """Wraps an in-process DeviceUnderTest so that its exceptions become our errors.

    A device's own bug (any exception that is not Unsupported or one of ours) is reported as a
    PeerError naming the step, never as a traceback from the runner.  With a ``timeout``, each
    step runs on a worker thread: a step that does not return in time is reported as a hang
    (a thread cannot be killed, so the stuck instance is abandoned and the next ``start``
    builds a fresh one from ``factory``).
    """

    def __init__(self, inner: DeviceUnderTest, label: str, *,
                 factory: Callable[[], DeviceUnderTest] | None = None,
                 timeout: float | None = None) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", label) or label
        self.factory = factory
        self.timeout = timeout
        self._pool: ThreadPoolExecutor | None = None
        self._hung = False

    def _call(self, step: str, fn: Any, *args: Any) -> Any:
        if self._hung:
            raise PeerError("the device hung in an earlier step of this case", where=step)
        try:
            if self.timeout is None:
                return fn(*args)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="vbproto-dut")
            fut = self._pool.submit(fn, *args)
            try:
                return fut.result(timeout=self.timeout)
            except FutureTimeout:
                self._hung = True
                self._pool.shutdown(wait=False)  # the stuck thread is abandoned
                self._pool = None
                raise PeerError(f"no answer within {self.timeout:g} s (hang)",
                                where=step) from None
        except (Unsupported, PeerError):
            raise
        except VBProtoError as exc:
            raise PeerError(f"device raised {type(exc).__name__}: {exc}", where=step) from None
        except Exception as exc:  # the device's own bug: report, do not crash the run
            raise PeerError(f"device raised {type(exc).__name__}: {exc}", where=step) from None

    # every answer goes through the checks a stdio testee's answer does (the protocol schema's
    # result definitions and the typed conversions): an in-process device is a peer too
    def start(self, setup: Setup) -> Negotiated:
        if self._hung and self.factory is not None:
            self.inner = self.factory()  # a fresh instance: the old one is stuck in a thread
            self._hung = False
        neg = self._call("start", self.inner.start, setup)
        if not isinstance(neg, Negotiated):
            raise PeerError(f"start returned {type(neg).__name__}, not Negotiated", where="start")
        return negotiated_from_json({"offered": neg.offered, "accepted": neg.accepted,
                                     "queues": neg.queues, "config_size": neg.config_size},
                                    "start")

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        step = f"avail {role} head {head}"
        return _checked_used(self._call(step, self.inner.avail, role, head, segments), step)

    def config_read(self, offset: int, size: int) -> bytes:
        step = f"config_read {offset}+{size}"
        data = self._call(step, self.inner.config_read, offset, size)
        if not isinstance(data, (bytes, bytearray)):
            raise PeerError(f"config_read returned {type(data).__name__}, not bytes", where=step)
        return bytes(data)

    def config_write(self, offset: int, data: bytes) -> None:
        self._call(f"config_write {offset}", self.inner.config_write, offset, data)

    def host_request(self, kind: str, params: dict[str, Any]) -> list[Used]:
        step = f"host_request {kind}"
        return _checked_used(self._call(step, self.inner.host_request, kind, params), step)

    def observe(self) -> dict[str, Any]:
        return _checked_observe(self._call("observe", self.inner.observe))

    def observe_changes(self) -> dict[str, Any]:
        """The inner device's ``observe_changes`` (balloon as a delta) when it has one, else its
        full ``observe``."""
        fn = getattr(self.inner, "observe_changes", None)
        return _checked_observe(self._call("observe", fn or self.inner.observe))

    def observe_compact(self) -> dict[str, Any]:
        """The inner device's ``observe_compact`` (the balloon as a PageSet) when it has one,
        else its ``observe``."""
        fn = getattr(self.inner, "observe_compact", None)
        return _checked_observe(self._call("observe", fn or self.inner.observe))

    def stop(self) -> None:
        self._call("stop", self.inner.stop)


def load_python_device(target: str, timeout: float | None = None) -> PythonDevice:
    module_name, sep, class_name = target.rpartition(":")
    if not sep or not module_name or not class_name:
        raise UsageError(
            f"python adapter wants python:module:Class, got python:{target}", field="device"
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            spec = importlib.util.spec_from_file_location(f"_vbproto_dut_{path.stem}", path)
            if spec is None or spec.loader is None:
                raise UsageError(f"cannot load {path}", field="device")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(
            f"cannot import {module_name}: {type(exc).__name__}: {exc}", field="device"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UsageError(f"{module_name} has no attribute {class_name!r}", field="device")
    try:
        inst = cls()
    except Exception as exc:
        raise UsageError(
            f"cannot instantiate {class_name}(): {type(exc).__name__}: {exc}", field="device"
        ) from None
    if not isinstance(inst, DeviceUnderTest):
        missing = [
            m
            for m in (
                "start",
                "avail",
                "config_read",
                "config_write",
                "host_request",
                "observe",
                "stop",
            )
            if not callable(getattr(inst, m, None))
        ]
        raise UsageError(
            f"{class_name} does not implement DeviceUnderTest "
            f"(missing: {', '.join(missing) or 'name'})",
            field="device",
        )
    return PythonDevice(inst, f"python:{target}", factory=cls, timeout=timeout)


# --------------------------------------------------------------------------- stdio adapter
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


# --------------------------------------------------------------------------- factory
def open_device(spec: str, *, timeout: float = DEFAULT_TIMEOUT) -> DeviceUnderTest:
    """Build the device under test named by ``spec`` (see module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "reference":
        if rest:
            raise UsageError("'reference' takes no options", field="device")
        try:
            mod = importlib.import_module("virtio_balloon_proto.models.device")
        except ImportError as exc:
            raise UsageError(
                f"the reference device is not available: {exc}", field="device"
            ) from None
        return PythonDevice(mod.ReferenceDevice(), "reference")  # ours: no thread needed
    if kind == "python":
        return load_python_device(rest, timeout=timeout)
    if kind == "stdio":
        try:
            argv = shlex.split(rest)
        except ValueError as exc:
            raise UsageError(f"cannot split stdio command: {exc}", field="device") from None
        return StdioDevice(argv, timeout=timeout)
    if kind == "qemu":
        try:
            mod = importlib.import_module("virtio_balloon_proto.conformance.qemu_adapter")
        except ImportError as exc:
            raise UsageError(f"the QEMU adapter is not available: {exc}", field="device") from None
        # OPTIONS (k=v,k=v) are parsed by the adapter itself (qemu_adapter.parse_options)
        return mod.QemuDevice(rest, timeout=timeout)  # type: ignore[no-any-return]
    raise UsageError(
        f"unknown device spec {spec!r} "
        "(reference | python:module:Class | stdio:'CMD' | qemu[:OPTS])",
        field="device",
    )


def close_device(dev: Any) -> None:
    close = getattr(dev, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()


__all__ = [
    "EXIT_UNSUPPORTED",
    "MAX_FRAME",
    "STDIO_PROTOCOL",
    "PythonDevice",
    "StdioDevice",
    "close_device",
    "open_device",
    "setup_to_json",
]
