#!/usr/bin/env python3
"""A minimal virtio-balloon testee for the spec profile, written from docs/stdio-protocol.md alone.

It exists to prove that page is enough to write a passing testee (issue 10, item 7): it was
written without reading examples/stdio_testee.py or the reference device, standard library
only, and tests/test_stdio_schema.py runs it through ``conform run --device stdio:...`` over
every spec case of the shipped corpus.  A dict/set-based device: no rings, no memory.

    vbproto conform run --device "stdio:python3 tests/conform_testees/minimal_testee.py"
"""

from __future__ import annotations

import json
import struct
import sys
from typing import Any, BinaryIO

MAX_FRAME = 16 << 20
VERSION_1 = 1 << 32
# transport bits the doc says to offer: VERSION_1, RING_INDIRECT_DESC, RING_EVENT_IDX
TRANSPORT = VERSION_1 | 1 << 28 | 1 << 29
# device_options key -> spec feature bit (docs: "device_options: what to offer")
OPTION_BITS = {
    "must-tell-host": 0,
    "stats-vq": 1,
    "deflate-on-oom": 2,
    "free-page-hint": 3,
    "page-poison": 4,
    "free-page-reporting": 5,
}
STATS_VQ, FREE_PAGE_HINT, PAGE_POISON, PAGE_REPORTING = 1 << 1, 1 << 3, 1 << 4, 1 << 5


class Unsupported(Exception):
    pass


def extents(frames: set[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for f in sorted(frames):
        if out and out[-1][0] + out[-1][1] == f:
            out[-1][1] += 1
        else:
            out.append([f, 1])
    return out


def range_frames(addr: int, length: int) -> range:
    return range(addr >> 12, (addr + length - 1 >> 12) + 1) if length else range(0)


class Device:
    def start(self, p: dict[str, Any]) -> dict[str, Any]:
        if p["profile"] != "spec":
            raise Unsupported(f"profile {p['profile']} not implemented")
        self.order = "<" if p["endian"] == "le" else ">"
        offered = TRANSPORT
        for key, bit in OPTION_BITS.items():
            if p["device_options"].get(key):
                offered |= 1 << bit
        self.accepted = p["driver_features"] & offered
        self.config = bytearray(
            16 if offered & PAGE_POISON else 12 if offered & FREE_PAGE_HINT else 8
        )
        roles = ["inflate", "deflate"]
        for role, bit in (("stats", STATS_VQ), ("free_page", FREE_PAGE_HINT),
                          ("reporting", PAGE_REPORTING)):
            if self.accepted & bit:
                roles.append(role)
        self.balloon: set[int] = set()
        self.stats: dict[str, int] = {}
        self.stats_head: int | None = None
        self.hinted: set[int] = set()
        self.hint_cmd: int | None = None  # the driver's latest command id
        self.reported: set[int] = set()
        return {"offered": offered, "accepted": self.accepted,
                "queues": {r: i for i, r in enumerate(roles)}, "config_size": len(self.config)}

    def _u32_config(self, offset: int) -> int:
        return int.from_bytes(self.config[offset:offset + 4], "little")

    def _set_config(self, offset: int, value: int) -> None:
        self.config[offset:offset + 4] = value.to_bytes(4, "little")

    def avail(self, role: str, head: int, segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = b"".join(bytes.fromhex(s["data"]) for s in segments if not s["writable"])
        done = [{"id": head, "len": 0, "written": ""}]
        if role in ("inflate", "deflate"):
            n = len(out) // 4
            pfns = struct.unpack(f"{self.order}{n}I", out[:4 * n])
            if role == "inflate":
                self.balloon.update(pfns)
            else:
                self.balloon.difference_update(pfns)
            return done
        if role == "stats":
            self.stats = {}
            for i in range(0, len(out) - 9, 10):
                tag, val = struct.unpack(f"{self.order}HQ", out[i:i + 10])
                if tag <= 15:
                    self.stats[str(tag)] = val
            # a driver that sends a second buffer while one is held: give the old one back
            # (dropping it is QEMU <= 2.5's bug, conformance/zoo qemu-stats-second-buffer-lost)
            old, self.stats_head = self.stats_head, head
            return [{"id": old, "len": 0, "written": ""}] if old is not None else []
        if role == "free_page":
            if len(out) == 4:
                self.hint_cmd = struct.unpack(f"{self.order}I", out)[0]
            elif self.hint_cmd is not None and self.hint_cmd == self._u32_config(8):
                for s in segments:
                    if s["writable"]:
                        self.hinted.update(range_frames(s["addr"], s["len"]))
            return done
        if role == "reporting":
            if not self.accepted & PAGE_POISON:
                for s in segments:
                    if s["writable"]:
                        self.reported.update(range_frames(s["addr"], s["len"]))
            return done
        raise Unsupported(f"queue role {role}")

    def host_request(self, kind: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        if kind == "set-target":
            self._set_config(0, params["num_pages"])
            return []
        if kind == "stats-poll":
            if self.stats_head is None:
                return []
            head, self.stats_head = self.stats_head, None
            return [{"id": head, "len": 0, "written": ""}]
        if kind in ("hint-start", "hint-stop"):
            self._set_config(8, params["cmd_id"])
            return []
        raise Unsupported(f"host request {kind}")

    def observe(self) -> dict[str, Any]:
        state: dict[str, Any] = {"balloon": extents(self.balloon), "num_pages": self._u32_config(0),
                                 "actual": self._u32_config(4), "stats": self.stats}
        if self.accepted & FREE_PAGE_HINT:
            state["hint_cmd_id"] = self._u32_config(8)
            state["hinted"] = extents(self.hinted)
        if self.accepted & PAGE_REPORTING:
            state["reported"] = extents(self.reported)
        return state


def dispatch(dev: Device, method: str, p: dict[str, Any]) -> dict[str, Any]:
    if method == "hello":
        return {"protocol": 1, "name": "minimal-testee", "profiles": ["spec"]}
    if method == "start":
        return dev.start(p)
    if method == "avail":
        return {"used": dev.avail(p["role"], p["head"], p["segments"])}
    if method == "config_read":
        return {"data": bytes(dev.config[p["offset"]:p["offset"] + p["size"]]).hex()}
    if method == "config_write":
        data = bytes.fromhex(p["data"])
        dev.config[p["offset"]:p["offset"] + len(data)] = data
        return {}
    if method == "host_request":
        return {"used": dev.host_request(p["kind"], p["params"])}
    if method == "observe":
        return dev.observe()
    if method == "stop":
        return {}
    raise ValueError(f"unknown method {method!r}")


def read_frame(inp: BinaryIO) -> Any:
    head = inp.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack("<I", head)
    if n > MAX_FRAME:
        raise SystemExit(f"frame of {n} bytes")
    return json.loads(inp.read(n).decode("utf-8"))


def write_frame(out: BinaryIO, obj: Any) -> None:
    body = json.dumps(obj).encode("utf-8")
    out.write(struct.pack("<I", len(body)) + body)
    out.flush()


def main() -> int:
    dev = Device()
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while (req := read_frame(inp)) is not None:
        try:
            reply = {"id": req["id"], "result": dispatch(dev, req["method"], req["params"])}
        except Unsupported as exc:
            reply = {"id": req["id"], "unsupported": str(exc)}
        except Exception as exc:  # a bug here is the device failing the step
            reply = {"id": req["id"], "error": f"{type(exc).__name__}: {exc}"}
        write_frame(out, reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
