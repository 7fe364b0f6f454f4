"""The ``python:module:Class`` adapter: an in-process :class:`~.dut.DeviceUnderTest`.

:class:`PythonDevice` wraps a device so that its exceptions become our errors (a device's
own bug is a PeerError naming the step, a step past its timeout a hang);
:func:`load_python_device` finds the class by module name or ``.py`` path.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from virtio_balloon_proto.errors import PeerError, UsageError, VBProtoError

from .dut import DeviceUnderTest, Negotiated, Segment, Setup, Unsupported, Used
from .dut_json import _checked_observe, _checked_used, negotiated_from_json


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
