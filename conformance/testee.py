"""The testee side of the stdio protocol (docs/stdio-protocol.md), for devices written in Python.

``serve(device)`` answers the runner's frames on stdin/stdout by calling a
:class:`~virtio_balloon_proto.models.interface.DeviceUnderTest`; run it as a program with

    python -m virtio_balloon_proto.conformance.testee module:Class     # or path/to/file.py:Class
    vbproto conform run --device "stdio:python -m virtio_balloon_proto.conformance.testee mymod:Dev"

so a Python device can be tested exactly as an external one is (separate process, framing,
timeouts), and the runner's stdio adapter is exercised against a real testee.
"""

from __future__ import annotations

import sys
from typing import Any, BinaryIO

from virtio_balloon_proto.errors import VBProtoError
from virtio_balloon_proto.framing import read_frame, write_frame
from virtio_balloon_proto.models.interface import DeviceUnderTest, Segment, Setup, Unsupported

PROTOCOL = 1
MAX_FRAME = 16 << 20


def _used(used: list[Any]) -> dict[str, Any]:
    return {"used": [{"id": u.id, "len": u.length, "written": u.written.hex()} for u in used]}


def _dispatch(dev: DeviceUnderTest, method: str, p: dict[str, Any]) -> Any:
    if method == "hello":
        return {"protocol": PROTOCOL, "name": getattr(dev, "name", type(dev).__name__),
                "profiles": ["spec", "v3", "hybrid"]}
    if method == "start":
        n = dev.start(Setup(p["profile"], p["driver_features"], p["endian"], p["word_size"],
                            p["word_order"], p["page_size"], dict(p["device_options"]),
                            p["memory_size"]))
        return {"offered": n.offered, "accepted": n.accepted, "queues": n.queues,
                "config_size": n.config_size}
    if method == "avail":
        segs = [Segment(s["addr"], s["len"], s["writable"], bytes.fromhex(s["data"]))
                for s in p["segments"]]
        return _used(dev.avail(p["role"], p["head"], segs))
    if method == "config_read":
        return {"data": dev.config_read(p["offset"], p["size"]).hex()}
    if method == "config_write":
        dev.config_write(p["offset"], bytes.fromhex(p["data"]))
        return {}
    if method == "host_request":
        return _used(dev.host_request(p["kind"], dict(p["params"])))
    if method == "observe":
        return dev.observe()
    if method == "stop":
        dev.stop()
        return {}
    raise VBProtoError(f"unknown method {method!r}")


def serve(dev: DeviceUnderTest, stdin: BinaryIO | None = None,
          stdout: BinaryIO | None = None) -> int:
    """Answer frames until EOF; returns the exit status (0)."""
    rd = stdin or sys.stdin.buffer
    wr = stdout or sys.stdout.buffer
    while True:
        msg = read_frame(rd, MAX_FRAME)
        if msg is None:
            return 0
        if not isinstance(msg, dict):
            raise VBProtoError("request is not a JSON object")
        rid = msg.get("id")
        try:
            result = _dispatch(dev, str(msg.get("method")), msg.get("params") or {})
            reply: dict[str, Any] = {"id": rid, "result": result}
        except Unsupported as exc:
            reply = {"id": rid, "unsupported": str(exc)}
        except Exception as exc:  # the device's bug: an error answer, the runner reports it
            reply = {"id": rid, "error": f"{type(exc).__name__}: {exc}"}
        write_frame(wr, reply)


def main(argv: list[str] | None = None) -> int:
    from .adapters import open_device
    from .python_adapter import load_python_device

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m virtio_balloon_proto.conformance.testee module:Class|reference",
              file=sys.stderr)
        return 2
    try:
        dev: Any = open_device("reference") if args[0] == "reference" else (
            load_python_device(args[0]).inner)
    except VBProtoError as exc:
        print(f"testee: {exc}", file=sys.stderr)
        return 2
    return serve(dev)


if __name__ == "__main__":
    sys.exit(main())
