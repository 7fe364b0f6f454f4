"""Importing a QEMU trace log (``-trace virtio_balloon_* -trace virtqueue_*``).

:func:`import_qemu_log` maps each log line QEMU's trace events write (virtqueue_pop/fill/flush,
virtio_balloon_handle_output, get/set_config, to_target, set_status) to trace events; the
queue map is learnt from the log itself.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from typing import Any

from ..errors import TraceError
from ..limits import open_regular
from ..profiles import VERSION_1, QueueRole
from .events import AvailEvent, ConfigEvent, Event, HostEvent, StatusEvent, UsedEvent
from .header import TraceSource, TraceWindow
from .import_common import ImportResult, _header

# --- QEMU trace log ----------------------------------------------------------------------------

_HEX = r"(0x[0-9a-fA-F]+|\(nil\))"
_RE = {
    "pop": re.compile(rf"virtqueue_pop vq {_HEX} elem {_HEX} in_num (\d+) out_num (\d+)"),
    "page": re.compile(r"virtio_balloon_handle_output section name: (\S*) gpa: (0x[0-9a-fA-F]+)"),
    "bad": re.compile(r"virtio_balloon_bad_addr (0x[0-9a-fA-F]+)"),
    "fill": re.compile(rf"virtqueue_fill vq {_HEX} elem {_HEX} len (\d+) idx (\d+)"),
    "notify": re.compile(rf"virtio_queue_notify vdev {_HEX} n (\d+) vq {_HEX}"),
    "status": re.compile(rf"virtio_set_status vdev {_HEX} val (\d+)"),
    "set_config": re.compile(r"virtio_balloon_set_config actual: (\d+) oldactual: (\d+)"),
    "get_config": re.compile(r"virtio_balloon_get_config num_pages: (\d+) actual: (\d+)"),
    "to_target": re.compile(
        r"virtio_balloon_to_target balloon target: (0x[0-9a-fA-F]+) num_pages: (\d+)"
    ),
}
_MAX_LOG_LINE = 1 << 20
_PFN_QUEUES = (QueueRole.INFLATE, QueueRole.DEFLATE)


def _log_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    # a regular file only: the log is read twice, and a FIFO must not block open()
    f, _ = open_regular(path, what="QEMU trace log", error=TraceError)
    with f:
        n = 0
        while True:
            raw = f.readline(_MAX_LOG_LINE + 1)
            if not raw:
                return
            n += 1
            if len(raw) > _MAX_LOG_LINE:
                raise TraceError(
                    f"line is longer than {_MAX_LOG_LINE} bytes: not a QEMU trace log",
                    where=f"{path} line {n}",
                )
            yield n, raw.decode("utf-8", "replace")


def _queue_map(path: str | os.PathLike[str]) -> tuple[dict[str, int], bool, bool]:
    """vq pointer -> queue index: from ``virtio_queue_notify`` lines when present (exact),
    else by pointer order (QEMU allocates the VirtQueue array in one block, q0 lowest); whether
    it was inferred; whether a status write of 0 (a reset) comes before the first buffer."""
    exact: dict[str, int] = {}
    seen: set[int] = set()
    reset: bool | None = None
    for _, line in _log_lines(path):
        m = _RE["notify"].search(line)
        if m:
            exact[m.group(3).lower()] = int(m.group(2))
            continue
        m = _RE["pop"].search(line) or _RE["fill"].search(line)
        if m:
            seen.add(int(m.group(1), 16))
            reset = bool(reset)
            continue
        m = _RE["status"].search(line) if reset is None else None
        if m and int(m.group(2)) == 0:
            reset = True
    known = {int(p, 16): i for p, i in exact.items()}
    inferred = False
    # a stride from two exactly known queues places the rest exactly
    stride = None
    if len(known) >= 2:
        (p0, i0), (p1, i1) = sorted(known.items())[:2]
        if i1 != i0 and (p1 - p0) % (i1 - i0) == 0:
            stride = (p1 - p0) // (i1 - i0)
    out = {f"{p:#x}": i for p, i in known.items()}
    rest = sorted(seen - set(known))
    for k, p in enumerate(rest):
        if stride and known:
            p0, i0 = next(iter(sorted(known.items())))
            if (p - p0) % stride == 0:
                out[f"{p:#x}"] = i0 + (p - p0) // stride
                continue
        out[f"{p:#x}"] = k  # pointer order
        inferred = True
    return out, inferred, bool(reset)


def import_qemu_log(
    path: str | os.PathLike[str],
    *,
    profile: str,
    offered: int | None = None,
    negotiated: int | None = None,
    index_model: str = "offered",
    endian: str = "le",
    source: TraceSource | None = None,
    quiet_ok: bool = False,
) -> ImportResult:
    """The device's view from a QEMU trace log (PROTOCOL.md, research/qemu-peer.md section 3).

    Each ``virtqueue_pop`` starts a buffer; the ``handle_output``/``bad_addr`` lines after it
    (one per PFN, in array order) rebuild its PFN array as ``__virtio32`` bytes.  The log has no
    descriptor addresses and no bytes of other queues: those buffers get ``null`` out/in
    entries.  Defaults: QEMU's own feature set (STATS_VQ|VERSION_1) and its index model.

    A log with no virtio trace line at all raises TraceError (it is not a QEMU trace log),
    unless ``quiet_ok``: the caller switched the events on itself, so silence is a quiet device.
    """
    if negotiated is None:
        negotiated = (1 << 1) | (VERSION_1 if endian == "le" else 0)
    vq_map, inferred, reset = _queue_map(path)
    prov = "QEMU -trace log"
    if inferred:
        prov += "; queue indices inferred from vq pointer order (no virtio_queue_notify lines)"
    header = _header(
        profile,
        offered,
        negotiated,
        endian,
        index_model,
        "unknown",
        source or TraceSource(provenance=prov),
        {},
        # a log sees the device from QEMU's start: it starts at a reset when a status write
        # of 0 comes before any buffer; it ends wherever the log was taken (cut).  It has
        # status, config and host lines, and the bytes of PFN buffers only.  Its config lines
        # (virtio_balloon_get_config/set_config) show num_pages and actual, never poison_val
        window=TraceWindow("reset" if reset else "mid", "cut", None, (
            "status", "config-actual", "host", "avail", "used", "driver-bytes")),
    )
    pfn_fmt = "<I" if endian == "le" else ">I"

    def role_of(vq: str, where: str) -> tuple[QueueRole, int]:
        idx = vq_map.get(vq.lower())
        role = None if idx is None else header.role_of(idx)
        if idx is None or role is None:
            raise TraceError(
                f"vq {vq} (queue {idx}) has no role under profile {profile} with features "
                f"{header.features_negotiated:#x} (give --negotiated/--offered)",
                where=where,
            )
        return role, idx

    def events() -> Iterator[Event]:
        pending: dict[str, Any] | None = None
        anything = False

        def flush() -> Iterator[Event]:
            nonlocal pending
            if pending is None:
                return
            p, pending = pending, None
            role, idx = p["role"], p["queue"]
            if role in _PFN_QUEUES and p["out_num"] >= 1:
                data = b"".join(struct.pack(pfn_fmt, x) for x in p["pfns"])
                out: tuple[bytes | None, ...] = (data,)
                note = (
                    None
                    if p["out_num"] == 1
                    else f"{p['out_num']} readable buffers, PFN bytes concatenated"
                )
            else:
                out, note = (None,) * p["out_num"], None
            yield AvailEvent(
                role,
                idx,
                out,
                (None,) * p["in_num"],
                ref=p["elem"],
                note=note,
            )

        for n, line in _log_lines(path):
            where = f"{path} line {n}"
            if "virtio_balloon_handle_output" in line or "virtio_balloon_bad_addr" in line:
                m = _RE["page"].search(line)
                gpa = int(m.group(2), 16) if m else None
                if m is None:
                    mb = _RE["bad"].search(line)
                    gpa = int(mb.group(1), 16) if mb else None
                if gpa is None:
                    raise TraceError(f"unrecognised balloon line: {line.strip()}", where=where)
                if pending is None or pending["role"] not in _PFN_QUEUES:
                    raise TraceError("a PFN line outside an inflate/deflate buffer", where=where)
                if gpa & 0xFFF or gpa >> 12 >= 1 << 32:
                    raise TraceError(f"gpa {gpa:#x} is not a 32-bit PFN << 12", where=where)
                pending["pfns"].append(gpa >> 12)
                continue
            m = _RE["pop"].search(line)
            if m:
                yield from flush()
                role, idx = role_of(m.group(1), where)
                in_num, out_num = int(m.group(3)), int(m.group(4))
                if in_num + out_num > 32768:  # a chain has at most Queue Size (<= 32768) descs
                    raise TraceError(f"virtqueue_pop in_num {in_num} + out_num {out_num} is more "
                                     "than a virtqueue's 32768 descriptors", where=where)
                pending = {
                    "role": role,
                    "queue": idx,
                    "elem": m.group(2).lower(),
                    "in_num": in_num,
                    "out_num": out_num,
                    "pfns": [],
                }
                continue
            m = _RE["fill"].search(line)
            if m:
                yield from flush()
                role, idx = role_of(m.group(1), where)
                yield UsedEvent(role, idx, int(m.group(3)), ref=m.group(2).lower())
                continue
            other = _other_event(line)
            if other is not None:
                yield from flush()
                yield other
                anything = True
        yield from flush()
        if not vq_map and not anything and not quiet_ok:
            # no pop/fill/notify/status/config line: not a QEMU trace log (an empty file, a
            # binary, a log of other trace events), not a trace of a quiet device -- it was
            # written as an empty trace, exit 0
            raise TraceError("no QEMU virtio trace line (virtqueue_pop, virtqueue_fill, "
                             "virtio_queue_notify, virtio_set_status, virtio_balloon_*): "
                             "was QEMU run with -trace 'virt*'?", where=str(path))

    return header, events()


def _other_event(line: str) -> Event | None:
    m = _RE["status"].search(line)
    if m:
        return StatusEvent(int(m.group(2)))
    m = _RE["set_config"].search(line)
    if m:
        return ConfigEvent(True, 4, struct.pack("<I", int(m.group(1)) & 0xFFFFFFFF))
    m = _RE["get_config"].search(line)
    if m:
        data = struct.pack("<II", int(m.group(1)) & 0xFFFFFFFF, int(m.group(2)) & 0xFFFFFFFF)
        return ConfigEvent(False, 0, data)
    m = _RE["to_target"].search(line)
    if m:
        return HostEvent("set-target", num_pages=int(m.group(2)), detail=f"target {m.group(1)}")
    return None
