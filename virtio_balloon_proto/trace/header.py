"""The header of a ``vbproto-trace/1`` trace (docs/trace-format.md "Header").

* the format versions (1, 1.1, 1.2) and what a source can capture (:data:`CAPTURABLE`);
* :class:`TraceSource`, :class:`TraceWindow` (where a capture starts and ends, 1.2) and
  :class:`TraceHeader` as frozen dataclasses, with :func:`header_from_json`;
* the JSON field conversions the records share (``hex64`` and the hex parsers).

Like the events (:mod:`.events`), these classes hold decoded values; the JSON shape lives
only in ``to_json``/``from_json``, which expect a record that already passed the schema
(``trace/reader.py`` validates first) and convert the few remaining type errors to TraceError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .. import __version__
from ..errors import TraceError
from ..profiles import QueueRole, get_profile

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


def header_from_json(o: Mapping[str, Any], *, where: str | None = None) -> TraceHeader:
    try:
        return TraceHeader.from_json(o)
    except (KeyError, ValueError, TypeError) as exc:
        raise TraceError(f"header does not convert: {exc!r}", where=where) from None
