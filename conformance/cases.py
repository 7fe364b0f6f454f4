"""Cases: recorded driver traffic to replay into a device (``vbproto-trace/1`` files).

A *case* is one trace file (docs/trace-format.md) and its id (the path under the corpus,
without ``.jsonl``): the trace's header gives the device's :class:`~.dut.Setup`, and its
driver-side events (avail, config writes/reads, host requests) are the :class:`Step` s the
runner replays.  Steps are made from the events when they are walked (:meth:`Case.iter_steps`),
never held: a 128 GiB guest's inflate is 261,632 steps (issue 13: a replay in bounded memory).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtio_balloon_proto.errors import TraceError, UsageError
from virtio_balloon_proto.profiles import get_profile

from .dut import Segment, Setup
from .verdicts import hexdump

REPORT_DATA_LIMIT = 4096  # bytes of a buffer kept in a report's traffic log


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Step:
    """One driver-side event to replay (index = event number in the trace, 1-based)."""

    index: int
    kind: str  # "avail" | "config_write" | "config_read" | "host"
    role: str = ""
    head: int = 0
    segments: tuple[Segment, ...] = ()
    offset: int = 0
    data: bytes = b""
    host_kind: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    findings: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind == "avail":
            return f"avail {self.role} head {self.head} ({len(self.segments)} segment(s))"
        if self.kind == "config_write":
            return f"config_write offset {self.offset} data {self.data.hex()}"
        if self.kind == "config_read":
            return f"config_read offset {self.offset} size {len(self.data)}"
        return f"host {self.host_kind} {self.params}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.index, "event": self.kind}
        if self.kind == "avail":
            out["role"] = self.role
            out["head"] = self.head
            out["segments"] = [
                {
                    "addr": f"{s.addr:#x}",
                    "len": s.length,
                    "writable": s.writable,
                    **({"hexdump": hexdump(s.data, REPORT_DATA_LIMIT)} if s.data else {}),
                }
                for s in self.segments
            ]
        elif self.kind in ("config_write", "config_read"):
            out["offset"] = self.offset
            out["data"] = self.data.hex()
        else:
            out["kind"] = self.host_kind
            out["params"] = self.params
        return out


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    profile: str
    setup: Setup
    header: Any  # trace.TraceHeader
    events: tuple[Any, ...]
    #: events of the trace that cannot be replayed, with why: ``event N (role): ...`` for a
    #: buffer whose bytes were not captured (not checkable either), ``event N (host ...)``
    #: for a host action no device request stands for
    gaps: tuple[str, ...] = ()

    def iter_steps(self) -> Iterator[Step]:
        """The driver-side events to replay, in trace order, made as they are walked."""
        for st in _walk(self.header, self.events):
            if isinstance(st, Step):
                yield st

    @property
    def steps(self) -> tuple[Step, ...]:
        """All of :meth:`iter_steps` (made anew at each use: a case does not hold them)."""
        return tuple(self.iter_steps())

    @property
    def uncheckable(self) -> tuple[str, ...]:
        """The gaps that are buffers (bytes not captured): not checkable offline either."""
        return tuple(g for g in self.gaps if "(host " not in g.split(":", 1)[0])


def _host_step(ev: Any, index: int) -> Step | None:
    """Trace host actions -> DeviceUnderTest.host_request kinds (dut.py)."""
    action = ev.action
    if action == "set-target" and ev.num_pages is not None:
        return Step(index, "host", host_kind="set-target", params={"num_pages": ev.num_pages})
    if action == "get-unused-pages" and ev.req_id is not None:
        return Step(index, "host", host_kind="get-unused-pages", params={"req_id": ev.req_id})
    if action == "stats-request":
        return Step(index, "host", host_kind="stats-poll")
    if action == "free-page-hint" and ev.cmd_id is not None:
        if ev.cmd_id >= 2:  # VIRTIO_BALLOON_CMD_ID_STOP 0, _DONE 1; device ids are >= 2
            return Step(index, "host", host_kind="hint-start", params={"cmd_id": ev.cmd_id})
        return Step(index, "host", host_kind="hint-stop", params={"cmd_id": ev.cmd_id})
    return None


def _segments(ev: Any) -> tuple[Segment, ...]:
    """The chain of an AvailEvent as DUT segments (descriptor addresses where recorded)."""
    from virtio_balloon_proto.tracedecode import segments_of

    return tuple(segments_of(ev))


def _device_options(profile: str, features: int) -> dict[str, Any]:
    prof = get_profile(profile)
    names = set(prof.names(features))
    opts: dict[str, Any] = {}
    for name, opt in (
        ("DEFLATE_ON_OOM", "deflate-on-oom"),
        ("FREE_PAGE_HINT", "free-page-hint"),
        ("PAGE_POISON", "page-poison"),
        ("PAGE_REPORTING", "free-page-reporting"),
        ("PAGE_BITMAP", "page-bitmap"),
        ("MISC_VQ", "misc-vq"),
        ("MUST_TELL_HOST", "must-tell-host"),
        ("STATS_VQ", "stats-vq"),
    ):
        if name in prof.features:
            opts[opt] = name in names
    return opts


def load_case(path: str | Path, case_id: str | None = None) -> Case:
    """Read one trace into a case (TraceError names the line of a bad record)."""
    from virtio_balloon_proto import trace as tr

    p = Path(path)
    header, events = tr.read_trace(p)
    return case_from_trace(header, events, case_id or p.stem, str(p))


def case_from_trace(header: Any, events: Iterable[Any], case_id: str, path: str = "") -> Case:
    """A case from a trace already in memory (``load_case`` without the file; the fuzzer's
    generated sequences): the same setup and replay steps ``load_case`` gives the same trace."""
    events = list(events)
    setup = Setup(
        profile=header.profile,
        driver_features=header.features_negotiated,
        endian=header.virtio_endian,
        word_size=header.bitmap_word_bits,
        word_order=header.bitmap_word_order,
        page_size=header.page_size,
        device_options=_device_options(header.profile, header.features_offered),
    )
    if header.memory:
        setup = dataclasses.replace(setup, memory_size=max(a + n for a, n in header.memory),
                                    memory_regions=tuple(header.memory))
    gaps = tuple(g for g in _walk(header, events, steps=False) if isinstance(g, str))
    return Case(
        id=case_id,
        path=path,
        profile=header.profile,
        setup=setup,
        header=header,
        events=tuple(events),
        gaps=gaps,
    )


def _walk(header: Any, events: Iterable[Any], *, steps: bool = True) -> Iterator[Step | str]:
    """The replay steps of a trace's events and, for events that cannot be replayed, the gap
    (a string saying why), in trace order.  ``steps=False``: only the gaps are wanted (an avail
    whose bytes are all there makes no step)."""
    from virtio_balloon_proto import trace as tr
    from virtio_balloon_proto.trace.lengths import absurd_lengths

    synthetic: dict[str, int] = {}
    for i, ev in enumerate(events, start=1):
        if isinstance(ev, tr.AvailEvent):
            role = str(getattr(ev.role, "value", ev.role))
            head = ev.id
            if head is None:  # capture did not see the head index: number chains per role
                head = 0x8000 + synthetic.get(role, 0)
                synthetic[role] = synthetic.get(role, 0) + 1
            if not steps and ev.descriptors is None and None not in ev.out and (
                    None not in ev.in_sizes):
                continue  # every byte there: segments_of cannot fail
            try:
                segs = _segments(ev)
            except TraceError as exc:
                # a capture that did not see a buffer's bytes (QEMU's trace has no stats
                # payload): that buffer cannot be replayed; the rest of the case still can
                why = ", ".join(sorted({f.rule for f in absurd_lengths(header, ev)}))
                yield (f"event {i} ({role}): {exc.message}"
                       + (f" (absurd length: {why})" if why else ""))
                continue
            if steps:
                yield Step(i, "avail", role=role, head=head, segments=segs,
                           findings=tuple(ev.findings))
        elif isinstance(ev, tr.ConfigEvent):
            if steps:
                yield Step(i, "config_write" if ev.write else "config_read", offset=ev.offset,
                           data=ev.data)
        elif isinstance(ev, tr.HostEvent):
            st = _host_step(ev, i)
            if st is None:
                yield (f"event {i} (host {ev.action}): no device request stands for it"
                       + (f" ({ev.detail})" if ev.detail else ""))
            elif steps:
                yield st


def default_corpus() -> Path:
    return Path(__file__).resolve().parent / "traces"


def discover_cases(
    corpus: str | Path | None = None,
    *,
    profiles: Iterable[str] | None = None,
    case_globs: Iterable[str] | None = None,
) -> list[Case]:
    """All traces under ``corpus`` (default: the shipped corpus), filtered, sorted by id.

    A file that is not a readable trace raises TraceError naming it (bad input: exit 2).
    """
    root = Path(corpus) if corpus is not None else default_corpus()
    if root.is_file():
        files = [root]
        base = root.parent
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*.jsonl") if p.is_file())
        base = root
        if not files:
            # an empty corpus is a mistake (wrong directory), not a passing run
            raise UsageError(f"corpus {root} holds no trace (*.jsonl)", field="corpus")
    else:
        raise UsageError(f"corpus {root} is neither a trace file nor a directory", field="corpus")
    profs = set(profiles) if profiles else None
    if profs:
        for pr in profs:
            get_profile(pr)
    globs = list(case_globs) if case_globs else None
    out = []
    for f in files:
        cid = f.relative_to(base).with_suffix("").as_posix()
        if globs and not any(fnmatch.fnmatchcase(cid, g) for g in globs):
            continue
        case = load_case(f, cid)
        if profs and case.profile not in profs:
            continue
        out.append(case)
    return out
