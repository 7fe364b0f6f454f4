"""What every clause check works on: one trace, its chains paired with their used entries, the
device's observations, and the judgement being built.

A trace is judged the same way whether it was captured from a real guest (``conform check``) or
recorded by a live run (``conform run``: the driver side replayed into the device, the device's
used entries and ``observe`` events recorded, trace format 1.1).  Checks never compare a device
with another device: each narrowing of what a device may do is one clause of the catalog, with
its level; where the spec leaves a choice, the check records which one the device made
(:meth:`Judgement.choice`) and does not fail it.

A trace is a window (issue 11): a chain still outstanding when the trace ends is *in flight*,
not "never used", unless the trace says the device was given every chance to act (an ``end``
observation, written by the live runner).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from virtio_balloon_proto.codecs import DecodedBuffer, Segment, decode_buffer
from virtio_balloon_proto.errors import TraceError, VBProtoError
from virtio_balloon_proto.findings import Finding
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.profiles import get_profile

from ..catalog import Catalog, check
from ..verdicts import ClauseResult, Verdict, verdict_for_level

PAGE_4K = 4096

#: a check: reads the judgement's trace and calls evaluated/broken/choice on it
CheckFn = Callable[["Judgement"], None]
#: the registered checks, in registration order (module import order: checks/__init__.py)
CHECKS: list[tuple[CheckFn, tuple[str, ...]]] = []


def register(*clause_ids: str) -> Callable[[CheckFn], CheckFn]:
    """Decorator: ``fn(judgement)`` checks ``clause_ids`` (also registered in the catalog's
    check registry, so ``vbproto conform clauses`` counts it)."""

    def deco(fn: CheckFn) -> CheckFn:
        check(*clause_ids)(fn)
        CHECKS.append((fn, tuple(clause_ids)))
        return fn

    return deco


@dataclass
class Chain:
    """One chain the driver made available, and what became of it."""

    index: int  # event number of the avail (1-based, header not counted)
    role: str
    queue: int
    head: int
    segments: tuple[Segment, ...] | None  # None: bytes not captured (cannot be checked)
    ring_findings: tuple[Any, ...] = ()
    gap: str = ""  # why the bytes are missing
    used_at: int | None = None
    used_len: int | None = None
    used_data: bytes | None = None
    #: the used entry carried no id (a capture that saw none) and was paired with the oldest of
    #: several outstanding chains of its role: a guess -- without VIRTIO_F_IN_ORDER the device
    #: may use buffers in any order (2.7.9 / 2.8.8 "In-order use of descriptors")
    guessed: bool = False
    #: the event of a device reset (status 0) that dropped this chain before it was used:
    #: VIRTIO 1.2 2.4.1 "A device MUST NOT send notifications or interact with the queues
    #: after indicating completion of the reset by reinitializing device status to 0, until
    #: the driver re-initializes the device" -- it will never be used, and need not be
    reset_at: int | None = None

    @property
    def writable(self) -> int:
        return sum(s.length for s in self.segments or () if s.writable)

    @property
    def used(self) -> bool:
        return self.used_at is not None


@dataclass
class Judgement:
    """The verdicts of one trace being built (first breakage per clause wins)."""

    header: Any  # trace.TraceHeader
    events: tuple[Any, ...]
    catalog: Catalog
    strict: bool = False
    #: "both": driver and device clauses are judged (conform check);
    #: "device": the driver side is the suite's own input, its breakages are notes (conform run)
    subject: str = "both"
    results: dict[str, ClauseResult] = field(default_factory=dict)
    behaviour: dict[str, set[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    chains: list[Chain] = field(default_factory=list)
    by_avail: dict[int, Chain] = field(default_factory=dict)
    by_used: dict[int, Chain] = field(default_factory=dict)
    #: used events that name no outstanding chain: (event index, role, head)
    stray_used: list[tuple[int, str, int | None]] = field(default_factory=list)
    #: events of device resets (a status write of 0) inside the trace: each starts a new life
    resets: list[int] = field(default_factory=list)
    _decoded: dict[int, DecodedBuffer | None] = field(default_factory=dict)
    #: decode errors that name a clause (a buffer too short for its header, ...), by avail
    _errors: dict[int, VBProtoError] = field(default_factory=dict)
    _wire: dict[int, list[Any]] = field(default_factory=dict)
    _observed: dict[str, list[tuple[int, Any]]] | None = None

    # --- the trace ------------------------------------------------------------------------
    @property
    def profile(self) -> str:
        return str(self.header.profile)

    @property
    def negotiated(self) -> list[str]:
        return get_profile(self.profile).names(self.header.features_negotiated)

    @property
    def offered(self) -> list[str]:
        return get_profile(self.profile).names(self.header.features_offered)

    def observations(self, what: str) -> list[tuple[int, Any]]:
        """(event index, event) of the trace's ``observe`` events of one kind, in order (the
        trace is indexed once: checks ask this a dozen times per trace)."""
        if self._observed is None:
            from virtio_balloon_proto.trace import ObserveEvent

            index: dict[str, list[tuple[int, Any]]] = {}
            for i, ev in enumerate(self.events, start=1):
                if isinstance(ev, ObserveEvent):
                    index.setdefault(ev.what, []).append((i, ev))
            self._observed = index
        return list(self._observed.get(what, ()))

    @property
    def from_reset(self) -> bool:
        """Does the trace start at device reset (a live run's record; a format 1.2 window
        that starts at ``reset``; without a window, a status write of 0 or 1 before anything
        else)?  If not, it is a window: it may see the device use chains made available
        before it started."""
        from virtio_balloon_proto.trace import ObserveEvent, StatusEvent

        if self.observations("device"):
            return True
        win = getattr(self.header, "window", None)
        if win is not None:  # format 1.2: the capture says where it starts
            return bool(win.start == "reset")
        first = next((ev for ev in self.events if not isinstance(ev, ObserveEvent)), None)
        return isinstance(first, StatusEvent) and first.value in (0, 1)

    def host_requests(self, action: str) -> list[int]:
        """Event indices of the trace's host events of one action."""
        from virtio_balloon_proto.trace import HostEvent

        return [i for i, ev in enumerate(self.events, start=1)
                if isinstance(ev, HostEvent) and ev.action == action]

    def sees(self, what: str) -> bool:
        """Could the capture see ``what`` (trace.CAPTURABLE: ``config``, ``status``, ...)?
        Only a format 1.2 window says it could not."""
        win = getattr(self.header, "window", None)
        return win is None or bool(win.sees(what))

    @property
    def quiesced(self) -> bool:
        """Did the recorder give the device every chance to act (an ``end`` observation, or a
        format 1.2 window that ends ``quiesced``)?"""
        win = getattr(self.header, "window", None)
        return bool(self.observations("end")) or (win is not None and win.end == "quiesced")

    @property
    def device_info(self) -> dict[str, Any] | None:
        obs = self.observations("device")
        return dict(obs[-1][1].value) if obs else None

    def ram(self) -> PageSet:
        """Guest RAM as 4 KiB frames (the header's regions; 256 MiB at 0 when absent)."""
        out = PageSet.empty()
        for start, size in self.header.ram_regions:
            first = (start + PAGE_4K - 1) // PAGE_4K
            end = (start + size) // PAGE_4K
            if end > first:
                out = out | PageSet.from_range(first, end - first)
        return out

    def layout(self) -> Any:
        from virtio_balloon_proto.tracedecode import layout_of

        return layout_of(self.header)

    def decoded(self, chain: Chain) -> DecodedBuffer | None:
        """The codec's decoding of a chain's driver bytes (None: not captured / undecodable)."""
        if chain.index not in self._decoded:
            res: DecodedBuffer | None = None
            if chain.segments is not None:
                try:
                    res = decode_buffer(self.profile, chain.role, list(chain.segments),
                                        self.layout(), features=self.header.features_negotiated)
                except VBProtoError as exc:
                    res = None
                    if exc.clause is not None:
                        self._errors[chain.index] = exc
            self._decoded[chain.index] = res
        return self._decoded[chain.index]

    def wire_findings(self, chain: Chain) -> list[Any]:
        """Findings of the ring walker (recorded in the trace) and of the wire decoders for the
        driver-written bytes of one chain -- exactly what ``vbproto decode`` reports."""
        if chain.index not in self._wire:
            found: list[Any] = list(chain.ring_findings)
            d = self.decoded(chain)
            if d is not None:
                found += list(d.findings)
            elif (err := self._errors.get(chain.index)) is not None:
                # bytes the decoder refused for breaking a rule (a 2-byte hint command id:
                # spec.driver.hint.len-4) break that rule as much as a finding does -- exactly
                # the error `vbproto decode` prints for the same buffer
                found.append(Finding(str(err.clause), err.message, err.field, err.offset))
            self._wire[chain.index] = found
        return self._wire[chain.index]

    def malformed(self, chain: Chain) -> bool:
        """Does the driver's buffer break a driver-side MUST (its wire findings)?"""
        for f in self.wire_findings(chain):
            c = self.catalog.find(getattr(f, "rule", ""))
            if c is not None and c.side == "driver" and c.level == "MUST":
                return True
        return False

    # --- verdicts -------------------------------------------------------------------------
    def evaluated(self, clause: str) -> None:
        if clause not in self.results:
            self.results[clause] = ClauseResult(clause, Verdict.PASS)

    def broken(self, clause: str, message: str, step: int | None = None,
               expected: Any = None, received: Any = None) -> None:
        c = self.catalog.find(clause)
        level = c.level if c is not None else "MUST"
        prev = self.results.get(clause)
        if prev is not None and prev.verdict != Verdict.PASS:
            return
        if c is not None and c.side == "driver" and self.subject == "device":
            # the suite's own driver traffic: a note, never the device's failure
            if prev is None or not prev.message:
                self.results[clause] = ClauseResult(clause, Verdict.PASS,
                                                    f"(driver, {level}) {message}", step)
            return
        verdict = verdict_for_level(level, self.strict)
        if verdict == Verdict.PASS:  # a MAY: informational note only
            self.results[clause] = ClauseResult(clause, Verdict.PASS, f"(MAY) {message}", step)
            return
        self.results[clause] = ClauseResult(clause, verdict, message, step, expected, received)

    def choice(self, key: str, value: str) -> None:
        """Record a choice the spec leaves to the device (its behaviour profile)."""
        self.behaviour.setdefault(key, set()).add(value)


def role_of(ev: Any) -> str:
    return str(getattr(ev.role, "value", ev.role))


def build(header: Any, events: Iterable[Any], cat: Catalog, *, strict: bool = False,
          subject: str = "both") -> Judgement:
    """Pair every avail with its used entry (by head id; by order per role when the capture
    saw no ids) and index both."""
    from virtio_balloon_proto import trace as tr
    from virtio_balloon_proto.trace.lengths import absurd_lengths
    from virtio_balloon_proto.tracedecode import segments_of

    evs = tuple(events)
    j = Judgement(header, evs, cat, strict, subject)
    outstanding: dict[tuple[str, int], Chain] = {}
    synthetic: dict[str, int] = {}
    for i, ev in enumerate(evs, start=1):
        if isinstance(ev, tr.AvailEvent):
            role = role_of(ev)
            head = ev.id
            if head is None:  # the capture did not see head ids: number chains per role
                head = 0x8000 + synthetic.get(role, 0)
                synthetic[role] = synthetic.get(role, 0) + 1
            segs: tuple[Segment, ...] | None
            gap = ""
            try:
                segs = tuple(segments_of(ev))
            except TraceError as exc:
                segs, gap = None, exc.message
            found = tuple(ev.findings)
            found += tuple(f for f in absurd_lengths(header, ev) if f not in found)
            ch = Chain(i, role, ev.queue, head, segs, found, gap)
            j.chains.append(ch)
            j.by_avail[i] = ch
            outstanding[(role, head)] = ch
        elif isinstance(ev, tr.StatusEvent) and ev.value == 0:
            # a device reset: what was outstanding is dropped, never used (Chain.reset_at)
            for ch in outstanding.values():
                ch.reset_at = i
            outstanding.clear()
            j.resets.append(i)
        elif isinstance(ev, tr.UsedEvent):
            role = role_of(ev)
            head = ev.id
            guessed = False
            if head is None:
                # no descriptor ids (a QEMU trace log): pair with the oldest chain of the role
                # still outstanding -- a guess when there are several (Chain.guessed)
                oldest = [k for k in outstanding if k[0] == role]
                if oldest:
                    head = oldest[0][1]
                    guessed = len(oldest) > 1
            if head is None or (role, head) not in outstanding:
                j.stray_used.append((i, role, head))
                continue
            ch = outstanding.pop((role, head))
            ch.used_at, ch.used_len, ch.used_data = i, ev.len, ev.data
            ch.guessed = guessed
            j.by_used[i] = ch
    return j


def frames(ps: PageSet, limit: int = 1 << 24) -> int:
    """Number of frames in a page set (for messages)."""
    return min(len(ps), limit)


def first_frames(ps: PageSet, n: int = 8) -> list[str]:
    out: list[str] = []
    for first, count in ps.extents():
        for f in range(first, first + min(count, n - len(out))):
            out.append(hex(f))
        if len(out) >= n:
            break
    return out


def split_ram(pages: PageSet, ram: PageSet) -> tuple[PageSet, PageSet]:
    """``(pages & ram, pages - ram)``; a buffer inside one RAM region (the usual one) costs a
    bounds check instead of two set operations."""
    if pages and ram:
        first, last = int(pages.starts[0]), int(pages.lasts[-1])
        k = int(np.searchsorted(ram.lasts, first))
        if k < ram.lasts.size and int(ram.starts[k]) <= first and last <= int(ram.lasts[k]):
            return pages, PageSet.empty()
    return pages & ram, pages - ram


def pageset_of(extents: Any) -> PageSet | None:
    """An observed ``[[first, count], ...]`` list as a page set (None if malformed); a page
    set is taken as it is (the live runner keeps a valid delta list in that form: issue 13)."""
    if isinstance(extents, PageSet):
        return extents
    if not isinstance(extents, list):
        return None
    try:
        return PageSet.from_extents([e for e in extents if e[1]]) if extents else PageSet.empty()
    except (VBProtoError, TypeError, ValueError, IndexError, KeyError):
        return None
