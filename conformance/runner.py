"""The conformance runner: replay recorded driver traffic into a device and judge what it did.

A *case* is one trace file (``vbproto-trace/1``, docs/trace-format.md) and its id (the path
under the corpus, without ``.jsonl``).  Two ways to use a case, one judgement:

* :meth:`Runner.run_case` (``vbproto conform run``): start the device under test with the
  :class:`~.dut.Setup` of the trace header, replay the driver-side events (avail, config
  writes/reads, host requests), and record what the device did as a trace (format 1.1: its used
  entries, config answers, and ``observe`` events with its state after every step).  That trace
  is judged by :func:`.checks.judge`; ``--save-traces`` keeps it.
* :func:`check_trace` (``vbproto conform check``): judge a recorded trace as it is, with the
  same checks: what the driver sent and what the recorded device answered.

The oracle is the clause checks (conformance/checks/), never another device: where the spec
leaves a choice every allowed choice passes and the result names it (``behaviour``).

The device under test is never trusted: adapters turn its crashes, hangs and garbage into
PeerError (-> clause ``suite.device.transport``), and the runner goes on with the next case.
A device that could not be started at all (PeerStartError: a missing program, a QEMU that
exits before its qtest/QMP handshakes) is no device answer: that case is ``error`` (not run).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtio_balloon_proto.errors import PeerError, PeerStartError, VBProtoError
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.profiles import QueueRole, get_profile

from .adapters import close_device, open_device
from .cases import (
    REPORT_DATA_LIMIT,
    Case,
    Step,
    case_from_trace,
    default_corpus,
    discover_cases,
    load_case,
)
from .catalog import Catalog, catalog
from .checks import judge
from .checks.queues import HELD_HEAD
from .dut import DeviceUnderTest, Unsupported
from .heads import RING_FULL, HeldHeads
from .known_failures import KnownFailures
from .offline import check_trace
from .stdio_adapter import DEFAULT_TIMEOUT
from .verdicts import CaseResult, RunResult, Verdict, hexdump

__all__ = ["REPORT_DATA_LIMIT", "Case", "Runner", "Step", "case_from_trace", "check_trace",
           "default_corpus", "discover_cases", "load_case"]

VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4


# --------------------------------------------------------------------------- the runner
DeviceFactory = Callable[[], DeviceUnderTest]
#: queue roles a host request may produce used entries on
HOST_ROLES = {
    "stats-poll": ("stats",),
    "get-unused-pages": ("misc",),
    "hint-start": ("free_page",),
    "hint-stop": ("free_page",),
    "set-target": (),
}


def _device_features(profile: str, word: int) -> int:
    """The device-type feature bits of ``word`` (transport bits left out)."""
    prof = get_profile(profile)
    return prof.mask([n for n in prof.names(word) if n in prof.features])


class Runner:
    """Runs cases against one device under test.

    Each case: the driver side of the trace is replayed into the device; what the device does
    (used entries, config reads, its observable state after every step) is recorded as a trace
    (format 1.1, ``observe`` events) and that trace is judged by :func:`.checks.judge` -- the
    same judgement ``conform check`` gives a captured trace.  ``save_traces``: a directory to
    write each recorded trace to (``<case id>.jsonl``), to be re-judged offline.

    ``reference`` is accepted for compatibility and ignored: the oracle is the clause checks,
    never another device.
    """

    def __init__(
        self,
        device: str | DeviceUnderTest,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        strict: bool = False,
        known_failures: KnownFailures | None = None,
        reference: DeviceFactory | None = None,
        cat: Catalog | None = None,
        save_traces: str | Path | None = None,
        traffic: bool = True,
    ) -> None:
        self.device_spec = device if isinstance(device, str) else getattr(device, "name", "device")
        self.device: DeviceUnderTest = (
            open_device(device, timeout=timeout) if isinstance(device, str) else device
        )
        self.timeout = timeout
        self.strict = strict
        self.known = known_failures or KnownFailures([])
        self.catalog = cat or catalog()
        self.save_traces = Path(save_traces) if save_traces is not None else None
        #: keep each case's traffic log (hex dumps, for reports); off, a 128 GiB guest's
        #: replay does not hold ~5 KB of text per buffer (issue 13)
        self.traffic = traffic
        del reference

    def close(self) -> None:
        close_device(self.device)

    # --- one case ------------------------------------------------------------------------------
    def run_case(self, case: Case) -> CaseResult:
        t0 = time.monotonic()
        result = CaseResult(case.id, case.profile, case.path)
        try:
            self._run(case, result)
        except VBProtoError as exc:  # our side: a trace that cannot be replayed, ...
            result.status = Verdict.ERROR
            result.reason = str(exc)
        except Exception as exc:
            # a device's unusable answer is recorded by record() (an ``error`` observation, so
            # the saved trace judges the same); anything else is our side's bug: the case
            # could not be judged, and no judged case is left without its saved trace
            result.results = []
            result.status = Verdict.ERROR
            result.reason = f"runner error (not the device's): {type(exc).__name__}: {exc}"[:400]
        except BaseException:
            # interrupted (Ctrl-C, SIGTERM): do not wait for a device that may be hung
            close_device(self.device)
            raise
        with _suppress():
            self.device.stop()
        result.duration = time.monotonic() - t0
        self.known.apply(result)
        return result

    def record(self, case: Case, result: CaseResult) -> tuple[Any, list[Any]] | None:
        """Replay ``case`` into the device and record what it did; None when the case could
        not be run (``result.status``/``reason`` say why)."""
        from virtio_balloon_proto import trace as tr

        hdr = case.header
        memory = hdr.memory if hdr.memory is not None else ((0, case.setup.memory_size),)
        window = hdr.window
        if window is not None and window.captured is not None:
            # the run sees everything the device does: its used elements and written bytes
            window = dataclasses.replace(window, captured=tuple(dict.fromkeys(
                (*window.captured, "used", "device-bytes"))))
        header = dataclasses.replace(
            hdr, memory=memory, observed=True, window=window,
            source=tr.TraceSource(tool="vbproto conform run",
                                  provenance=f"device {self.device_spec}; case {case.id}"))
        out: list[Any] = []
        self._traffic: list[dict[str, Any]] = []  # this case's (also when start fails)
        self._reposted: list[str] = []  # the first buffers posted under another head
        self._n_reposted = 0
        self._ring_full = 0  # buffers not posted: the device held every head of their ring
        try:
            neg = self.device.start(case.setup)
        except Unsupported as exc:
            result.status = Verdict.UNSUPPORTED
            result.reason = str(exc)
            result.unsupported_by = getattr(exc, "by", "")
            return None
        except PeerStartError as exc:
            # our side could not bring the device up (no such program, it exited or stayed
            # silent before its control channels answered): the case could not be run
            result.status = Verdict.ERROR
            result.reason = f"the device could not be started (case not run): {exc}"
            return None
        except PeerError as exc:
            out.append(tr.ObserveEvent("error", {"message": f"start: {exc}"}))
            return header, out
        except Exception as exc:  # an answer no check foresaw: recorded, so the saved trace
            out.append(tr.ObserveEvent("error", {"message": _unusable("start", exc)}))
            return header, out  # judges the same (suite.device.transport)
        prof = get_profile(case.profile)
        need = _device_features(case.profile, hdr.features_negotiated)
        missing = need & ~neg.accepted
        if missing:
            result.status = Verdict.UNSUPPORTED
            result.reason = (f"device did not accept feature(s) {', '.join(prof.names(missing))} "
                             f"(offered {neg.offered:#x})")
            result.unsupported_by = "device"  # it did not offer (or refused) what the case needs
            return None
        out.append(tr.ObserveEvent("device", {
            "offered": neg.offered, "accepted": neg.accepted, "queues": dict(neg.queues),
            "config_size": neg.config_size}))
        # a device that reports its balloon as a change per step (observe_changes): O(change)
        # per step; a full observe() is recorded once at the end (the checkpoint)
        observe = getattr(self.device, "observe_changes", None) or self.device.observe
        deltas = False
        seen: dict[str, Any] = {}  # the last value recorded per key (equal ones are shared)
        steps = case.iter_steps()  # made as the replay walks them, in trace order
        nxt = next(steps, None)
        # the heads the device holds per role; a buffer whose trace head is held goes under a
        # free one (heads.py: the harness's driver never alters an exposed buffer, 3.3.1)
        outstanding = HeldHeads()
        qmap = {str(getattr(r, "value", r)): q for r, q in hdr.queues.items()}
        for i, ev in enumerate(case.events, start=1):
            step = None
            if nxt is not None and nxt.index == i:
                step, nxt = nxt, next(steps, None)
            if isinstance(ev, (tr.UsedEvent, tr.ObserveEvent)):
                continue  # the recorded device's reactions: this device makes its own
            if step is None:
                out.append(ev)
                if isinstance(ev, (tr.AvailEvent, tr.HostEvent)):
                    gap = next((g for g in case.gaps if g.startswith(f"event {i} ")), "")
                    out.append(tr.ObserveEvent(
                        "gap", {"message": (gap or f"event {i}") + "; not replayed"}))
                continue
            if step.kind == "avail" and step.role == "stats" and (
                    step.role, step.head) in outstanding:
                # the trace's driver reposts a head its recorded device had used; this device
                # still holds it (it did not ask when the host did -- its right, VIRTIO 1.2
                # 5.5.6.3): the same head cannot be available twice (2.7), so the buffer is
                # not replayed, and no verdict rests on a ring the harness would have broken
                out.append(tr.ObserveEvent("gap", {"message": (
                    f"event {i} (avail stats head {step.head}): {HELD_HEAD} (it did not use "
                    "it when the host asked)")}))
                continue
            head = step.head
            if step.kind == "avail":
                posted = outstanding.post(step.role, step.head)
                if posted is None:
                    self._ring_full += 1
                    out.append(tr.ObserveEvent("gap", {"message": (
                        f"event {i} (avail {step.role} head {step.head}): {RING_FULL} "
                        f"({outstanding.ring_size(step.role)} heads, all made available and "
                        "not used)")}))
                    continue
                if posted != step.head:
                    head = posted
                    ev = dataclasses.replace(ev, id=head, descriptors=_moved(
                        ev.descriptors, step.head, head))
                    self._n_reposted += 1
                    if len(self._reposted) < 8:
                        self._reposted.append(
                            f"event {i} (avail {step.role}) posted under head {head}: the "
                            f"device still holds the trace's head {step.head} (VIRTIO 1.2 "
                            "3.3.1: an exposed buffer is never altered)")
            entry: dict[str, Any] = {}
            if self.traffic:
                entry = step.to_json()
                entry["step"] = len(out) + 1  # its event number in the recorded trace
                if head != step.head:
                    entry["head"], entry["trace_head"] = head, step.head
                self._traffic.append(entry)
            try:
                if step.kind == "avail":
                    out.append(ev)
                    used = self.device.avail(step.role, head, list(step.segments))
                elif step.kind == "config_write":
                    out.append(ev)
                    self.device.config_write(step.offset, step.data)
                    used = []
                elif step.kind == "config_read":
                    data = self.device.config_read(step.offset, len(step.data))
                    out.append(tr.ConfigEvent(False, step.offset, bytes(data)))
                    used = []
                else:
                    out.append(ev)
                    used = self.device.host_request(step.host_kind, dict(step.params))
                for u in used:
                    roles = ([step.role] if step.kind == "avail"
                             else list(HOST_ROLES.get(step.host_kind, ())))
                    role = next((r for r in roles if (r, u.id) in outstanding),
                                next((r for r, h in outstanding if h == u.id),
                                     roles[0] if roles else "inflate"))
                    outstanding.release(role, u.id)
                    out.append(tr.UsedEvent(QueueRole(role), qmap.get(role, neg.queues.get(
                        role, 0)), u.length, u.id, bytes(u.written) if u.written else None))
                if self.traffic:
                    entry["device"] = [
                        {"id": u.id, "len": u.length,
                         **({"written": hexdump(bytes(u.written))} if u.written else {})}
                        for u in used]
                state = dict(observe())
                deltas = deltas or "balloon_delta" in state
                state = _compact(state) if self.save_traces is None else _as_lists(state)
                if step.kind in ("config_write", "host") and neg.config_size:
                    state["config"] = bytes(self.device.config_read(0, neg.config_size)).hex()
                out.append(tr.ObserveEvent("state", _shared(_json_state(state), seen)))
            except Unsupported as exc:
                result.status = Verdict.UNSUPPORTED
                result.reason = f"step {step.index} ({step.describe()}): {exc}"
                result.unsupported_by = getattr(exc, "by", "")
                return None
            except PeerError as exc:
                entry["error"] = str(exc)
                out.append(tr.ObserveEvent("error", {
                    "message": f"step {step.index} ({step.describe()}): {exc}"}))
                return header, out
            except Exception as exc:  # as above: in the recorded trace, not only the result
                entry["error"] = _unusable(f"step {step.index} ({step.describe()})", exc)
                out.append(tr.ObserveEvent("error", {"message": entry["error"]}))
                return header, out
        if deltas:
            try:
                # the checkpoint; an in-process device may give its balloon as a PageSet
                full = getattr(self.device, "observe_compact", None) or self.device.observe
                final = dict(full())
                final = _compact(final) if self.save_traces is None else _as_lists(final)
                out.append(tr.ObserveEvent("state", _jsonable(final)))
            except PeerError as exc:
                out.append(tr.ObserveEvent("error", {"message": f"observe at the end: {exc}"}))
                return header, out
        out.append(tr.ObserveEvent("end"))
        return header, out

    def _run(self, case: Case, result: CaseResult) -> None:
        rec = self.record(case, result)
        if rec is None:
            return
        header, events = rec
        if self.save_traces is not None:
            from virtio_balloon_proto import trace as tr

            path = self.save_traces / f"{case.id}.jsonl"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tr.write_trace(path, header, events)
            except OSError as exc:
                # our own output (ENOSPC, EFBIG, ...): a runner-side error of this case, never
                # the device's failure -- and never a judged case without its saved trace
                raise VBProtoError(f"cannot save the recorded trace to {path}: "
                                   f"{exc.strerror or exc}", where=f"case {case.id}") from None
        try:
            judged = judge(header, events, cat=self.catalog, strict=self.strict,
                           subject="device")
        except Exception as exc:  # a bug in a check is ours, never the device's failure
            raise VBProtoError(f"judging the recorded trace failed: {type(exc).__name__}: "
                               f"{exc}", where=f"case {case.id}") from exc
        result.results = judged.results
        result.behaviour = judged.behaviour
        result.notes = judged.notes + [f"{g}; not replayed" for g in case.gaps]
        result.notes += self._reposted  # buffers conform run posted under another head
        if self._n_reposted > len(self._reposted):
            result.notes.append(f"... {self._n_reposted - len(self._reposted)} more buffer(s) "
                                "posted under another head than the trace's")
        if case.gaps:
            # never pass silently over what could not be replayed
            result.reason = (f"{len(case.gaps)} step(s) not replayed: "
                             + "; ".join(case.gaps)[:300])
        if self._ring_full:
            result.reason = "; ".join(filter(None, (result.reason, (
                f"{self._ring_full} buffer(s) not replayed: the device held every head of "
                "their queue (heads.py)"))))
        result.traffic = self._traffic

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


def _moved(descriptors: Any, old: int, new: int) -> Any:
    """A recorded chain's descriptors posted under head ``new`` instead of ``old``: the
    trace's ring positions are not where the replay put it, so the head's own index/id become
    ``new`` and the chain links (``next``) are left out; addresses, lengths, flags stay."""
    if descriptors is None:
        return None
    return tuple(dataclasses.replace(
        d, next=None, index=new if d.index == old else None,
        id=new if d.id == old else d.id) for d in descriptors)


def _compact(state: dict[str, Any]) -> dict[str, Any]:
    """A recorded observation's balloon extent lists (``balloon``, ``balloon_delta``'s
    ``add``/``remove``) as page sets: the recording is held until the case is judged, and a
    list of ``[first, count]`` lists costs ~85 bytes an extent (a 2 M-page inflate held
    0.5 GB) where a page set costs 16.  The oracle reads either form the same way
    (checks.base.pageset_of); a list that is not a valid extent list is kept as it came, for
    the oracle to judge.  Not used when the recording is written out (--save-traces: JSON)."""
    from .checks.base import pageset_of

    def pages(ext: Any) -> Any:
        ps = pageset_of(ext) if type(ext) is list else None  # the oracle's own reading
        return ext if ps is None else ps

    out = dict(state)
    if "balloon" in out:
        out["balloon"] = pages(out["balloon"])
    delta = out.get("balloon_delta")
    if type(delta) is dict:
        out["balloon_delta"] = {k: pages(v) if k in ("add", "remove") else v
                                for k, v in delta.items()}
    return out


def _shared(state: dict[str, Any], seen: dict[str, Any]) -> dict[str, Any]:
    """``state`` with each small value equal to the last one recorded under its key replaced
    by that one (``seen`` remembers them; the no-change balloon delta under its own key).  The
    recording holds a state per step -- a 128 GiB guest's replay 261,632 -- and most of their
    values repeat.  The recording is read, never changed, so sharing is safe."""
    for k, v in state.items():
        if type(v) not in _SHARED:
            continue
        memo = k
        if k == "balloon_delta":
            if not (v.keys() == {"add", "remove"} and all(
                    type(x) is PageSet and not x for x in v.values())):
                continue  # only the no-change delta (both empty page sets) repeats
            memo = "balloon_delta (empty)"
        o = seen.get(memo)
        if o is not None and o is not v and type(o) is type(v) and o == v:
            state[k] = o
        else:
            seen[memo] = v
    return state


_SHARED = (dict, list, str, int)


def _as_lists(state: dict[str, Any]) -> dict[str, Any]:
    """:func:`_compact` the other way: page sets (an in-process device's answer) as the JSON
    ``[[first, count], ...]`` lists a written recording holds (--save-traces)."""
    from virtio_balloon_proto.framemap import extent_list

    def lists(ext: Any) -> Any:
        return extent_list(ext) if isinstance(ext, PageSet) else ext

    out = dict(state)
    if "balloon" in out:
        out["balloon"] = lists(out["balloon"])
    delta = out.get("balloon_delta")
    if type(delta) is dict:
        out["balloon_delta"] = {k: lists(v) for k, v in delta.items()}
    return out


def _unusable(what: str, exc: Exception) -> str:
    return (f"{what}: the runner could not use the device's answer: {type(exc).__name__}: "
            f"{str(exc)[:300]}")


def _is_extents(v: list[Any] | tuple[Any, ...]) -> bool:
    """A list of [int, int] pairs: already JSON (one level of checks, not a call per int)."""
    return all(type(x) is list and len(x) == 2 and type(x[0]) is int and type(x[1]) is int
               for x in v)


def _json_state(state: dict[str, Any]) -> dict[str, Any]:
    """:func:`_jsonable` of an observation the runner just copied (``_compact``/``_as_lists``):
    its values converted in place, the usual ints, strings and page sets left as they are."""
    if not all(type(k) is str for k in state):
        return dict(_jsonable(state))
    for k, v in state.items():
        t = type(v)
        if not (t is int or t is str or t is PageSet or v is None):
            state[k] = _jsonable(v)
    return state


def _jsonable(v: Any) -> Any:
    t = type(v)
    if t is int or t is str or t is PageSet or v is None:
        return v  # as it is (a PageSet: an in-process device's extents, see _compact)
    if t is list and _is_extents(v):
        return list(v)
    if isinstance(v, dict):
        return {k if type(k) is str else str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    return v


class _suppress:
    """Suppress errors of a device's stop(): a dead testee must not hide the case result."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, (VBProtoError, OSError))
