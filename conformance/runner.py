"""The conformance runner: replay recorded traffic into a device, compare with the reference.

A *case* is one trace file (``vbproto-trace/1``, docs/trace-format.md) and its id (the path
under the corpus, without ``.jsonl``).  Two ways to use a case:

* :meth:`Runner.run_case` (``vbproto conform run``): start the reference device and the device
  under test with the same :class:`~.dut.Setup` (from the trace header), replay the driver-side
  events (avail, config writes/reads, host requests) into both, and compare their effects step
  by step (used ids and lengths, device-written bytes, config, observable state).  Every
  difference is mapped to a clause by a check registered with :func:`~.catalog.check`.
* :func:`check_trace` (``vbproto conform check``): validate both sides of a recorded trace
  offline -- what the driver sent (the wire decoders' findings plus sequence rules) and what the
  device answered (used ids/lens, device-written requests).

The device under test is never trusted: adapters turn its crashes, hangs and garbage into
PeerError (-> clause ``suite.device.transport``), and the runner goes on with the next case.
"""

from __future__ import annotations

import fnmatch
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtio_balloon_proto.errors import PeerError, TraceError, UsageError, VBProtoError
from virtio_balloon_proto.profiles import VERSION_1, get_profile

from .adapters import DEFAULT_TIMEOUT, close_device, open_device
from .catalog import Catalog, catalog, check
from .dut import DeviceUnderTest, Segment, Setup, Unsupported, Used
from .known_failures import KnownFailures
from .verdicts import CaseResult, ClauseResult, RunResult, Verdict, hexdump, verdict_for_level

VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
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
    steps: tuple[Step, ...]
    #: events of the trace that could not be replayed (bytes not captured), with why
    gaps: tuple[str, ...] = ()


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


def _recorded_queues(case: Case) -> dict[str, int]:
    """Role -> queue index as the recorded driver used them (avail events)."""
    from virtio_balloon_proto import trace as tr

    out: dict[str, int] = {}
    for ev in case.events:
        if isinstance(ev, tr.AvailEvent):
            out.setdefault(str(getattr(ev.role, "value", ev.role)), ev.queue)
    return out


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
    setup = Setup(
        profile=header.profile,
        driver_features=header.features_negotiated,
        endian=header.virtio_endian,
        word_size=header.bitmap_word_bits,
        word_order=header.bitmap_word_order,
        page_size=header.page_size,
        device_options=_device_options(header.profile, header.features_offered),
    )
    steps: list[Step] = []
    gaps: list[str] = []
    synthetic: dict[str, int] = {}
    for i, ev in enumerate(events, start=1):
        if isinstance(ev, tr.AvailEvent):
            role = str(getattr(ev.role, "value", ev.role))
            head = ev.id
            if head is None:  # capture did not see the head index: number chains per role
                head = 0x8000 + synthetic.get(role, 0)
                synthetic[role] = synthetic.get(role, 0) + 1
            try:
                segs = _segments(ev)
            except TraceError as exc:
                # a capture that did not see a buffer's bytes (QEMU's trace has no stats
                # payload): that buffer cannot be replayed; the rest of the case still can
                gaps.append(f"event {i} ({role}): {exc.message}; not replayed")
                continue
            steps.append(
                Step(i, "avail", role=role, head=head, segments=segs, findings=tuple(ev.findings))
            )
        elif isinstance(ev, tr.ConfigEvent):
            steps.append(
                Step(
                    i, "config_write" if ev.write else "config_read", offset=ev.offset, data=ev.data
                )
            )
        elif isinstance(ev, tr.HostEvent):
            st = _host_step(ev, i)
            if st is not None:
                steps.append(st)
    return Case(
        id=case_id or p.stem,
        path=str(p),
        profile=header.profile,
        setup=setup,
        header=header,
        events=tuple(events),
        steps=tuple(steps),
        gaps=tuple(gaps),
    )


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


# --------------------------------------------------------------------------- per-case state
#: the clause a missing acknowledgement breaks, by queue role
ACK_CLAUSE = {
    "inflate": "spec.device.inflate.acks-buffer",
    "deflate": "spec.device.deflate.acks-buffer",
    "stats": "spec.device.stats.request-by-use",
    "free_page": "spec.device.hint.acks-buffers",
    "reporting": "spec.device.reporting.acks-buffer",
    "misc": "v3.device.misc.acks-answer",
}
#: queue roles a host request may produce used entries on
HOST_ROLES = {
    "stats-poll": ("stats",),
    "get-unused-pages": ("misc",),
    "hint-start": ("free_page",),
    "hint-stop": ("free_page",),
    "set-target": (),
}


@dataclass
class _Side:
    """What one device (reference or DUT) did during a case."""

    outstanding: dict[tuple[str, int], Step] = field(default_factory=dict)
    #: (role, head, index of the avail step) -> (used entry, step where it appeared); the
    #: step index tells apart chains that reuse a head id
    returned: dict[tuple[str, int, int], tuple[Used, int]] = field(default_factory=dict)


class CaseContext:
    """Collects clause results of one case (first difference per clause wins)."""

    def __init__(self, case: Case, cat: Catalog, strict: bool) -> None:
        self.case = case
        self.catalog = cat
        self.strict = strict
        self.results: dict[str, ClauseResult] = {}
        self.ref = _Side()
        self.dut = _Side()
        self.negotiated_names: list[str] = []
        self.findings: dict[int, list[Any]] = {}

    def evaluated(self, clause: str) -> None:
        if clause not in self.results:
            self.results[clause] = ClauseResult(clause, Verdict.PASS)

    def broken(
        self,
        clause: str,
        message: str,
        step: int | None = None,
        expected: Any = None,
        received: Any = None,
    ) -> None:
        c = self.catalog.find(clause)
        level = c.level if c is not None else "MUST"
        verdict = verdict_for_level(level, self.strict)
        prev = self.results.get(clause)
        if prev is not None and prev.verdict != Verdict.PASS:
            return
        if verdict == Verdict.PASS:  # a MAY: informational note only
            self.results[clause] = ClauseResult(clause, Verdict.PASS, f"(MAY) {message}", step)
            return
        self.results[clause] = ClauseResult(clause, verdict, message, step, expected, received)


def _used_json(used: Iterable[Used]) -> list[dict[str, Any]]:
    return [
        {"id": u.id, "len": u.length, **({"written": hexdump(u.written)} if u.written else {})}
        for u in used
    ]


# --------------------------------------------------------------------------- checks
StepCheck = Callable[[CaseContext, Step, list[Used], list[Used]], None]
EndCheck = Callable[[CaseContext], None]
STEP_CHECKS: list[StepCheck] = []
END_CHECKS: list[EndCheck] = []


def _role_for(side: _Side, step: Step, head: int) -> str | None:
    roles = [step.role] if step.kind == "avail" else list(HOST_ROLES.get(step.host_kind, ()))
    for r in roles:
        if (r, head) in side.outstanding:
            return r
    for r, h in side.outstanding:
        if h == head:
            return r
    return None


def _account(ctx: CaseContext, side: _Side, step: Step, used: list[Used], is_dut: bool) -> None:
    for u in used:
        role = _role_for(side, step, u.id)
        if role is None:
            if is_dut:
                ctx.broken(
                    "spec.device.used.id-is-head",
                    f"used id {u.id} names no chain that is available and not yet used",
                    step.index,
                    expected=sorted({h for _, h in side.outstanding}),
                    received=u.id,
                )
            continue
        av = side.outstanding.pop((role, u.id))
        side.returned[(role, u.id, av.index)] = (u, step.index)
    if is_dut:
        ctx.evaluated("spec.device.used.id-is-head")


@check("spec.device.used.id-is-head")
def check_used_ids(
    ctx: CaseContext, step: Step, ref_used: list[Used], dut_used: list[Used]
) -> None:
    _account(ctx, ctx.ref, step, ref_used, is_dut=False)
    _account(ctx, ctx.dut, step, dut_used, is_dut=True)


STEP_CHECKS.append(check_used_ids)


def _writable(step: Step) -> int:
    return sum(s.length for s in step.segments if s.writable)


@check("spec.device.used.len-written", "v3.device.req.len-16")
def check_used_lengths(ctx: CaseContext) -> None:
    """Pair DUT and reference used entries by (role, head); compare len and written bytes."""
    for key, (u, at) in sorted(ctx.dut.returned.items()):
        role, head, idx = key
        step = _step_at(ctx.case, idx)
        cap = _writable(step) if step is not None else 0
        if role == "misc" and step is not None and cap:
            continue  # the request buffer: check_misc_request
        ctx.evaluated("spec.device.used.len-written")
        if u.length > cap or len(u.written) > cap:
            ctx.broken(
                "spec.device.used.len-written",
                f"{role} head {head}: used len {u.length} but the chain has {cap} device-writable "
                "byte(s)",
                at,
                expected=f"len <= {cap} (reference: "
                f"{ctx.ref.returned[key][0].length if key in ctx.ref.returned else 'not used'})",
                received=u.length,
            )
        elif key in ctx.ref.returned and ctx.ref.returned[key][0].length != u.length and cap:
            ctx.broken(
                "spec.device.used.len-written",
                f"{role} head {head}: used len {u.length}, "
                f"reference wrote {ctx.ref.returned[key][0].length}",
                at,
                expected=ctx.ref.returned[key][0].length,
                received=u.length,
            )


END_CHECKS.append(check_used_lengths)


def _step_at(case: Case, index: int) -> Step | None:
    for s in case.steps:
        if s.index == index:
            return s
    return None


@check(
    "v3.device.req.len-16",
    "v3.device.req.reserved-zero",
    "v3.device.req.unknown-cmd",
    "v3.device.req.param-is-req-id",
)
def check_misc_request(ctx: CaseContext) -> None:
    """The device-written v3 balloon_req_hdr (seed 6/7): 16 bytes, used len 16, reserved 0,
    cmd GET_UNUSED_PAGES, param = the host's request id; compared with the reference."""
    order = "<" if ctx.case.setup.endian == "le" else ">"
    for key, (u, at) in sorted(ctx.dut.returned.items()):
        role, _head, idx = key
        step = _step_at(ctx.case, idx)
        if role != "misc" or step is None or not _writable(step):
            continue
        ref = ctx.ref.returned.get(key)
        ctx.evaluated("v3.device.req.len-16")
        if u.length != 16 or len(u.written) < 16:
            ctx.broken(
                "v3.device.req.len-16",
                f"misc request buffer used with len {u.length} ({len(u.written)} bytes written); "
                "the seed driver ignores anything but 16",
                at,
                expected=16,
                received=u.length,
            )
            continue
        cmd, r0, r1, r2, param = struct.unpack(f"{order}HHHHQ", u.written[:16])
        for clause, ok, what in (
            ("v3.device.req.reserved-zero", (r0, r1, r2) == (0, 0, 0), f"reserved {[r0, r1, r2]}"),
            ("v3.device.req.unknown-cmd", cmd == 0, f"cmd {cmd}"),
        ):
            ctx.evaluated(clause)
            if not ok:
                ctx.broken(
                    clause,
                    f"misc request {what}",
                    at,
                    hexdump(ref[0].written) if ref else None,
                    hexdump(u.written),
                )
        if ref is not None and len(ref[0].written) >= 16:
            ctx.evaluated("v3.device.req.param-is-req-id")
            rparam = struct.unpack(f"{order}Q", ref[0].written[8:16])[0]
            if rparam != param:
                ctx.broken(
                    "v3.device.req.param-is-req-id",
                    f"misc request param {param:#x}, the host asked for {rparam:#x}"
                    + (
                        " (byte-swapped: wrong byte order?)"
                        if param == int.from_bytes(rparam.to_bytes(8, "little"), "big")
                        else ""
                    ),
                    at,
                    hexdump(ref[0].written[:16]),
                    hexdump(u.written[:16]),
                )


END_CHECKS.append(check_misc_request)


@check(*sorted(set(ACK_CLAUSE.values()) | {"spec.device.malformed.acks-buffer"}))
def check_acks(ctx: CaseContext) -> None:
    """Every chain the reference returned must come back from the DUT too (any step)."""
    for key, (_, at) in sorted(ctx.ref.returned.items()):
        role, head, idx = key
        clause = ACK_CLAUSE.get(role, "spec.device.used.id-is-head")
        step = _step_at(ctx.case, idx)
        malformed = step is not None and _is_malformed(ctx, step)
        if malformed:
            clause = "spec.device.malformed.acks-buffer"
        ctx.evaluated(clause)
        if key not in ctx.dut.returned:
            ctx.broken(
                clause,
                f"{role} head {head} was never used by the device "
                f"(the reference used it at step {at})"
                + (
                    " -- the buffer is malformed, but the driver still waits for it"
                    if malformed
                    else ""
                ),
                step.index if step else at,
                expected=f"used id {head}",
                received="not used",
            )
    for key, (_, at) in sorted(ctx.dut.returned.items()):
        role, head, _idx = key
        if role == "stats" and key not in ctx.ref.returned:
            ctx.evaluated("spec.device.stats.request-by-use")
            ctx.broken(
                "spec.device.stats.request-by-use",
                f"stats head {head} used although the host requested no statistics",
                at,
                expected="buffer kept until a stats request",
                received=f"used id {head}",
            )


END_CHECKS.append(check_acks)


def _is_malformed(ctx: CaseContext, step: Step) -> bool:
    """Does the driver's buffer break a driver-side MUST clause (wire findings)?"""
    for f in _wire_findings(ctx, step):
        c = ctx.catalog.find(getattr(f, "rule", ""))
        if c is not None and c.side == "driver" and c.level == "MUST":
            return True
    return False


def _extents(v: Any) -> list[tuple[int, int]]:
    if not isinstance(v, list):
        return []
    out = []
    for e in v:
        if isinstance(e, (list, tuple)) and len(e) == 2:
            out.append((int(e[0]), int(e[1])))
    return out


def _frames(ext: list[tuple[int, int]], limit: int = 1 << 22) -> set[int]:
    out: set[int] = set()
    for first, count in ext:
        if len(out) + count > limit:
            break
        out.update(range(first, first + count))
    return out


def _page_clauses(ctx: CaseContext) -> tuple[str, str]:
    prof = ctx.case.profile
    if prof in ("v3", "hybrid") and "PAGE_BITMAP" in ctx.negotiated_names:
        c = f"{prof}.device.bmap.tracks-pages"
        return c, c
    return "spec.device.inflate.pfn-4k-units", "spec.device.deflate.pfn-4k-units"


@check(
    "spec.device.inflate.pfn-4k-units",
    "spec.device.deflate.pfn-4k-units",
    "v3.device.bmap.tracks-pages",
    "hybrid.device.bmap.tracks-pages",
    "spec.device.stats.records-values",
    "spec.device.stats.ignores-unknown-tag",
    "spec.device.config.num-pages-target",
    "spec.device.config.actual-readback",
    "spec.device.hint.report-done",
    "spec.device.reporting.records-ranges",
    "spec.device.reporting.poison-only",
    "spec.device.hint.ignore-stale-cmd-id",
    "v3.device.unused.records-pages",
)
def compare_state(
    ctx: CaseContext, step_index: int | None, ref: dict[str, Any], dut: dict[str, Any]
) -> None:
    """observe() of both devices; keys the DUT does not report are not compared."""
    if "balloon" in ref and "balloon" in dut:
        inflate_c, deflate_c = _page_clauses(ctx)
        rext, dext = _extents(ref["balloon"]), _extents(dut["balloon"])
        ctx.evaluated(inflate_c)
        ctx.evaluated(deflate_c)
        if rext != dext:
            # PFNs outside guest RAM: what a device does with them is not specified (QEMU
            # skips them with trace bad_addr, others log; PROTOCOL.md section 7): not compared
            ram = ctx.case.setup.memory_size >> 12
            rf = {f for f in _frames(rext) if f < ram}
            df = {f for f in _frames(dext) if f < ram}
            missing, extra = sorted(rf - df), sorted(df - rf)
            if missing:
                ctx.broken(
                    inflate_c,
                    f"{len(missing)} frame(s) the reference holds are not in the device's balloon "
                    f"(first {[hex(x) for x in missing[:8]]})",
                    step_index,
                    expected=ref["balloon"],
                    received=dut["balloon"],
                )
            if extra:
                ctx.broken(
                    deflate_c,
                    f"{len(extra)} frame(s) in the device's balloon the reference does not hold "
                    f"(first {[hex(x) for x in extra[:8]]})",
                    step_index,
                    expected=ref["balloon"],
                    received=dut["balloon"],
                )
    if (
        "stats" in ref
        and "stats" in dut
        and isinstance(ref["stats"], dict)
        and isinstance(dut["stats"], dict)
    ):
        rs = {str(k): v for k, v in ref["stats"].items()}
        ds = {str(k): v for k, v in dut["stats"].items()}
        ctx.evaluated("spec.device.stats.records-values")
        wrong = {k: (v, ds.get(k)) for k, v in rs.items() if ds.get(k) != v}
        if wrong:
            ctx.broken(
                "spec.device.stats.records-values",
                f"stats differ for tag(s) {sorted(wrong)}",
                step_index,
                expected=rs,
                received=ds,
            )
    for key, clause in (
        ("num_pages", "spec.device.config.num-pages-target"),
        ("actual", "spec.device.config.actual-readback"),
        ("hint_cmd_id", "spec.device.hint.report-done"),
        ("reported", "spec.device.reporting.records-ranges"),
        ("hinted", "spec.device.hint.ignore-stale-cmd-id"),
        ("unused", "v3.device.unused.records-pages"),
        ("unused_done", "v3.device.unused.records-pages"),
    ):
        if key in ref and key in dut:
            if key == "reported" and "PAGE_POISON" in ctx.negotiated_names and not ref[key]:
                # V-FR2: with a non-zero poison_val a reported page may only become poison_val;
                # the reference keeps every page, so a device that discarded some broke that
                clause = "spec.device.reporting.poison-only"
            ctx.evaluated(clause)
            rv, dv = ref[key], dut[key]
            if key.startswith("unused") and isinstance(rv, dict) and isinstance(dv, dict):
                rv = {str(k): v for k, v in rv.items()}
                dv = {str(k): v for k, v in dv.items()}
            if rv != dv:
                ctx.broken(clause, f"observed {key} differs", step_index, expected=rv, received=dv)


CONFIG_FIELDS = (
    (0, "num_pages", "spec.device.config.num-pages-target"),
    (4, "actual", "spec.device.config.actual-readback"),
    (8, "free_page_hint_cmd_id", "spec.device.hint.report-done"),
    (12, "poison_val", "spec.device.poison.hint"),
)


@check(
    "spec.device.config.num-pages-target",
    "spec.device.config.actual-readback",
    "spec.device.hint.report-done",
    "spec.device.poison.hint",
    "spec.device.config.little-endian",
)
def compare_config(ctx: CaseContext, step_index: int | None, ref: bytes, dut: bytes) -> None:
    for off, name, clause in CONFIG_FIELDS:
        if off + 4 > len(ref):
            break
        ctx.evaluated(clause)
        rv, dv = ref[off : off + 4], dut[off : off + 4]
        if rv == dv:
            continue
        if len(dv) == 4 and dv == rv[::-1] and rv != rv[::-1]:
            ctx.evaluated("spec.device.config.little-endian")
            ctx.broken(
                "spec.device.config.little-endian",
                f"config {name} is byte-swapped ({dv.hex()} vs {rv.hex()}): config space is "
                "little-endian even for legacy devices",
                step_index,
                expected=rv.hex(),
                received=dv.hex(),
            )
            continue
        ctx.broken(
            clause,
            f"config {name} reads {int.from_bytes(dv, 'little') if len(dv) == 4 else dv.hex()}, "
            f"reference {int.from_bytes(rv, 'little')}",
            step_index,
            expected=rv.hex(),
            received=dv.hex(),
        )


# --------------------------------------------------------------------------- wire findings
def _wire_findings(ctx: CaseContext, step: Step) -> list[Any]:
    """Findings of the wire decoders (and of the ring walker, recorded in the trace) for the
    driver-written bytes of one avail step (cached per case)."""
    if step.index in ctx.findings:
        return ctx.findings[step.index]
    found: list[Any] = list(step.findings)
    buf = _decode_buffer(ctx.case, step)
    if buf is not None:
        found += list(buf.findings)
    ctx.findings[step.index] = found
    return found


def _decode_buffer(case: Case, step: Step) -> Any:
    """The codec layer's decoding of one avail step (None if it cannot be decoded at all)."""
    from virtio_balloon_proto.codecs import decode_buffer
    from virtio_balloon_proto.wire.layout import WireLayout

    s = case.setup
    try:
        layout = WireLayout(s.endian, s.word_size, s.word_order, s.page_size)
        return decode_buffer(case.profile, step.role, list(step.segments), layout,
                             features=s.driver_features)
    except VBProtoError:
        return None


def _decode_step(case: Case, step: Step) -> Any:
    """The wire message of one avail step, if it carries one."""
    buf = _decode_buffer(case, step)
    return None if buf is None else buf.decoded


# --------------------------------------------------------------------------- the runner
DeviceFactory = Callable[[], DeviceUnderTest]


class Runner:
    """Runs cases against one device under test; the reference device is built per case."""

    def __init__(
        self,
        device: str | DeviceUnderTest,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        strict: bool = False,
        known_failures: KnownFailures | None = None,
        reference: DeviceFactory | None = None,
        cat: Catalog | None = None,
    ) -> None:
        self.device_spec = device if isinstance(device, str) else getattr(device, "name", "device")
        self.device: DeviceUnderTest = (
            open_device(device, timeout=timeout) if isinstance(device, str) else device
        )
        self.timeout = timeout
        self.strict = strict
        self.known = known_failures or KnownFailures([])
        self.catalog = cat or catalog()
        self._reference = reference

    def close(self) -> None:
        close_device(self.device)

    def _new_reference(self) -> DeviceUnderTest:
        if self._reference is not None:
            return self._reference()
        return open_device("reference")

    # --- one case ------------------------------------------------------------------------------
    def run_case(self, case: Case) -> CaseResult:
        t0 = time.monotonic()
        result = CaseResult(case.id, case.profile, case.path)
        try:
            self._run(case, result)
        except VBProtoError as exc:  # our side: a trace that cannot be replayed, ...
            result.status = Verdict.ERROR
            result.reason = str(exc)
        except Exception as exc:  # a device answer no check foresaw: the case fails, run goes on
            result.results.append(ClauseResult(
                "suite.device.transport", Verdict.FAIL,
                f"the runner could not use the device's answer: {type(exc).__name__}: "
                f"{str(exc)[:300]}"))
        except BaseException:
            # interrupted (Ctrl-C, SIGTERM): do not wait for a device that may be hung
            close_device(self.device)
            raise
        with _suppress():
            self.device.stop()
        result.duration = time.monotonic() - t0
        self.known.apply(result)
        return result

    def _run(self, case: Case, result: CaseResult) -> None:
        ctx = CaseContext(case, self.catalog, self.strict)
        try:
            ref = self._new_reference()
        except UsageError as exc:
            result.status = Verdict.SKIPPED
            result.reason = f"no reference device: {exc}"
            return
        try:
            try:
                ref_neg = ref.start(case.setup)
            except Unsupported as exc:
                result.status = Verdict.SKIPPED
                result.reason = f"the reference device cannot run this case: {exc}"
                return
            try:
                dut_neg = self.device.start(case.setup)
            except Unsupported as exc:
                result.status = Verdict.UNSUPPORTED
                result.reason = str(exc)
                return
            except PeerError as exc:
                ctx.broken("suite.device.transport", str(exc), None)
                result.results = list(ctx.results.values())
                return
            prof = get_profile(case.profile)
            ctx.negotiated_names = prof.names(ref_neg.accepted)
            missing = ref_neg.accepted & ~dut_neg.accepted & ~VERSION_1
            if missing:
                result.status = Verdict.UNSUPPORTED
                result.reason = (
                    f"device did not accept feature(s) {', '.join(prof.names(missing))} "
                    f"(offered {dut_neg.offered:#x})"
                )
                return
            ctx.evaluated("suite.device.feature-negotiation")
            used_roles = {s.role for s in case.steps if s.kind == "avail"}
            ctx.evaluated("suite.device.queue-layout")
            lacking = sorted(r for r in used_roles if r not in dut_neg.queues)
            if lacking:
                ctx.broken(
                    "suite.device.queue-layout",
                    f"no queue for role(s) {lacking}",
                    None,
                    expected=sorted(ref_neg.queues),
                    received=sorted(dut_neg.queues),
                )
            # the recorded driver posted each role on a queue index (its index model,
            # PROTOCOL.md section 4): a device that numbers queues otherwise receives that
            # traffic on another queue (QEMU numbers by offered features, Linux by negotiated)
            recorded = _recorded_queues(case)
            moved = {r: (i, dut_neg.queues[r]) for r, i in recorded.items()
                     if r in dut_neg.queues and dut_neg.queues[r] != i}
            if moved:
                model = getattr(case.header, "index_model", "?")
                ctx.broken(
                    "suite.device.queue-layout",
                    "the driver uses " + ", ".join(
                        f"{r} on queue {i}" for r, (i, _) in sorted(moved.items()))
                    + f" ({model} index model); the device has "
                    + ", ".join(f"{r} on {d}" for r, (_, d) in sorted(moved.items())),
                    None,
                    expected={r: i for r, (i, _) in moved.items()},
                    received={r: d for r, (_, d) in moved.items()},
                )
            ctx.evaluated("spec.device.config.size")
            if dut_neg.config_size != ref_neg.config_size:
                ctx.broken(
                    "spec.device.config.size",
                    f"config space is {dut_neg.config_size} bytes, expected {ref_neg.config_size}",
                    None,
                    expected=ref_neg.config_size,
                    received=dut_neg.config_size,
                )
            self._replay(case, ctx, ref, result, ref_neg.config_size)
        finally:
            with _suppress():
                ref.stop()
            close_device(ref)
            result.results = list(ctx.results.values())

    def _apply(self, dev: DeviceUnderTest, step: Step) -> tuple[list[Used], bytes | None]:
        if step.kind == "avail":
            return dev.avail(step.role, step.head, list(step.segments)), None
        if step.kind == "config_write":
            dev.config_write(step.offset, step.data)
            return [], None
        if step.kind == "config_read":
            return [], dev.config_read(step.offset, len(step.data))
        return dev.host_request(step.host_kind, dict(step.params)), None

    def _replay(
        self, case: Case, ctx: CaseContext, ref: DeviceUnderTest, result: CaseResult, cfg_size: int
    ) -> None:
        for step in case.steps:
            if step.kind == "avail":
                ctx.ref.outstanding[(step.role, step.head)] = step
                ctx.dut.outstanding[(step.role, step.head)] = step
            try:
                ref_used, ref_cfg = self._apply(ref, step)
            except Unsupported as exc:
                result.status = Verdict.SKIPPED
                result.reason = f"the reference device cannot replay step {step.index}: {exc}"
                return
            except PeerError as exc:
                raise VBProtoError(
                    f"reference device failed: {exc}", where=f"step {step.index}"
                ) from None
            entry = step.to_json()
            entry["reference"] = _used_json(ref_used)
            try:
                dut_used, dut_cfg = self._apply(self.device, step)
            except Unsupported as exc:
                result.status = Verdict.UNSUPPORTED
                result.reason = f"step {step.index} ({step.describe()}): {exc}"
                result.traffic.append(entry)
                return
            except PeerError as exc:
                entry["error"] = str(exc)
                result.traffic.append(entry)
                self._peer_failure(ctx, step, exc)
                return
            entry["device"] = _used_json(dut_used)
            result.traffic.append(entry)
            for chk in STEP_CHECKS:
                chk(ctx, step, ref_used, dut_used)
            if ref_cfg is not None and dut_cfg is not None:
                compare_config(ctx, step.index, ref_cfg, dut_cfg)
            try:
                if step.kind in ("config_write", "host") and cfg_size:
                    compare_config(
                        ctx,
                        step.index,
                        ref.config_read(0, cfg_size),
                        self.device.config_read(0, cfg_size),
                    )
                compare_state(ctx, step.index, ref.observe(), self.device.observe())
            except PeerError as exc:
                self._peer_failure(ctx, step, exc)
                return
        for end in END_CHECKS:
            end(ctx)

    def _peer_failure(self, ctx: CaseContext, step: Step, exc: PeerError) -> None:
        clause = "suite.device.transport"
        if step.kind == "avail" and step.role == "stats":
            decoded = _wire_findings(ctx, step)
            if any(
                getattr(f, "rule", "") == "spec.device.stats.ignores-unknown-tag" for f in decoded
            ):
                ctx.broken(
                    "spec.device.stats.ignores-unknown-tag",
                    f"device failed on a stats buffer with unknown tags: {exc}",
                    step.index,
                )
        ctx.broken(clause, f"step {step.index} ({step.describe()}): {exc}", step.index)

    # --- many cases ----------------------------------------------------------------------------
    def run(
        self,
        cases: list[Case],
        *,
        corpus: str = "",
        on_case: Callable[[RunResult, CaseResult], None] | None = None,
    ) -> RunResult:
        """Run ``cases`` in order; ``on_case`` is called after each (reports are written from
        it, so an interrupted run leaves a valid partial report)."""
        run = RunResult(
            device=self.device_spec,
            corpus=corpus,
            strict=self.strict,
            started=time.time(),
            known_failures=self.known.path,
            planned=len(cases),
        )
        for case in cases:
            res = self.run_case(case)
            run.cases.append(res)
            if on_case is not None:
                on_case(run, res)
        run.partial = False
        run.finished = time.time()
        run.unmatched_known = self.known.unmatched()
        return run


class _suppress:
    """Suppress errors of a device's stop(): a dead testee must not hide the case result."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, (VBProtoError, OSError))


# --------------------------------------------------------------------------- offline check
def _finding_result(ctx: CaseContext, finding: Any, step: Step, from_driver: bool = True) -> None:
    """A wire finding -> a clause result.  A finding about a *device* clause in bytes the
    driver wrote (e.g. a stats tag the spec does not define) is a note for the device, not a
    driver failure: recorded as pass with the message."""
    rule = getattr(finding, "rule", "")
    msg = getattr(finding, "message", str(finding))
    where = ""
    if getattr(finding, "field", None):
        where += f" field {finding.field}"
    if getattr(finding, "offset", None) is not None:
        where += f" at byte {finding.offset}"
    clause = ctx.catalog.find(rule)
    if clause is None:
        ctx.broken(rule or "suite.unknown", f"(rule not in the catalog) {msg}", step.index)
        return
    if from_driver and clause.side == "device":
        if rule not in ctx.results:
            ctx.results[rule] = ClauseResult(rule, Verdict.PASS, f"(note) {msg}", step.index)
        return
    ctx.broken(rule, f"{step.describe()}{where}: {msg}", step.index)


@check(
    "spec.device.used.id-is-head",
    "spec.device.used.len-written",
    "spec.driver.stats.one-buffer",
    "spec.driver.config.actual-atomic-write",
    "spec.driver.op.update-actual",
    "spec.driver.op.no-deflate-before-inflate-ack",
    "v3.driver.misc.req-buffer-16",
    "v3.driver.features.bitmap-needs-stats",
    "spec.driver.features.accept-must-tell-host",
    "spec.driver.hint.one-cmd-id-buffer",
    "v3.driver.unused.req-id-echo",
    "v3.driver.unused.one-done",
    "hybrid.driver.unused.id-echo",
    "hybrid.driver.unused.one-done",
)
def check_trace(
    path: str | Path, *, cat: Catalog | None = None, strict: bool = False
) -> CaseResult:
    """Validate both sides of a recorded trace against the clauses (no device involved)."""
    from virtio_balloon_proto import trace as tr

    case = load_case(path)
    cat = cat or catalog()
    ctx = CaseContext(case, cat, strict)
    result = CaseResult(case.id, case.profile, case.path)
    prof = get_profile(case.profile)
    neg = prof.names(case.header.features_negotiated)
    offered = prof.names(case.header.features_offered)
    ctx.negotiated_names = neg
    if case.profile in ("v3", "hybrid"):
        ctx.evaluated("v3.driver.features.bitmap-needs-stats")
        if ("PAGE_BITMAP" in neg or "MISC_VQ" in neg) and "STATS_VQ" not in neg:
            ctx.broken(
                "v3.driver.features.bitmap-needs-stats", f"negotiated {neg} without STATS_VQ"
            )
    if "MUST_TELL_HOST" in offered:
        ctx.evaluated("spec.driver.features.accept-must-tell-host")
        if "MUST_TELL_HOST" not in neg:
            ctx.broken("spec.driver.features.accept-must-tell-host", "offered but not accepted")

    by_index = {s.index: s for s in case.steps}
    outstanding: dict[tuple[str, int], Step] = {}
    saw_used = False
    last_page_ack: int | None = None
    last_actual_write: int | None = None
    inflight_inflate: dict[tuple[str, int], set[int]] = {}
    pending_req: list[int] = []  # request ids the device asked for, oldest first
    open_answer: dict[int, bool] = {}  # req_id -> DONE seen
    hint_ids: dict[int, int] = {}
    order = "<" if case.setup.endian == "le" else ">"
    for i, ev in enumerate(case.events, start=1):
        step = by_index.get(i)
        if isinstance(ev, tr.AvailEvent) and step is not None:
            for f in _wire_findings(ctx, step):
                _finding_result(ctx, f, step)
            key = (step.role, step.head)
            if step.role == "stats":
                ctx.evaluated("spec.driver.stats.one-buffer")
                if any(r == "stats" for r, _ in outstanding):
                    ctx.broken(
                        "spec.driver.stats.one-buffer",
                        "a second stats buffer while one is still available",
                        i,
                    )
            if step.role == "misc" and _writable(step):
                ctx.evaluated("v3.driver.misc.req-buffer-16")
                if _writable(step) != 16:
                    ctx.broken(
                        "v3.driver.misc.req-buffer-16",
                        f"request buffer is {_writable(step)} bytes",
                        i,
                    )
            decoded = _decode_step(case, step)
            if step.role == "free_page" and decoded is not None and decoded.kind == "hint-cmd":
                cid = decoded.message.cmd_id
                ctx.evaluated("spec.driver.hint.one-cmd-id-buffer")
                if cid >= 2:
                    hint_ids[cid] = hint_ids.get(cid, 0) + 1
                    if hint_ids[cid] > 1:
                        ctx.broken(
                            "spec.driver.hint.one-cmd-id-buffer",
                            f"command id {cid:#x} sent {hint_ids[cid]} times",
                            i,
                        )
                else:
                    hint_ids.clear()
            if (
                decoded is not None
                and decoded.carries_pages
                and step.role in ("inflate", "deflate")
            ):
                pages = set(_frames([tuple(e) for e in decoded.extents()]))
                if step.role == "inflate":
                    inflight_inflate[key] = pages
                else:
                    ctx.evaluated("spec.driver.op.no-deflate-before-inflate-ack")
                    for (_, h), ip in inflight_inflate.items():
                        if pages & ip:
                            ctx.broken(
                                "spec.driver.op.no-deflate-before-inflate-ack",
                                f"deflate names {len(pages & ip)} frame(s) of inflate head "
                                f"{h}, not yet acknowledged",
                                i,
                            )
            if step.role == "misc" and decoded is not None and not _writable(step):
                _check_answer(ctx, case, decoded, pending_req, open_answer, i)
            outstanding[key] = step
        elif isinstance(ev, tr.UsedEvent):
            saw_used = True
            role = str(getattr(ev.role, "value", ev.role))
            head = ev.id
            if head is None:
                # the capture saw no descriptor ids (a QEMU trace log): the device returns this
                # role's chains in order, so pair with the oldest one still outstanding
                oldest = [k for k in outstanding if k[0] == role]
                if oldest:
                    head = oldest[0][1]
            else:
                ctx.evaluated("spec.device.used.id-is-head")
            if head is None or (role, head) not in outstanding:
                ctx.broken(
                    "spec.device.used.id-is-head",
                    f"used id {head} on {role} names no available chain",
                    i,
                )
                continue
            av = outstanding.pop((role, head))
            inflight_inflate.pop((role, head), None)
            cap = _writable(av)
            ctx.evaluated("spec.device.used.len-written")
            if ev.len > cap:
                ctx.broken(
                    "spec.device.used.len-written",
                    f"{role} head {head}: used len {ev.len} > {cap} writable bytes",
                    i,
                )
            if role in ("inflate", "deflate"):
                last_page_ack = i
            if role == "misc" and cap:
                ctx.evaluated("v3.device.req.len-16")
                if ev.len != 16:
                    ctx.broken("v3.device.req.len-16", f"request used with len {ev.len}", i)
                if ev.data is not None:
                    try:
                        from virtio_balloon_proto.wire.layout import WireLayout
                        from virtio_balloon_proto.wire.messages import decode

                        s = case.setup
                        req = decode(
                            "req",
                            ev.data[: ev.len],
                            WireLayout(s.endian, s.word_size, s.word_order, s.page_size),
                            profile=case.profile,
                        )
                        for f in req.findings:
                            _finding_result(ctx, f, av, from_driver=False)
                        if len(ev.data) >= 16:
                            pending_req.append(struct.unpack(f"{order}Q", ev.data[8:16])[0])
                    except VBProtoError as exc:
                        ctx.broken("v3.device.req.len-16", f"request does not decode: {exc}", i)
        elif isinstance(ev, tr.ConfigEvent) and ev.write:
            ctx.evaluated("spec.driver.config.actual-atomic-write")
            end = ev.offset + len(ev.data)
            if ev.offset < 8 and end > 4 and (ev.offset != 4 or len(ev.data) != 4):
                ctx.broken(
                    "spec.driver.config.actual-atomic-write",
                    f"config write of {len(ev.data)} byte(s) at offset {ev.offset} touches actual",
                    i,
                )
            if ev.offset <= 4 < end:
                last_actual_write = i
        elif (
            isinstance(ev, tr.HostEvent)
            and ev.action == "get-unused-pages"
            and ev.req_id is not None
        ):
            if ev.req_id not in pending_req:
                pending_req.append(ev.req_id)
    if saw_used:
        for (role, head), st in sorted(outstanding.items()):
            if role == "stats" or (role == "misc" and _writable(st)):
                continue  # held by design until the next request
            clause = ACK_CLAUSE.get(role, "spec.device.used.id-is-head")
            ctx.evaluated(clause)
            ctx.broken(clause, f"{role} head {head} (step {st.index}) never used", st.index)
    if last_page_ack is not None:
        ctx.evaluated("spec.driver.op.update-actual")
        if last_actual_write is None or last_actual_write < last_page_ack:
            ctx.broken(
                "spec.driver.op.update-actual",
                "no write of 'actual' after the last inflate/deflate acknowledgement "
                f"(event {last_page_ack})",
                last_page_ack,
            )
    prefix = "v3" if case.profile == "v3" else "hybrid"
    for rid, done in open_answer.items():
        if not done:
            ctx.broken(
                f"{prefix}.driver.unused.one-done", f"answer to request {rid:#x} has no DONE header"
            )
    result.results = list(ctx.results.values())
    result.traffic = [s.to_json() for s in case.steps]
    return result


def _check_answer(
    ctx: CaseContext,
    case: Case,
    decoded: Any,
    pending: list[int],
    open_answer: dict[int, bool],
    i: int,
) -> None:
    fields = decoded.fields()
    prefix = "v3" if case.profile == "v3" else "hybrid"
    rid = fields.get("req_id", fields.get("id"))
    flag = fields.get("flag")
    if rid is None or flag is None:
        return
    echo = (
        f"{prefix}.driver.unused.req-id-echo" if prefix == "v3" else "hybrid.driver.unused.id-echo"
    )
    ctx.evaluated(echo)
    ctx.evaluated(f"{prefix}.driver.unused.one-done")
    # hybrid's id is 16 bits wide: compare modulo its width
    known = pending if prefix == "v3" else [p & 0xFFFF for p in pending]
    if known and rid not in known:
        ctx.broken(
            echo,
            f"answer carries request id {rid:#x}, the device asked for {[hex(p) for p in known]}",
            i,
        )
    if open_answer.get(rid):
        ctx.broken(f"{prefix}.driver.unused.one-done", f"header after DONE for request {rid:#x}", i)
    open_answer[rid] = open_answer.get(rid, False) or flag == 1
