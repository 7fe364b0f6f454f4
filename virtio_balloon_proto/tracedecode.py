"""Decode a recorded trace message by message (``vbproto decode``), streaming.

Each ``avail`` event is decoded by its queue role under the trace header's profile, byte
order, bitmap layout, page size and negotiated features; a ``used`` event that carries
device-written bytes (the v3 misc request) is decoded against the chain it returns.  A buffer
that cannot be decoded at all is reported with its error and decoding goes on: one bad buffer
in a capture must not hide the rest.  Memory stays bounded: events are read one at a time and
the summary keeps page sets as extents.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .codecs import DecodedBuffer, Segment, decode_buffer
from .errors import TraceError, VBProtoError
from .findings import Finding
from .framemap import extent_list
from .pageset import PageAccumulator, PageSet
from .trace import (
    AvailEvent,
    ConfigEvent,
    Event,
    HostEvent,
    TraceHeader,
    TraceReader,
    UsedEvent,
)
from .trace.lengths import absurd_lengths
from .virtqueue.chains import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_WRITE
from .wire import WireLayout
from .wire.messages import splice_json


def layout_of(header: TraceHeader) -> WireLayout:
    return WireLayout(header.virtio_endian, header.bitmap_word_bits, header.bitmap_word_order,
                      header.page_size)


def segments_of(ev: AvailEvent) -> list[Segment]:
    """The chain of an ``avail`` event as codec segments (descriptor addresses where the trace
    recorded them; an INDIRECT descriptor itself carries no payload and is left out)."""
    outs = list(ev.out)
    ins = list(ev.in_sizes)
    segs: list[Segment] = []
    if ev.descriptors is not None:
        oi = ii = 0
        for d in ev.descriptors:
            if d.flags & VIRTQ_DESC_F_INDIRECT:
                continue
            if d.flags & VIRTQ_DESC_F_WRITE:
                known = ins[ii] if ii < len(ins) else None
                segs.append(Segment(d.addr, d.len if known is None else known, True))
                ii += 1
            else:
                data = outs[oi] if oi < len(outs) else None
                if data is None:
                    raise TraceError(f"out descriptor at {d.addr:#x}: its bytes were not captured")
                segs.append(Segment(d.addr, len(data), False, data))
                oi += 1
        return segs
    for data in outs:
        if data is None:
            raise TraceError("an out buffer's bytes were not captured")
        segs.append(Segment(0, len(data), False, data))
    for size in ins:
        if size is None:
            raise TraceError("an in buffer of unknown size")
        segs.append(Segment(0, size, True))
    return segs


@dataclass(frozen=True, slots=True)
class DecodedEvent:
    """One decoded message of a trace."""

    line: int
    role: str
    queue: int
    head: int | None
    direction: str  # "avail" (driver -> device) or "used" (device -> driver)
    buffer: DecodedBuffer | None
    used_len: int | None = None
    error: str | None = None
    #: findings about a buffer that could not be decoded (its lengths, the ring walker's)
    findings: tuple[Finding, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return self._json(self.buffer.to_json() if self.buffer is not None else None)

    def iter_json(self, chunk: int = 4096) -> Iterator[str]:
        """``json.dumps(self.to_json())`` in pieces: a buffer's fields and pages are written
        ``chunk`` records or runs at a time, so one 7 MiB buffer (~400 MB of JSON) prints in
        memory that follows the buffer, not its text."""
        if self.buffer is None:
            yield json.dumps(self.to_json())
            return
        yield from splice_json(self._json(self.buffer.json_template()),
                               self.buffer.json_holes(chunk))

    def _json(self, buffer_json: dict[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"line": self.line, "event": self.direction, "role": self.role,
                               "queue": self.queue}
        if self.head is not None:
            out["head"] = self.head
        if self.used_len is not None:
            out["len"] = self.used_len
        if buffer_json is not None:
            out.update({k: v for k, v in buffer_json.items() if k != "role"})
        if self.error is not None:
            out["error"] = self.error.split("\n")[0]
        if self.buffer is None and self.findings:
            out["findings"] = [f.to_json() for f in self.findings]
        return out


@dataclass
class Summary:
    """Totals over a trace: pages per queue, net balloon, unused-page reports, stats seen."""

    messages: Counter[str] = field(default_factory=Counter)
    pages: dict[str, int] = field(default_factory=dict)
    _balloon: PageAccumulator = field(default_factory=PageAccumulator)
    unused: dict[int, PageSet] = field(default_factory=dict)
    reported: PageSet = field(default_factory=PageSet.empty)
    hinted: PageSet = field(default_factory=PageSet.empty)
    #: pages hinted under a command id that was not the device's current one (VIRTIO 1.2
    #: 5.5.6.5.2: the device MUST ignore them) -- not counted in ``hinted``
    stale_hinted: PageSet = field(default_factory=PageSet.empty)
    #: the device's current free_page_hint_cmd_id, once the trace shows it (host event or a
    #: config read), and whether the driver's last command-id buffer matched it
    hint_cmd_id: int | None = None
    hint_active: bool = False
    stats: dict[int, int] = field(default_factory=dict)
    stats_buffers: int = 0
    findings: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    targets: list[int] = field(default_factory=list)
    #: the header's window (format 1.2), as JSON; None: not said
    window: dict[str, Any] | None = None
    #: used elements naming no chain of the trace, by role: chains made available before the
    #: window (or a device's stray id): their pages are unknown, not in ``balloon``
    before_window: Counter[str] = field(default_factory=Counter)

    def add(self, d: DecodedEvent) -> None:
        self.messages[f"{d.role}/{d.direction}"] += 1
        if d.error is not None:
            self.errors += 1
        b = d.buffer
        if b is None:
            for f in d.findings:
                self.findings[f.rule] += 1
            return
        for f in b.findings:
            self.findings[f.rule] += 1
        n = b.page_count  # a PFN buffer's own count: no page set built (issue 13)
        if n:
            self.pages[d.role] = self.pages.get(d.role, 0) + n
        if d.role == "inflate":
            frames = b.frames()
            if frames is not None:
                self._balloon.add_frames(frames)
            else:
                self._balloon.add(b.pages)
        elif d.role == "deflate":
            self._balloon.remove(b.pages)
        elif d.role == "reporting":
            self.reported = self.reported | b.pages
        elif d.role == "free_page":
            if b.kind == "hint-cmd" and b.decoded is not None:
                cid = int(b.decoded.message.cmd_id)  # type: ignore[union-attr]
                self.hint_active = cid >= 2 and self.hint_cmd_id in (None, cid)
            elif self.hint_active and self.hint_cmd_id not in (0, 1):
                self.hinted = self.hinted | b.pages
            else:
                self.stale_hinted = self.stale_hinted | b.pages
        elif d.role == "misc" and b.decoded is not None and b.kind in ("bmap", "hybrid"):
            m = b.decoded.message
            req = getattr(m, "req_id", getattr(m, "id", 0))
            self.unused[req] = self.unused.get(req, PageSet.empty()) | b.pages
        elif d.role == "stats" and b.decoded is not None and d.direction == "avail":
            self.stats_buffers += 1
            for e in b.decoded.message.entries:  # type: ignore[union-attr]
                self.stats[e.tag] = e.val

    def see_hint_id(self, ev: Event) -> None:
        """Follow the device's free_page_hint_cmd_id: host free-page-hint events and config
        reads of offset 8 (a new id ends the driver's current round)."""
        new: int | None = None
        if isinstance(ev, HostEvent) and ev.action == "free-page-hint" and ev.cmd_id is not None:
            new = ev.cmd_id
        elif isinstance(ev, ConfigEvent) and not ev.write and (
                ev.offset <= 8 and ev.offset + len(ev.data) >= 12):
            new = int.from_bytes(ev.data[8 - ev.offset: 12 - ev.offset], "little")
        if new is not None and new != self.hint_cmd_id:
            self.hint_cmd_id = new
            self.hint_active = False

    @property
    def balloon(self) -> PageSet:
        """Net balloon: pages inflated and not deflated since, in trace order."""
        return self._balloon.value

    def to_json(self, pages: bool = True) -> dict[str, Any]:
        """The summary as JSON; ``pages=False`` leaves out the ``pages`` extent lists (a text
        summary prints counts: a 2 M-extent balloon's list costs seconds to build)."""
        def ext(ps: PageSet) -> dict[str, Any]:
            return {"frames": len(ps), **({"pages": extent_list(ps)} if pages else {})}

        return {
            "messages": dict(sorted(self.messages.items())),
            "pages_per_queue": dict(sorted(self.pages.items())),
            "net_balloon": ext(self.balloon),
            "unused_reports": {f"{k:#x}": ext(v) for k, v in sorted(self.unused.items())},
            "reported": ext(self.reported),
            "hinted": {"frames": len(self.hinted), "stale_frames": len(self.stale_hinted)},
            "stats": {"buffers": self.stats_buffers,
                      "last": {str(k): v for k, v in sorted(self.stats.items())}},
            "host_targets": self.targets,
            "findings": dict(sorted(self.findings.items())),
            "errors": self.errors,
            "window": self.window,
            "used_before_window": dict(sorted(self.before_window.items())),
        }


def decode_trace(reader: TraceReader, roles: set[str] | None = None,
                 summary: Summary | None = None) -> Iterator[DecodedEvent]:
    """Decode every message of ``reader`` (optionally only the queues in ``roles``)."""
    h = reader.header
    layout = layout_of(h)
    chains: dict[tuple[str, int], list[Segment]] = {}
    if summary is not None and h.window is not None:
        summary.window = h.window.to_json()
    outstanding: set[tuple[str, int]] = set()  # chains made available, decodable or not
    for line, ev in reader.numbered_events():
        if isinstance(ev, AvailEvent) and ev.id is not None:
            outstanding.add((ev.role.value, ev.id))
        elif isinstance(ev, UsedEvent) and ev.id is not None:
            key = (ev.role.value, ev.id)
            if key in outstanding:
                outstanding.discard(key)
            elif summary is not None:
                summary.before_window[key[0]] += 1
        if isinstance(ev, HostEvent) and summary is not None and ev.num_pages is not None:
            summary.targets.append(ev.num_pages)
        if summary is not None:
            summary.see_hint_id(ev)
        d = _decode_event(h, layout, line, ev, chains)
        if d is None or (roles is not None and d.role not in roles):
            continue
        if summary is not None:
            summary.add(d)
        yield d


def _decode_event(h: TraceHeader, layout: WireLayout, line: int, ev: Event,
                  chains: dict[tuple[str, int], list[Segment]]) -> DecodedEvent | None:
    if isinstance(ev, AvailEvent):
        role = ev.role.value
        try:
            segs = segments_of(ev)
        except TraceError as exc:
            # not checkable: say so, with what the lengths alone prove (trace/lengths.py)
            found = tuple(f for f in absurd_lengths(h, ev) if f not in ev.findings)
            found = (*ev.findings, *found)
            msg = exc.message + "; not checkable" + "".join(f"\n    ! {f}" for f in found)
            return DecodedEvent(line, role, ev.queue, ev.id, "avail", None, error=msg,
                                findings=found)
        if ev.id is not None:
            chains[(role, ev.id)] = segs
        try:
            buf = decode_buffer(h.profile, role, segs, layout, features=h.features_negotiated)
        except VBProtoError as exc:
            return DecodedEvent(line, role, ev.queue, ev.id, "avail", None, error=str(exc))
        if buf.findings or ev.findings:
            buf = buf.with_findings((*ev.findings, *buf.findings))
        return DecodedEvent(line, role, ev.queue, ev.id, "avail", buf)
    if isinstance(ev, UsedEvent):
        role = ev.role.value
        segs_used = chains.pop((role, ev.id), None) if ev.id is not None else None
        if ev.data and segs_used is not None and role == "misc":
            try:
                buf = decode_buffer(h.profile, role, [s for s in segs_used if s.writable], layout,
                                    features=h.features_negotiated, written=ev.data)
            except VBProtoError as exc:
                return DecodedEvent(line, role, ev.queue, ev.id, "used", None, ev.len, str(exc))
            return DecodedEvent(line, role, ev.queue, ev.id, "used", buf, ev.len)
        return DecodedEvent(line, role, ev.queue, ev.id, "used", None, ev.len)
    return None
