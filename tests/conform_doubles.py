"""Test doubles of the DeviceUnderTest interface for the conformance-runner tests.

``DictDevice`` is a small dict-backed spec-profile balloon (PFN arrays, stats, config) used as
the *reference* in these tests until the real reference model exists; the ``Faulty*`` classes
each carry one realistic defect.  ``spec_trace`` writes a real vbproto-trace/1 file with the
trace package's writer.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from virtio_balloon_proto.conformance.dut import Negotiated, Segment, Setup, Unsupported, Used
from virtio_balloon_proto.profiles import VERSION_1, QueueRole, get_profile
from virtio_balloon_proto.trace import (
    AvailEvent,
    ConfigEvent,
    HostEvent,
    TraceHeader,
    UsedEvent,
    write_trace,
)

SPEC = get_profile("spec")
OFFERED = SPEC.mask(["MUST_TELL_HOST", "STATS_VQ", "DEFLATE_ON_OOM"]) | VERSION_1


class DictDevice:
    name = "dict-device (test double)"

    def __init__(self) -> None:
        self.pages: set[int] = set()
        self.num_pages = 0
        self.actual = 0
        self.stats: dict[str, int] = {}
        self.stats_head: int | None = None
        self.order = "<"

    def start(self, setup: Setup) -> Negotiated:
        if setup.profile != "spec":
            raise Unsupported(f"profile {setup.profile}")
        self.__init__()  # type: ignore[misc]
        self.order = "<" if setup.endian == "le" else ">"
        acc = setup.driver_features & OFFERED
        return Negotiated(OFFERED, acc, {"inflate": 0, "deflate": 1, "stats": 2}, 8)

    def pfns(self, segments: list[Segment]) -> list[int]:
        data = b"".join(s.data for s in segments if not s.writable)
        n = len(data) // 4
        return list(struct.unpack(f"{self.order}{n}I", data[: 4 * n]))

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role == "inflate":
            self.pages.update(self.pfns(segments))
            return [Used(head, 0)]
        if role == "deflate":
            self.pages.difference_update(self.pfns(segments))
            return [Used(head, 0)]
        if role == "stats":
            data = b"".join(s.data for s in segments if not s.writable)
            for off in range(0, len(data) - len(data) % 10, 10):
                tag, val = struct.unpack_from(f"{self.order}HQ", data, off)
                if tag < 16:
                    self.stats[str(tag)] = val
            self.stats_head = head
            return []
        raise Unsupported(role)

    def config_read(self, offset: int, size: int) -> bytes:
        return struct.pack("<II", self.num_pages, self.actual)[offset : offset + size]

    def config_write(self, offset: int, data: bytes) -> None:
        cfg = bytearray(struct.pack("<II", self.num_pages, self.actual))
        for i, b in enumerate(data):
            if 4 <= offset + i < 8:
                cfg[offset + i] = b
        self.actual = struct.unpack_from("<I", cfg, 4)[0]

    def host_request(self, kind: str, params: dict[str, Any]) -> list[Used]:
        if kind == "set-target":
            self.num_pages = params["num_pages"]
            return []
        if kind == "stats-poll":
            if self.stats_head is None:
                return []
            h, self.stats_head = self.stats_head, None
            return [Used(h, 0)]
        raise Unsupported(kind)

    def observe(self) -> dict[str, Any]:
        ext: list[list[int]] = []
        for p in sorted(self.pages):
            if ext and ext[-1][0] + ext[-1][1] == p:
                ext[-1][1] += 1
            else:
                ext.append([p, 1])
        return {
            "balloon": ext,
            "num_pages": self.num_pages,
            "actual": self.actual,
            "stats": dict(self.stats),
        }

    def stop(self) -> None:
        pass


class FaultyWrongId(DictDevice):
    """Acknowledges inflate buffers with the wrong head id (off by one)."""

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        used = super().avail(role, head, segments)
        return [Used(u.id + 1, u.length) for u in used] if role == "inflate" else used


class FaultyUsedLen(DictDevice):
    """Writes the buffer length as used len where 0 is expected."""

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        used = super().avail(role, head, segments)
        return [Used(u.id, sum(s.length for s in segments)) for u in used]


class FaultyIgnoresDeflate(DictDevice):
    """Acks deflate buffers but never removes the pages."""

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role == "deflate":
            return [Used(head, 0)]
        return super().avail(role, head, segments)


class FaultyDropsTail(DictDevice):
    """Drops the last PFN of every inflate buffer (an off-by-one in the loop)."""

    def pfns(self, segments: list[Segment]) -> list[int]:
        return super().pfns(segments)[:-1]


class FaultyByteOrder(DictDevice):
    """Reads a big-endian (legacy) guest's PFNs as little-endian."""

    def start(self, setup: Setup) -> Negotiated:
        neg = super().start(setup)
        self.order = "<"
        return neg


class FaultyNeverAcksInflate(DictDevice):
    """Never returns inflate buffers (Firecracker's > 1024-byte bug, generalised)."""

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        used = super().avail(role, head, segments)
        return [] if role == "inflate" else used


class FaultyCrashes(DictDevice):
    """Raises a plain Python exception on deflate (a device bug, not a transport one)."""

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role == "deflate":
            raise KeyError("boom")
        return super().avail(role, head, segments)


def spec_trace(
    path: Path,
    *,
    endian: str = "le",
    inflate: tuple[int, ...] = (0x100, 0x101, 0x102, 0x200),
    deflate: tuple[int, ...] = (0x101,),
    stats: tuple[tuple[int, int], ...] = ((4, 1000), (5, 4096), (99, 7)),
) -> Path:
    """A realistic spec trace: target, inflate + ack, actual, deflate + ack, actual, stats."""
    negotiated = SPEC.mask(["STATS_VQ"]) | (VERSION_1 if endian == "le" else 0)
    header = TraceHeader.for_features("spec", OFFERED, negotiated, virtio_endian=endian)  # type: ignore[arg-type]
    o = "<" if endian == "le" else ">"
    INF, DEF, S = QueueRole.INFLATE, QueueRole.DEFLATE, QueueRole.STATS
    stats_bytes = b"".join(struct.pack(f"{o}HQ", t, v) for t, v in stats)
    events = [
        AvailEvent(S, 2, (stats_bytes,), id=0),
        HostEvent("set-target", num_pages=len(inflate)),
        AvailEvent(INF, 0, (struct.pack(f"{o}{len(inflate)}I", *inflate),), id=0),
        UsedEvent(INF, 0, 0, id=0),
        ConfigEvent(True, 4, struct.pack("<I", len(inflate))),
        AvailEvent(DEF, 1, (struct.pack(f"{o}{len(deflate)}I", *deflate),), id=0),
        UsedEvent(DEF, 1, 0, id=0),
        ConfigEvent(True, 4, struct.pack("<I", len(inflate) - len(deflate))),
        HostEvent("stats-request"),
        UsedEvent(S, 2, 0, id=0),
        ConfigEvent(False, 0, struct.pack("<II", len(inflate), len(inflate) - len(deflate))),
    ]
    write_trace(path, header, events)
    return path
