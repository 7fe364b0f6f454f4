"""The events of a ``vbproto-trace/1`` trace as frozen dataclasses (docs/trace-format.md).

One header (:mod:`.header`), then events: avail/used buffers (with their
:class:`TraceDescriptor` s), config reads and writes, features, status, host actions and
what a conformance run observed.  These classes hold decoded values (ints, bytes, roles); the
JSON shape (hex strings, field names) lives only in ``to_json``/``from_json`` here, so the
rest of the package never touches raw dicts.  ``from_json`` expects a record that already
passed the schema (``trace/reader.py`` validates first); :func:`event_from_json` converts the
few remaining type errors to TraceError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import TraceError
from ..findings import Finding
from ..profiles import QueueRole
from ..virtqueue.chains import Chain
from .header import _ROLES, _bytes, _int64, hex64


@dataclass(frozen=True, slots=True)
class TraceDescriptor:
    """A descriptor as found in the ring (split: next; packed: id; indirect: table)."""

    addr: int
    len: int
    flags: int
    next: int | None = None
    id: int | None = None
    index: int | None = None
    table: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"addr": hex64(self.addr), "len": self.len, "flags": self.flags}
        for k in ("next", "id", "index"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        if self.table is not None:
            out["table"] = hex64(self.table)
        return out

    @classmethod
    def from_json(cls, o: Mapping[str, Any]) -> TraceDescriptor:
        t = o.get("table")
        return cls(
            _int64(o["addr"]),
            o["len"],
            o["flags"],
            o.get("next"),
            o.get("id"),
            o.get("index"),
            None if t is None else _int64(t),
        )


def _common(ev: Any, out: dict[str, Any]) -> dict[str, Any]:
    if ev.ts is not None:
        out["ts"] = ev.ts
    if ev.note is not None:
        out["note"] = ev.note
    return out


@dataclass(frozen=True, slots=True)
class AvailEvent:
    """A buffer the driver made available.

    ``out`` holds the driver-written bytes of each device-readable buffer in chain order
    (None where the capture did not see them); ``in_sizes`` the sizes of the device-writable
    buffers (None where unknown).  ``descriptors`` is the chain as walked, when known.
    """

    role: QueueRole
    queue: int
    out: tuple[bytes | None, ...]
    in_sizes: tuple[int | None, ...] = ()
    id: int | None = None
    descriptors: tuple[TraceDescriptor, ...] | None = None
    avail_idx: int | None = None
    wrap: int | None = None
    ref: str | None = None
    findings: tuple[Finding, ...] = ()
    ts: float | None = None
    note: str | None = None

    @property
    def out_bytes(self) -> bytes:
        """All captured driver-written bytes, concatenated (unknown parts are skipped)."""
        return b"".join(b for b in self.out if b is not None)

    @classmethod
    def from_chain(cls, chain: Chain, role: QueueRole, queue: int, **kw: Any) -> AvailEvent:
        descs = tuple(
            TraceDescriptor(
                d.addr,
                d.len,
                d.flags,
                None if chain.wrap_counter is not None else d.next,
                d.id,
                d.index,
                d.table,
            )
            for d in chain.descriptors
        )
        return cls(
            role=role,
            queue=queue,
            out=tuple(d.data for d in chain.out_descriptors),
            in_sizes=chain.in_sizes,
            id=chain.head,
            descriptors=descs,
            avail_idx=chain.avail_idx & 0xFFFF if chain.avail_idx >= 0 else None,
            wrap=chain.wrap_counter,
            findings=chain.findings,
            **kw,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "avail", "role": QueueRole(self.role).value}
        out["queue"] = self.queue
        if self.id is not None:
            out["id"] = self.id
        if self.ref is not None:
            out["ref"] = self.ref
        if self.avail_idx is not None:
            out["avail_idx"] = self.avail_idx
        if self.wrap is not None:
            out["wrap"] = self.wrap
        if self.descriptors is not None:
            out["descriptors"] = [d.to_json() for d in self.descriptors]
        out["out"] = [None if b is None else b.hex() for b in self.out]
        out["in"] = list(self.in_sizes)
        if self.findings:
            out["findings"] = [f.to_json() for f in self.findings]
        return _common(self, out)

    @classmethod
    def from_json(cls, o: Mapping[str, Any]) -> AvailEvent:
        d = o.get("descriptors")
        # list comprehensions: no generator object per field (issue 13: 7,168 avail records)
        return cls(
            role=_ROLES[o["role"]],
            queue=o["queue"],
            out=tuple([None if h is None else _bytes(h) for h in o["out"]]),
            in_sizes=tuple(o["in"]),
            id=o.get("id"),
            descriptors=None if d is None else tuple([TraceDescriptor.from_json(x) for x in d]),
            avail_idx=o.get("avail_idx"),
            wrap=o.get("wrap"),
            ref=o.get("ref"),
            findings=tuple([
                Finding(f["rule"], f["message"], f.get("field"), f.get("offset"))
                for f in o.get("findings", ())
            ]),
            ts=o.get("ts"),
            note=o.get("note"),
        )


@dataclass(frozen=True, slots=True)
class UsedEvent:
    """A buffer the device returned: id, the used length, and device-written bytes if seen."""

    role: QueueRole
    queue: int
    len: int
    id: int | None = None
    data: bytes | None = None
    used_idx: int | None = None
    ref: str | None = None
    ts: float | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "used", "role": QueueRole(self.role).value}
        out["queue"] = self.queue
        if self.id is not None:
            out["id"] = self.id
        if self.ref is not None:
            out["ref"] = self.ref
        if self.used_idx is not None:
            out["used_idx"] = self.used_idx
        out["len"] = self.len
        if self.data is not None:
            out["data"] = self.data.hex()
        return _common(self, out)

    @classmethod
    def from_json(cls, o: Mapping[str, Any]) -> UsedEvent:
        data = o.get("data")
        return cls(
            _ROLES[o["role"]],
            o["queue"],
            o["len"],
            o.get("id"),
            None if data is None else _bytes(data),
            o.get("used_idx"),
            o.get("ref"),
            o.get("ts"),
            o.get("note"),
        )


@dataclass(frozen=True, slots=True)
class ConfigEvent:
    """A driver read or write of device config space (always little-endian, PROTOCOL.md 3)."""

    write: bool
    offset: int
    data: bytes
    ts: float | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "type": "config_write" if self.write else "config_read",
            "offset": self.offset,
            "data": self.data.hex(),
        }
        return _common(self, out)

    @classmethod
    def from_json(cls, o: Mapping[str, Any]) -> ConfigEvent:
        return cls(
            o["type"] == "config_write", o["offset"], _bytes(o["data"]), o.get("ts"), o.get("note")
        )


@dataclass(frozen=True, slots=True)
class FeaturesEvent:
    """Feature negotiation: what the device offered, what the driver wrote, FEATURES_OK."""

    offered: int | None = None
    driver: int | None = None
    accepted: bool | None = None
    ts: float | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "features"}
        if self.offered is not None:
            out["offered"] = hex64(self.offered)
        if self.driver is not None:
            out["driver"] = hex64(self.driver)
        if self.accepted is not None:
            out["accepted"] = self.accepted
        return _common(self, out)

    @classmethod
    def from_json(cls, o: Mapping[str, Any]) -> FeaturesEvent:
        off, drv = o.get("offered"), o.get("driver")
        return cls(
            None if off is None else _int64(off),
            None if drv is None else _int64(drv),
            o.get("accepted"),
            o.get("ts"),
            o.get("note"),
        )


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A device status write (VIRTIO 1.2 2.1: ACKNOWLEDGE 1, DRIVER 2, DRIVER_OK 4, ...)."""

    value: int
    ts: float | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _common(self, {"type": "status", "value": self.value})

    @classmethod
    def from_json(cls, o: Mapping[str, Any]) -> StatusEvent:
        return cls(o["value"], o.get("ts"), o.get("note"))


HostAction = Literal["set-target", "get-unused-pages", "stats-request", "free-page-hint", "other"]


@dataclass(frozen=True, slots=True)
class HostEvent:
    """A host-side action that explains later driver traffic (new target, v3 request, ...)."""

    action: HostAction
    num_pages: int | None = None
    req_id: int | None = None
    cmd_id: int | None = None
    detail: str | None = None
    ts: float | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "host", "action": self.action}
        if self.num_pages is not None:
            out["num_pages"] = self.num_pages
        if self.req_id is not None:
            out["req_id"] = hex64(self.req_id)
        if self.cmd_id is not None:
            out["cmd_id"] = self.cmd_id
        if self.detail is not None:
            out["detail"] = self.detail
        return _common(self, out)

    @classmethod
    def from_json(cls, o: Mapping[str, Any]) -> HostEvent:
        r = o.get("req_id")
        return cls(
            o["action"],
            o.get("num_pages"),
            None if r is None else _int64(r),
            o.get("cmd_id"),
            o.get("detail"),
            o.get("ts"),
            o.get("note"),
        )


ObserveWhat = Literal["device", "state", "error", "gap", "end"]


@dataclass(frozen=True, slots=True)
class ObserveEvent:
    """What a conformance run saw of the device besides the used ring (format 1.1).

    ``what``: ``device`` (value: offered, accepted, queues, config_size after negotiation),
    ``state`` (value: the adapter's observe() dict, plus ``config`` as hex when read),
    ``error`` (value: message: the device failed at the transport level),
    ``gap`` (value: message: a driver event that could not be replayed, e.g. bytes not
    captured), ``end`` (the device was given every chance to act: a chain still outstanding
    now will never be used).
    """

    what: ObserveWhat
    value: Mapping[str, Any] = field(default_factory=dict)
    ts: float | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _common(self, {"type": "observe", "what": self.what, "value": dict(self.value)})

    @classmethod
    def from_json(cls, o: Mapping[str, Any]) -> ObserveEvent:
        return cls(o["what"], dict(o.get("value", {})), o.get("ts"), o.get("note"))


Event = (
    AvailEvent | UsedEvent | ConfigEvent | FeaturesEvent | StatusEvent | HostEvent | ObserveEvent
)

_FROM_JSON: dict[str, Any] = {
    "avail": AvailEvent.from_json,
    "used": UsedEvent.from_json,
    "config_read": ConfigEvent.from_json,
    "config_write": ConfigEvent.from_json,
    "features": FeaturesEvent.from_json,
    "status": StatusEvent.from_json,
    "host": HostEvent.from_json,
    "observe": ObserveEvent.from_json,
}


def event_from_json(o: Mapping[str, Any], *, where: str | None = None) -> Event:
    """Build an event from a schema-valid record."""
    try:
        ev: Event = _FROM_JSON[o["type"]](o)
    except (KeyError, ValueError, TypeError) as exc:
        raise TraceError(f"record does not convert: {exc!r}", where=where) from None
    return ev


def event_to_json(ev: Event) -> dict[str, Any]:
    return ev.to_json()
