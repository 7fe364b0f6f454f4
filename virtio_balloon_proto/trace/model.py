"""Records of a ``vbproto-trace/1`` trace as frozen dataclasses (docs/trace-format.md).

One header, then events.  These classes hold decoded values (ints, bytes, roles); the JSON
shape (hex strings, field names) lives only in ``to_json``/``from_json`` here, so the rest of
the package never touches raw dicts.  ``from_json`` expects a record that already passed the
schema (``trace/io.py`` validates first) and converts the few remaining type errors to
TraceError.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .. import __version__
from ..errors import TraceError
from ..findings import Finding
from ..profiles import QueueRole, get_profile
from ..virtqueue.chains import Chain

FORMAT = "vbproto-trace/1"
#: minor version 1 adds the header's ``memory`` (guest RAM regions) and ``observe`` events
#: (what a conformance run saw the device do); readers accept both, writers use 1.1 only when
#: a trace carries either
FORMAT_1_1 = "vbproto-trace/1.1"
#: minor version 2 adds the header's ``window`` (where the capture starts and ends, the host
#: page size, what the source could see); readers accept 1, 1.1 and 1.2, writers use the
#: lowest version that holds the header
FORMAT_1_2 = "vbproto-trace/1.2"
FORMATS = (FORMAT, FORMAT_1_1, FORMAT_1_2)
Endian = Literal["le", "be"]
WindowStart = Literal["reset", "mid"]
WindowEnd = Literal["quiesced", "cut"]
#: what a source can capture (``TraceWindow.captured``): record types (``config``: every config
#: read and write; ``config-actual``: only accesses to num_pages and actual, bytes 0-7, as QEMU's
#: virtio_balloon_get_config / set_config trace events show them -- a poison_val write is
#: invisible there), plus the bytes of device-readable buffers (``driver-bytes``) and of used
#: buffers (``device-bytes``)
CAPTURABLE = ("status", "features", "config", "config-actual", "host", "avail", "used",
              "driver-bytes", "device-bytes")


def hex64(v: int) -> str:
    return f"{v:#x}"


def _int64(s: str) -> int:
    return int(s, 16)


def _bytes(s: str) -> bytes:
    return bytes.fromhex(s)


#: role text -> QueueRole by one dict lookup (an Enum call is ~1 us, twice per avail/used
#: record: issue 13); a name that is no role raises KeyError, which conversions report
_ROLES: dict[str, QueueRole] = {r.value: r for r in QueueRole}


@dataclass(frozen=True, slots=True)
class TraceSource:
    tool: str = "vbproto"
    version: str = __version__
    command: str | None = None
    provenance: str | None = None
    created: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tool": self.tool, "version": self.version}
        for k in ("command", "provenance", "created"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out

    @classmethod
    def from_json(cls, o: Mapping[str, Any]) -> TraceSource:
        return cls(o["tool"], o["version"], o.get("command"), o.get("provenance"), o.get("created"))


@dataclass(frozen=True, slots=True)
class TraceWindow:
    """Where a capture sits in the device's life (format 1.2, docs/trace-format.md "Windows").

    ``start``: ``reset`` -- the device was reset inside the capture (everything since is in
    it); ``mid`` -- it was not: the device may hold buffers and balloon pages from before.
    ``end``: ``quiesced`` -- the device was given every chance to act before the capture ended
    (a buffer still outstanding will never be used); ``cut`` -- the capture stopped at an
    arbitrary moment (outstanding buffers are in flight).  ``host_page_size``: the host's page
    size in bytes where known.  ``captured``: what the source could see (:data:`CAPTURABLE`);
    None means everything.  A ``null`` out entry of an event still marks one buffer not seen.
    """

    start: WindowStart = "mid"
    end: WindowEnd = "cut"
    host_page_size: int | None = None
    captured: tuple[str, ...] | None = None

    def sees(self, what: str) -> bool:
        return self.captured is None or what in self.captured

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"start": self.start, "end": self.end}
        if self.host_page_size is not None:
            out["host_page_size"] = self.host_page_size
        if self.captured is not None:
            out["captured"] = list(self.captured)
        return out

    @classmethod
    def from_json(cls, o: Mapping[str, Any]) -> TraceWindow:
        cap = o.get("captured")
        return cls(o["start"], o["end"], o.get("host_page_size"),
                   None if cap is None else tuple(cap))


@dataclass(frozen=True, slots=True)
class TraceHeader:
    """Everything a decoder needs to know before the first event (PROTOCOL.md sections 1-4)."""

    profile: str
    features_offered: int
    features_negotiated: int
    #: byte order of ``__virtio`` fields: "le" with VERSION_1, else the guest's order
    virtio_endian: Endian = "le"
    #: v3 bitmaps: the guest's ``unsigned long`` size and byte order (PROTOCOL.md section 2)
    bitmap_word_bits: int = 64
    bitmap_word_order: Endian = "le"
    page_size: int = 4096
    queues: Mapping[QueueRole, int] = field(default_factory=dict)
    index_model: str = "negotiated"
    ring: Literal["split", "packed", "unknown"] = "split"
    source: TraceSource = field(default_factory=TraceSource)
    #: guest RAM as (guest-physical start, size) byte regions; None: not recorded (a page
    #: comparison then assumes one region of 256 MiB at 0, the runner's default guest)
    memory: tuple[tuple[int, int], ...] | None = None
    #: the trace carries observe events (a conformance run's record): written as format 1.1
    observed: bool = field(default=False, compare=False)
    #: where the capture sits in the device's life (format 1.2); None: not said (a reader
    #: then guesses the start from the first event and takes the end as cut)
    window: TraceWindow | None = None

    @property
    def format(self) -> str:
        """The lowest format version that holds this header."""
        if self.window is not None:
            return FORMAT_1_2
        return FORMAT_1_1 if (self.memory is not None or self.observed) else FORMAT

    @classmethod
    def for_features(
        cls,
        profile: str,
        offered: int,
        negotiated: int,
        *,
        index_model: str = "negotiated",
        **kw: Any,
    ) -> TraceHeader:
        """A header whose queue map follows ``index_model`` (profiles.Profile.queue_index)."""
        prof = get_profile(profile)
        queues = prof.queue_index(offered, negotiated, index_model)
        return cls(profile, offered, negotiated, queues=queues, index_model=index_model, **kw)

    def role_of(self, queue: int) -> QueueRole | None:
        for role, idx in self.queues.items():
            if idx == queue:
                return role
        return None

    def to_json(self) -> dict[str, Any]:
        prof = get_profile(self.profile)
        out: dict[str, Any] = {
            "type": "header",
            "format": self.format,
            "profile": self.profile,
            "features": {
                "offered": hex64(self.features_offered),
                "negotiated": hex64(self.features_negotiated),
                "offered_names": prof.names(self.features_offered),
                "negotiated_names": prof.names(self.features_negotiated),
            },
            "virtio_endian": self.virtio_endian,
            "bitmap": {"word_bits": self.bitmap_word_bits, "word_order": self.bitmap_word_order},
            "page_size": self.page_size,
            "queues": {QueueRole(r).value: i for r, i in self.queues.items()},
            "index_model": self.index_model,
            "ring": self.ring,
            "source": self.source.to_json(),
        }
        if self.memory is not None:
            out["memory"] = [{"start": hex64(a), "size": hex64(n)} for a, n in self.memory]
        if self.window is not None:
            out["window"] = self.window.to_json()
        return out

    @property
    def ram_regions(self) -> tuple[tuple[int, int], ...]:
        """Guest RAM regions in bytes (the 256 MiB default when the header has none)."""
        return self.memory if self.memory is not None else ((0, 256 << 20),)

    @classmethod
    def from_json(cls, o: Mapping[str, Any]) -> TraceHeader:
        f = o["features"]
        mem = o.get("memory")
        win = o.get("window")
        return cls(
            profile=o["profile"],
            features_offered=_int64(f["offered"]),
            features_negotiated=_int64(f["negotiated"]),
            virtio_endian=o["virtio_endian"],
            bitmap_word_bits=o["bitmap"]["word_bits"],
            bitmap_word_order=o["bitmap"]["word_order"],
            page_size=o["page_size"],
            queues={QueueRole(r): i for r, i in o["queues"].items()},
            index_model=o["index_model"],
            ring=o["ring"],
            source=TraceSource.from_json(o["source"]),
            memory=None if mem is None else tuple(
                (_int64(r["start"]), _int64(r["size"])) for r in mem),
            observed=o["format"] != FORMAT,
            window=None if win is None else TraceWindow.from_json(win),
        )


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


def header_from_json(o: Mapping[str, Any], *, where: str | None = None) -> TraceHeader:
    try:
        return TraceHeader.from_json(o)
    except (KeyError, ValueError, TypeError) as exc:
        raise TraceError(f"header does not convert: {exc!r}", where=where) from None


def event_to_json(ev: Event) -> dict[str, Any]:
    return ev.to_json()


def semantic_problems(header: TraceHeader | None, o: Mapping[str, Any]) -> Iterable[str]:
    """Rules a schema cannot say: names match values, roles match the queue map, out/in agree
    with the descriptors they came from.  ``o`` is a schema-valid record."""
    t = o["type"]
    if t == "header":
        prof = get_profile(o["profile"])
        f = o["features"]
        for key in ("offered", "negotiated"):
            names = f.get(f"{key}_names")
            if names is not None and names != prof.names(_int64(f[key])):
                yield (
                    f"features.{key}_names {names} do not match {f[key]} in profile "
                    f"{o['profile']!r} ({prof.names(_int64(f[key]))})"
                )
        if "window" in o and o["format"] != FORMAT_1_2:
            yield f"window is a {FORMAT_1_2} field; the header says {o['format']!r}"
        if "memory" in o and o["format"] == FORMAT:
            yield f"memory is a {FORMAT_1_1} field; the header says {o['format']!r}"
        return
    if header is None:
        return
    if header.window is not None:
        yield from _window_problems(header, o)
    if t != "avail" and t != "used":
        return
    role = _ROLES[o["role"]]
    if role in header.queues and header.queues[role] != o["queue"]:
        yield (
            f"role {role.value!r} is queue {header.queues[role]} in the header, not {o['queue']}"
        )
    if role not in header.queues:
        qmap = {r.value: i for r, i in header.queues.items()}
        yield f"role {role.value!r} is not in the header's queue map {qmap}"
    if t == "avail" and o.get("descriptors") is not None:
        bufs = [d for d in o["descriptors"] if not d["flags"] & 4]  # INDIRECT entries name tables
        outs = [d for d in bufs if not d["flags"] & 2]
        ins = [d for d in bufs if d["flags"] & 2]
        if len(outs) != len(o["out"]):
            yield f"{len(o['out'])} out entries but {len(outs)} device-readable descriptors"
        else:
            for k, (d, h) in enumerate(zip(outs, o["out"], strict=True)):
                if h is not None and len(h) // 2 != d["len"]:
                    yield f"out[{k}] holds {len(h) // 2} bytes but its descriptor len is {d['len']}"
        if len(ins) != len(o["in"]):
            yield f"{len(o['in'])} in entries but {len(ins)} device-writable descriptors"
        else:
            for k, (d, n) in enumerate(zip(ins, o["in"], strict=True)):
                if n is not None and n != d["len"]:
                    yield f"in[{k}] is {n} but its descriptor len is {d['len']}"


#: record type -> what a window must have captured to hold it (docs/trace-format.md "Windows")
_CAPTURED_BY = {"status": "status", "features": "features", "config_read": "config",
                "config_write": "config", "host": "host", "avail": "avail", "used": "used"}


def _window_problems(header: TraceHeader, o: Mapping[str, Any]) -> Iterable[str]:
    """A record the header's ``window.captured`` says the source could not see: the trace
    contradicts itself (the oracle would judge it as not captured while holding it)."""
    win = header.window
    if win is None or win.captured is None:
        return
    t = o["type"]
    need = _CAPTURED_BY.get(t)
    cap = list(win.captured)
    if need == "config" and "config" not in win.captured and "config-actual" in win.captured:
        n = len(o["data"]) // 2
        if not o["offset"] + n <= 8:
            yield (f"a {t} record of bytes {o['offset']}-{o['offset'] + n - 1}, but the header's "
                   f"window.captured {cap} has 'config-actual' (bytes 0-7 only), not 'config'")
        return
    if need is not None and need not in win.captured:
        also = " or 'config-actual'" if need == "config" else ""
        yield (f"a {t} record, but the header's window.captured {cap} does not include "
               f"{need!r}{also}")
    elif t == "avail" and "driver-bytes" not in win.captured and any(
            h is not None for h in o["out"]):
        yield ("an avail record with driver-written bytes (a non-null out entry), but the "
               f"header's window.captured {cap} does not include 'driver-bytes'")
    elif t == "used" and o.get("data") is not None and "device-bytes" not in win.captured:
        yield ("a used record with data (bytes the device wrote), but the header's "
               f"window.captured {cap} does not include 'device-bytes'")
