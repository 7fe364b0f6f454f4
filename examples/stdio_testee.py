#!/usr/bin/env python3
"""A small but real virtio-balloon device speaking the vbproto stdio protocol.

Plain Python, standard library only -- written from docs/stdio-protocol.md alone, as a device
team would.  It implements the ``spec`` profile without the optional queues:

* inflateq/deflateq: arrays of ``__virtio32`` PFNs (4 KiB units, whatever the guest page size;
  VIRTIO 1.2 5.5.6), read across all driver-readable segments of the chain; a trailing partial
  word is ignored (QEMU does the same); every chain is used with len 0.
* statsq: the driver's buffer is read when it arrives (10-byte entries, tag + value, guest byte
  order for a legacy device) and held until the host polls, then used with len 0; unknown tags
  are ignored (V-ST1).
* config: ``num_pages``, ``actual``: 8 bytes, little-endian even for legacy (5.5.4).

Run it under the runner::

    vbproto conform run --device "stdio:python3 examples/stdio_testee.py" --profile spec
"""

from __future__ import annotations

import json
import struct
import sys

PROTOCOL = 1
MUST_TELL_HOST, STATS_VQ, DEFLATE_ON_OOM = 1 << 0, 1 << 1, 1 << 2
VERSION_1 = 1 << 32
OFFERED = MUST_TELL_HOST | STATS_VQ | DEFLATE_ON_OOM | VERSION_1
KNOWN_STAT_TAGS = range(16)  # VIRTIO_BALLOON_S_SWAP_IN .. S_DIRECT_RECLAIM (Linux 6.12)
MAX_FRAME = 16 << 20


class Unsupported(Exception):
    pass


def extents(pages: set[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for p in sorted(pages):
        if out and out[-1][0] + out[-1][1] == p:
            out[-1][1] += 1
        else:
            out.append([p, 1])
    return out


class Balloon:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.pages: set[int] = set()
        self.num_pages = 0
        self.actual = 0
        self.stats: dict[int, int] = {}
        self.stats_head: int | None = None
        self.order = "<"
        self.started = False
        self.features = 0
        self.ram_frames = 0

    # -- requests ------------------------------------------------------------------------
    def start(self, p: dict) -> dict:
        if p["profile"] != "spec":
            raise Unsupported(f"profile {p['profile']} (this testee implements spec only)")
        self.reset()
        self.started = True
        accepted = p["driver_features"] & OFFERED
        self.order = "<" if accepted & VERSION_1 or p.get("endian", "le") == "le" else ">"
        queues = {"inflate": 0, "deflate": 1}
        if accepted & STATS_VQ:
            queues["stats"] = 2
        self.features = accepted
        self.ram_frames = p.get("memory_size", 256 << 20) >> 12
        return {"offered": OFFERED, "accepted": accepted, "queues": queues, "config_size": 8}

    def avail(self, p: dict) -> dict:
        role, head = p["role"], p["head"]
        data = b"".join(bytes.fromhex(s["data"]) for s in p["segments"] if not s["writable"])
        if role in ("inflate", "deflate"):
            n = len(data) // 4  # whole words only; a partial tail is ignored
            # PFNs outside guest RAM are skipped (QEMU: trace virtio_balloon_bad_addr)
            pfns = [
                p for p in struct.unpack(f"{self.order}{n}I", data[: 4 * n]) if p < self.ram_frames
            ]
            if role == "inflate":
                self.pages.update(pfns)
            else:
                self.pages.difference_update(pfns)
            return {"used": [{"id": head, "len": 0, "written": ""}]}
        if role == "stats" and self.features & STATS_VQ:
            used = []
            if self.stats_head is not None:  # a second buffer: give the old one back
                used.append({"id": self.stats_head, "len": 0, "written": ""})
            for off in range(0, len(data) - len(data) % 10, 10):
                tag, val = struct.unpack_from(f"{self.order}HQ", data, off)
                if tag in KNOWN_STAT_TAGS:
                    self.stats[tag] = val
            self.stats_head = head
            return {"used": used}
        raise Unsupported(f"queue {role}")

    def host_request(self, p: dict) -> dict:
        kind, params = p["kind"], p.get("params", {})
        if kind == "set-target":
            self.num_pages = int(params["num_pages"]) & 0xFFFFFFFF
            return {"used": []}
        if kind == "stats-poll" and self.features & STATS_VQ:
            if self.stats_head is None:
                return {"used": []}
            head, self.stats_head = self.stats_head, None
            return {"used": [{"id": head, "len": 0, "written": ""}]}
        raise Unsupported(f"host request {kind}")

    def config(self) -> bytes:
        return struct.pack("<II", self.num_pages, self.actual)

    def config_read(self, p: dict) -> dict:
        off, size = p["offset"], p["size"]
        cfg = self.config()
        if off < 0 or size < 0 or off + size > len(cfg):
            raise ValueError(f"config read {off}+{size} outside {len(cfg)} bytes")
        return {"data": cfg[off : off + size].hex()}

    def config_write(self, p: dict) -> dict:
        off, data = p["offset"], bytes.fromhex(p["data"])
        cfg = bytearray(self.config())
        if off < 0 or off + len(data) > len(cfg):
            raise ValueError(f"config write {off}+{len(data)} outside {len(cfg)} bytes")
        # only `actual` (bytes 4..7) is driver-writable; num_pages belongs to the device
        for i, b in enumerate(data):
            if 4 <= off + i < 8:
                cfg[off + i] = b
        self.actual = struct.unpack_from("<I", cfg, 4)[0]
        return {}

    def observe(self, p: dict) -> dict:
        return {
            "balloon": extents(self.pages),
            "num_pages": self.num_pages,
            "actual": self.actual,
            "stats": {str(k): v for k, v in sorted(self.stats.items())},
        }


def read_frame(stream) -> dict | None:
    head = stream.read(4)
    if len(head) < 4:
        return None  # EOF: the runner is done
    (n,) = struct.unpack("<I", head)
    if n > MAX_FRAME:
        raise SystemExit(f"request frame of {n} bytes is too long")
    return json.loads(stream.read(n).decode("utf-8"))


def write_frame(stream, msg: dict) -> None:
    body = json.dumps(msg, separators=(",", ":")).encode("utf-8")
    stream.write(struct.pack("<I", len(body)) + body)
    stream.flush()


def main() -> int:
    dev = Balloon()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    handlers = {
        "start": dev.start,
        "avail": dev.avail,
        "config_read": dev.config_read,
        "config_write": dev.config_write,
        "host_request": dev.host_request,
        "observe": dev.observe,
        "stop": lambda p: (dev.reset(), {})[1],
    }
    while (req := read_frame(stdin)) is not None:
        method, params = req.get("method"), req.get("params", {})
        try:
            if method == "hello":
                result = {
                    "protocol": PROTOCOL,
                    "name": "example-stdio-testee",
                    "profiles": ["spec"],
                }
            elif method in handlers:
                result = handlers[method](params)
            else:
                raise Unsupported(f"method {method}")
            write_frame(stdout, {"id": req.get("id"), "result": result})
        except Unsupported as exc:
            write_frame(stdout, {"id": req.get("id"), "unsupported": str(exc)})
        except (KeyError, ValueError, TypeError, struct.error) as exc:
            write_frame(stdout, {"id": req.get("id"), "error": f"{type(exc).__name__}: {exc}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
