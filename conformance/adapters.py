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
import shlex
from typing import Any

from virtio_balloon_proto.errors import UsageError
from virtio_balloon_proto.framing import EXIT_UNSUPPORTED

from .dut import DeviceUnderTest
from .dut_json import setup_to_json
from .python_adapter import PythonDevice, load_python_device
from .stdio_adapter import DEFAULT_TIMEOUT, MAX_FRAME, STDIO_PROTOCOL, StdioDevice

#: exit status 127: a testee that does not support what it was asked (quic-interop-runner)
__all__ = ["EXIT_UNSUPPORTED", "MAX_FRAME", "STDIO_PROTOCOL", "StdioDevice", "open_device"]


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
        # OPTIONS (k=v,k=v) are parsed by the adapter itself (qemu_options.parse_options)
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
