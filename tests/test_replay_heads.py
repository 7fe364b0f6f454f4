"""conform run never posts a buffer under a head the device still holds (conformance/heads.py).

A trace's driver reposted head 0 once its device had used it; a device under test that holds a
buffer longer (allowed: VIRTIO 1.2/1.4 put no deadline on using a buffer) must not see that head
made available again -- the harness's driver would break VIRTIO 1.2 3.3.1 "A driver MUST NOT
alter virtqueue entries for exposed buffers" -- and must not be failed for the buffer that
breach loses.  Each device here (tests/oracle_devices.py) keys what it holds by head, as a ring
does, and lists every reused head it saw.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from virtio_balloon_proto import trace as tr
from virtio_balloon_proto.conformance.heads import REPLAY_QUEUE_SIZE, RING_FULL, HeldHeads
from virtio_balloon_proto.conformance.runner import (
    Runner,
    case_from_trace,
    check_trace,
    discover_cases,
    load_case,
)
from virtio_balloon_proto.conformance.verdicts import CaseResult

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "conformance" / "traces"
sys.path.insert(0, str(HERE))

import oracle_devices as od  # noqa: E402

# (device, cases with at least two buffers of the role it holds)
LATE = [
    (od.HoldsFirstBuffer, "spec/inflate-le"), (od.HoldsFirstBuffer, "spec/inflate-be"),
    (od.HoldsFirstBuffer, "spec/inflate-big-buffer-le"),
    (od.HoldsFirstBuffer, "spec/inflate-chained-be"), (od.HoldsFirstBuffer, "spec/deflate-le"),
    (od.HoldsFirstBuffer, "spec/must-tell-host-le"),
    (od.HoldsFirstDeflate, "spec/deflate-le"), (od.HoldsFirstDeflate, "spec/inflate-high-ram-le"),
    (od.HoldsFirstHint, "spec/hint-le"), (od.HoldsFirstHint, "spec/hint-replayed-id-be"),
    (od.HoldsFirstReport, "spec/report-le"), (od.HoldsFirstReport, "spec/report-outside-ram-le"),
]


def _run(device: object, case_id: str, *, strict: bool = False,
         save: Path | None = None) -> CaseResult:
    (c,) = discover_cases(CORPUS, case_globs=[case_id])
    runner = Runner(device, timeout=5, strict=strict, save_traces=save)  # type: ignore[arg-type]
    try:
        return runner.run_case(c)
    finally:
        runner.close()


@pytest.mark.parametrize(("cls", "case_id"), LATE,
                         ids=[f"{c.__name__}-{i}" for c, i in LATE])
def test_a_device_that_holds_a_buffer_over_the_next_post_passes(cls: type, case_id: str,
                                                                tmp_path: Path) -> None:
    """600bd80 replayed the trace's head 0 while the device held it: the device saw the head
    twice (``reused``), lost the first buffer, and failed spec.device.*.acks-buffer (MUST;
    hint: the suite SHOULD) for the harness's own breach."""
    for strict in (False, True):
        dev = cls()
        res = _run(dev, case_id, strict=strict, save=tmp_path)
        assert dev.reused == [], dev.reused
        assert res.outcome(strict) == "pass", res.details_text()
        assert any("posted under head 1" in n and "still holds the trace's head 0" in n
                   for n in res.notes), res.notes
    # the recorded trace holds the heads the device saw: re-judged offline, the same verdicts
    again = check_trace(tmp_path / f"{case_id}.jsonl", subject="device")
    assert sorted((r.clause, r.verdict.value) for r in again.results) == sorted(
        (r.clause, r.verdict.value) for r in res.results)
    _, events = tr.read_trace(tmp_path / f"{case_id}.jsonl")
    heads = [ev.id for ev in events if isinstance(ev, tr.AvailEvent) and ev.role == cls.ROLE]
    assert 1 in heads and 0 in heads, heads


def test_a_prompt_device_sees_the_trace_heads_unchanged(tmp_path: Path) -> None:
    """The reference device uses every buffer at once: every buffer goes under the trace's own
    head, and the recorded avail events are the trace's."""
    res = _run("reference", "spec/inflate-le", save=tmp_path)
    assert res.outcome() == "pass" and not any("posted under head" in n for n in res.notes)
    _, want = tr.read_trace(CORPUS / "spec" / "inflate-le.jsonl")
    _, got = tr.read_trace(tmp_path / "spec" / "inflate-le.jsonl")
    avails = [e for e in got if isinstance(e, tr.AvailEvent)]
    assert avails == [e for e in want if isinstance(e, tr.AvailEvent)]


def test_held_heads_allocator() -> None:
    h = HeldHeads(4)
    assert h.post("inflate", 0) == 0  # the trace's own head when free
    assert h.post("inflate", 0) == 1  # held: the lowest free one
    assert h.post("deflate", 0) == 0  # one ring per queue
    assert h.post("inflate", 1) == 2 and h.post("inflate", 0) == 3
    assert ("inflate", 3) in h and ("stats", 0) not in h
    assert h.post("inflate", 2) is None  # every head held: the ring is full
    assert h.release("inflate", 1) and not h.release("inflate", 1)
    assert h.post("inflate", 0) == 1
    assert h.post("inflate", 9) == 9 and h.ring_size("inflate") == 16  # the trace's ring


def _many_inflates(n: int) -> tuple[object, list[object]]:
    """spec/inflate-le's setup, then ``n`` one-PFN inflate buffers all under head 0 (the
    recorded device used each at once), then the host's set-target and the driver's actual."""
    header, events = tr.read_trace(CORPUS / "spec" / "inflate-le.jsonl")
    start = [e for e in events[:6] if not isinstance(e, (tr.AvailEvent, tr.UsedEvent))]
    tmpl = next(e for e in events if isinstance(e, tr.AvailEvent))
    body: list[object] = []
    for k in range(n):
        body.append(dataclasses.replace(tmpl, out=((0x4000 + k).to_bytes(4, "little"),),
                                        descriptors=None, avail_idx=k & 0xFFFF))
        body.append(tr.UsedEvent(tmpl.role, tmpl.queue, 0, 0))
    body.append(tr.HostEvent("set-target", num_pages=n))
    body.append(tr.ConfigEvent(True, 4, n.to_bytes(4, "little")))  # the driver's actual
    return header, start + body


def test_a_full_ring_is_a_named_outcome_not_a_failure() -> None:
    """A device that uses no inflate buffer until the host asks holds the whole ring: the
    buffers past it cannot be posted (a driver would wait).  They are not replayed, the report
    says why, and the device -- which uses every buffer it got -- passes."""
    n = REPLAY_QUEUE_SIZE + 2
    header, events = _many_inflates(n)
    case = case_from_trace(header, events, "many-inflates")
    dev = od.HoldsInflatesUntilAsked()
    runner = Runner(dev, timeout=5)
    try:
        res = runner.run_case(case)
    finally:
        runner.close()
    assert res.outcome() == "pass", res.details_text()
    full = [n_ for n_ in res.notes if RING_FULL in n_]
    assert len(full) == 2 and f"{REPLAY_QUEUE_SIZE} heads" in full[0], res.notes
    assert "2 buffer(s) not replayed" in res.reason, res.reason  # never passed over silently
    assert dev.waiting == []  # every buffer it got came back


def test_load_case_is_unchanged_by_the_allocator() -> None:
    """The case's own steps keep the trace's heads (only the replay picks others)."""
    c = load_case(CORPUS / "spec" / "inflate-le.jsonl")
    assert {s.head for s in c.steps if s.kind == "avail"} == {0}
