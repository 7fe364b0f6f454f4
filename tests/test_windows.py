"""Captures are windows (issue 14 items 1-2): the header's ``window`` (format 1.2), the oracle
judging within it, absurd lengths as findings, every step not replayed or not checkable named.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtio_balloon_proto.conformance.catalog import catalog
from virtio_balloon_proto.conformance.checks import judge
from virtio_balloon_proto.conformance.report_junit import to_junit
from virtio_balloon_proto.conformance.runner import Runner, check_trace, discover_cases
from virtio_balloon_proto.conformance.verdicts import CaseResult, RunResult
from virtio_balloon_proto.profiles import QueueRole
from virtio_balloon_proto.trace import (
    FORMAT_1_2,
    AvailEvent,
    ConfigEvent,
    HostEvent,
    StatusEvent,
    TraceDescriptor,
    TraceHeader,
    TraceWindow,
    UsedEvent,
    read_trace,
    validate_trace,
    write_trace,
)
from virtio_balloon_proto.trace.lengths import absurd_lengths

HERE = Path(__file__).resolve().parent
CASES = HERE / "cases" / "windows"
IN_FLIGHT = CASES / "capture-ends-in-flight.jsonl"
HUGE = CASES / "stats-huge-len-bytes-not-captured.jsonl"
CLI = [sys.executable, "-m", "virtio_balloon_proto"]


def with_window(src: Path, dst: Path, window: TraceWindow) -> Path:
    header, events = read_trace(src)
    write_trace(dst, dataclasses.replace(header, window=window), events)
    return dst


def device_failures(res: CaseResult) -> set[str]:
    cat = catalog()
    out = set()
    for r in res.failures():
        c = cat.find(r.clause)
        if c is None or c.side != "driver":
            out.add(r.clause)
    return out


# --- the format --------------------------------------------------------------------------
def test_window_round_trips_as_format_1_2_and_old_formats_still_read(tmp_path: Path) -> None:
    seen = ("status", "features", "config", "host", "avail", "used", "driver-bytes")
    win = TraceWindow("mid", "cut", 65536, seen)
    out = with_window(IN_FLIGHT, tmp_path / "w.jsonl", win)
    first = json.loads(out.read_text().splitlines()[0])
    assert first["format"] == FORMAT_1_2
    assert first["window"] == {"start": "mid", "end": "cut", "host_page_size": 65536,
                               "captured": list(seen)}
    header, events = read_trace(out)
    assert header.window == win
    assert validate_trace(out) == []
    # the shared case is format 1: read, no window, written back as format 1
    old, old_events = read_trace(IN_FLIGHT)
    assert old.window is None and events == old_events
    assert old.to_json()["format"] == "vbproto-trace/1"


def test_window_needs_format_1_2_and_a_known_start(tmp_path: Path) -> None:
    lines = with_window(IN_FLIGHT, tmp_path / "w.jsonl", TraceWindow()).read_text().splitlines()
    rec = json.loads(lines[0])
    rec["format"] = "vbproto-trace/1.1"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    probs = validate_trace(bad)
    assert [p.line for p in probs] == [1] and "window is a vbproto-trace/1.2 field" in str(probs[0])
    rec["format"] = FORMAT_1_2
    rec["window"]["start"] = "boot"
    bad.write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    assert any("window/start" in p.message for p in validate_trace(bad))


# --- the oracle judges within the window ---------------------------------------------------------
def test_in_flight_at_a_cut_end_is_no_verdict_at_a_quiesced_end_a_failure(tmp_path: Path) -> None:
    cut = check_trace(with_window(IN_FLIGHT, tmp_path / "cut.jsonl", TraceWindow("reset", "cut")))
    assert cut.outcome() == "pass", cut.details_text()
    assert any("in flight" in n for n in cut.notes)
    quiet = check_trace(with_window(IN_FLIGHT, tmp_path / "q.jsonl",
                                    TraceWindow("reset", "quiesced")))
    # 5.5.6.1 / 2.7.8: a device that had every chance and never used the buffer
    assert "spec.device.inflate.acks-buffer" in device_failures(quiet)


def _stray_used(window: TraceWindow | None) -> tuple[TraceHeader, list[object]]:
    header = TraceHeader.for_features("spec", 1 << 32, 1 << 32, window=window)
    events: list[object] = [
        StatusEvent(1), StatusEvent(15),
        UsedEvent(QueueRole.INFLATE, 0, 0, id=5),  # no chain 5 in the trace
        AvailEvent(QueueRole.INFLATE, 0, (bytes(4),), id=0),
        UsedEvent(QueueRole.INFLATE, 0, 0, id=0),
    ]
    return header, events


def test_used_before_the_window_is_not_blamed_but_from_a_reset_it_is() -> None:
    # the window says where it starts, whatever the first event looks like
    h, evs = _stray_used(TraceWindow("mid", "cut"))
    mid = judge(h, evs)
    assert not [r for r in mid.results if r.verdict.value != "pass"]
    assert any("before the trace starts" in n for n in mid.notes)
    h, evs = _stray_used(TraceWindow("reset", "cut"))
    reset = judge(h, evs)
    # VIRTIO 1.2 2.7.8: "id indicates the head entry of the descriptor chain describing the
    # buffer" -- from a reset, no chain 5 was ever made available
    assert {r.clause for r in reset.results if r.verdict.value == "fail"} == {
        "spec.device.used.id-is-head"}
    h, evs = _stray_used(None)  # no window: status 1 first -> from reset (format 1 reading)
    assert {r.clause for r in judge(h, evs).results if r.verdict.value == "fail"} == {
        "spec.device.used.id-is-head"}


def test_pages_of_a_used_element_before_the_window_are_unknown() -> None:
    """actual 10 -> an inflate used from before the window (pages unknown) -> actual 13:
    relative accounting must not blame the driver for 3 pages it cannot see."""
    header = TraceHeader.for_features("spec", 1 << 32, 1 << 32, window=TraceWindow("mid", "cut"))

    def actual(n: int) -> ConfigEvent:
        return ConfigEvent(True, 4, n.to_bytes(4, "little"))

    events = [actual(10), UsedEvent(QueueRole.INFLATE, 0, 0, id=7), actual(13),
              AvailEvent(QueueRole.INFLATE, 0, (bytes.fromhex("00100000"),), id=1),
              UsedEvent(QueueRole.INFLATE, 0, 0, id=1), actual(14)]
    res = judge(header, events)
    verdicts = {r.clause: r.verdict.value for r in res.results}
    assert verdicts["spec.driver.op.actual-is-balloon-size"] == "pass"
    assert any("pages are unknown" in n for n in res.notes)
    # the same trace from a reset: actual 14 with one page acknowledged is wrong (5.5.4)
    wrong = dataclasses.replace(header, window=TraceWindow("reset", "cut"))
    verdicts = {r.clause: r.verdict.value for r in judge(wrong, events).results}
    assert verdicts["spec.device.used.id-is-head"] == "fail"


# --- absurd lengths, not checkable, not replayed -------------------------------------------------
def test_huge_stats_length_is_a_finding_in_decode() -> None:
    out = subprocess.run([*CLI, "decode", str(HUGE)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "not checkable" in out.stdout and "absurd length" in out.stdout
    assert "spec.driver.stats.duplicate-tag" in out.stdout
    js = subprocess.run([*CLI, "decode", "--json", str(HUGE)], capture_output=True, text=True,
                        check=False)
    first = json.loads(js.stdout.splitlines()[0])
    assert first["findings"][0]["rule"] == "spec.driver.stats.duplicate-tag"


def test_huge_stats_length_check_names_it_and_never_blames_the_device() -> None:
    res = check_trace(HUGE)
    assert device_failures(res) == set(), res.details_text()
    (dup,) = [r for r in res.failures() if r.clause == "spec.driver.stats.duplicate-tag"]
    assert "absurd length" in dup.message and "4294967290" in dup.message
    assert res.reason.startswith("1 buffer(s) not checkable")
    assert any(n.endswith("not checkable") for n in res.notes)
    run = RunResult(device="(check)", corpus=str(HUGE), strict=False, started=0.0)
    run.cases.append(res)
    junit = to_junit(run)
    assert 'name="(not checked)"' in junit and "not checkable" in junit


def test_run_names_every_step_it_did_not_replay(tmp_path: Path) -> None:
    header, events = read_trace(HUGE)
    events.insert(5, HostEvent("other", detail="balloon driver reloaded"))
    path = tmp_path / "gaps.jsonl"
    write_trace(path, header, events)
    (case,) = discover_cases(path)
    runner = Runner("reference", timeout=5)
    try:
        res = runner.run_case(case)
    finally:
        runner.close()
    assert not res.failures(), res.details_text()
    assert res.reason.startswith("2 step(s) not replayed")
    assert "event 6 (host other)" in res.reason and "event 7 (stats)" in res.reason
    assert sum("not replayed" in n for n in res.notes) == 2


def test_absurd_lengths_need_the_lengths_not_the_bytes() -> None:
    h = TraceHeader.for_features("spec", (1 << 32) | 2, (1 << 32) | 2,
                                 memory=((0, 1 << 30),))
    desc = (TraceDescriptor(0x1000, 700_000, 0),)
    ev = AvailEvent(QueueRole.STATS, 2, (None,), descriptors=desc, id=0)
    assert [f.rule for f in absurd_lengths(h, ev)] == ["spec.driver.stats.duplicate-tag"]
    small = AvailEvent(QueueRole.STATS, 2, (None,), descriptors=(TraceDescriptor(0x1000, 160, 0),))
    assert absurd_lengths(h, small) == []
    # a buffer running past the header's RAM (1 GiB) is outside guest memory (2.7.5)
    far = AvailEvent(QueueRole.INFLATE, 0, (None,),
                     descriptors=(TraceDescriptor((1 << 30) - 8, 16, 0),))
    assert [f.rule for f in absurd_lengths(h, far)] == ["spec.driver.ring.addr-in-memory"]
    # RAM not in the header: unknown, nothing said
    assert absurd_lengths(dataclasses.replace(h, memory=None), far) == []


@pytest.mark.parametrize("end", ["cut", "quiesced"])
def test_huge_stats_window_gives_the_same_verdict_either_end(tmp_path: Path, end: str) -> None:
    res = check_trace(with_window(HUGE, tmp_path / "h.jsonl", TraceWindow("reset", end)))
    assert device_failures(res) == set(), res.details_text()


# --- property: any window of a correct device's life blames no device ----------------------------
WINDOW_CASES = ["spec/inflate-le", "spec/deflate-le", "spec/stats-le", "spec/hint-le",
                "spec/report-le", "spec/poison-le", "v3/unused-pages-le64", "hybrid/inflate-le"]


@pytest.fixture(scope="module")
def correct_lives() -> dict[str, tuple[TraceHeader, list[object]]]:
    """What the reference device (a correct device) did in each case, as a capture would have
    seen it: the run's record without its observations."""
    from virtio_balloon_proto.trace import ObserveEvent

    corpus = HERE.parent / "conformance" / "traces"
    out = {}
    runner = Runner("reference", timeout=5)
    try:
        for cid in WINDOW_CASES:
            (case,) = discover_cases(corpus, case_globs=[cid])
            rec = runner.record(case, CaseResult(case.id, case.profile, case.path))
            assert rec is not None
            header, events = rec
            assert not device_failures_of(judge(header, events)), cid
            out[cid] = (dataclasses.replace(header, observed=False),
                        [e for e in events if not isinstance(e, ObserveEvent)])
    finally:
        runner.close()
    return out


def device_failures_of(judged: object) -> set[str]:
    cat = catalog()
    return {r.clause for r in judged.results  # type: ignore[attr-defined]
            if r.verdict.value == "fail" and ((c := cat.find(r.clause)) is None
                                              or c.side != "driver")}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_window_of_a_correct_device_blames_no_device(
        correct_lives: dict[str, tuple[TraceHeader, list[object]]], data: st.DataObject) -> None:
    """Cut a correct device's life at any two events: the window (start ``mid`` unless it
    starts at the first event, end ``cut``) gets no device failure -- in flight is not "never
    used", a used element from before the window is not a stray id, actual is relative."""
    cid = data.draw(st.sampled_from(sorted(correct_lives)), label="case")
    header, events = correct_lives[cid]
    a = data.draw(st.integers(0, len(events)), label="start")
    b = data.draw(st.integers(a, len(events)), label="end")
    win = TraceWindow("reset" if a == 0 else "mid", "cut")
    judged = judge(dataclasses.replace(header, window=win), events[a:b])
    assert device_failures_of(judged) == set(), (cid, a, b, judged.results)
    # and the driver breaks nothing in the window that it did not break in its whole life
    whole = {r.clause for r in judge(header, events).results if r.verdict.value != "pass"}
    part = {r.clause for r in judged.results if r.verdict.value != "pass"}
    assert part <= whole, (cid, a, b, [r for r in judged.results if r.clause in part - whole])


def test_split_ring_snapshot_case_passes_check() -> None:
    """Issue 14 "Done when": a split-ring snapshot of a correct device (chain 0 used, chain 3
    in flight), as `trace import split-ring --last-avail 0` writes it, passes conform check:
    the used chain is not checkable (its bytes are not proof), chain 3 is in flight."""
    res = check_trace(CASES / "split-ring-snapshot-one-used-one-in-flight.jsonl")
    assert res.outcome() == "pass", res.details_text()
    assert res.reason.startswith("1 buffer(s) not checkable")
    assert any("in flight" in n and "inflate head 3" in n for n in res.notes)


def test_decode_summary_names_the_window_and_used_elements_from_before_it(
        tmp_path: Path) -> None:
    header, events = read_trace(CASES / "split-ring-snapshot-one-used-one-in-flight.jsonl")
    path = tmp_path / "w.jsonl"
    write_trace(path, header, [UsedEvent(QueueRole.INFLATE, 0, 0, id=2), *events])
    out = subprocess.run([*CLI, "decode", "--summary", "--json", str(path)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)["summary"]
    assert s["window"] == {"start": "mid", "end": "cut",
                           "captured": ["avail", "used", "driver-bytes"]}
    # head 2 names no chain of the window (its pages are unknown); head 0's chain is in it
    assert s["used_before_window"] == {"inflate": 1}


def test_a_window_without_used_elements_judges_no_acknowledgement(tmp_path: Path) -> None:
    """qa: a quiesced window that did not capture used elements blamed the device for a chain
    it never saw used; what was not captured is not checkable (issue 14), never a failure."""
    seen = ("status", "features", "config", "host", "avail", "driver-bytes")
    header, events = read_trace(IN_FLIGHT)
    path = tmp_path / "nu.jsonl"  # what such a source records: no used elements
    write_trace(path, dataclasses.replace(
        header, window=TraceWindow("reset", "quiesced", captured=seen)),
        [ev for ev in events if not isinstance(ev, UsedEvent)])
    res = check_trace(path)
    assert "spec.device.inflate.acks-buffer" not in device_failures(res), res.details_text()
    assert any("used elements not captured" in n for n in res.notes)


# --- qa 2: a window's ``captured`` must not contradict its records -----------------------------
@pytest.mark.parametrize(("seen", "line", "record", "missing"), [
    # IN_FLIGHT: line 2 status, 4 features, 6 avail (bytes), 9 config_read, 10 host, 13 used
    (("features", "config", "host", "avail", "used", "driver-bytes"), 2, "status", "status"),
    (("status", "features", "config", "host", "used", "driver-bytes"), 6, "avail", "avail"),
    (("status", "features", "host", "avail", "used", "driver-bytes"), 9, "config_read",
     "config"),
    (("status", "features", "config", "host", "avail", "driver-bytes"), 13, "used", "used"),
    (("status", "features", "config", "host", "avail", "used"), 6, "avail", "driver-bytes"),
])
def test_captured_contradicting_the_records_is_refused(
        tmp_path: Path, seen: tuple[str, ...], line: int, record: str, missing: str) -> None:
    path = with_window(IN_FLIGHT, tmp_path / "c.jsonl", TraceWindow("reset", "cut", None, seen))
    probs = validate_trace(path)
    assert probs and probs[0].line == line, probs
    assert f"does not include '{missing}'" in probs[0].message
    assert str(list(seen)) in probs[0].message
    for argv in (["decode", "--json", str(path)], ["conform", "check", "--json", str(path)]):
        out = subprocess.run([*CLI, *argv], capture_output=True, text=True, check=False)
        assert out.returncode == 2, (argv, out.stdout[-500:], out.stderr[-500:])
        err = json.loads(out.stdout.strip().splitlines()[-1] if out.stdout.strip()
                         else out.stderr.strip().splitlines()[-1])
        assert err["where"].endswith(f"c.jsonl line {line}")
        assert f"does not include '{missing}'" in err["error"]


def test_config_actual_admits_num_pages_and_actual_only(tmp_path: Path) -> None:
    """QEMU's trace events show num_pages/actual accesses (get/set_config), never poison_val."""
    header, events = read_trace(IN_FLIGHT)
    seen = ("status", "features", "config-actual", "host", "avail", "used", "driver-bytes")
    path = tmp_path / "w.jsonl"
    win = TraceWindow("reset", "cut", None, seen)
    write_trace(path, dataclasses.replace(header, window=win), events)
    assert validate_trace(path) == []
    assert check_trace(path).outcome() == "pass"
    write_trace(path, dataclasses.replace(header, window=win),
                [*events, ConfigEvent(True, 12, bytes(4))])
    (prob,) = validate_trace(path)
    assert "bytes 12-15" in prob.message and "'config-actual' (bytes 0-7 only)" in prob.message


def test_a_run_of_a_window_without_used_saves_a_consistent_trace(tmp_path: Path) -> None:
    """The run sees the device's used elements: its saved trace says so and re-reads."""
    header, events = read_trace(IN_FLIGHT)
    seen = ("status", "features", "config", "host", "avail", "driver-bytes")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_trace(corpus / "nu.jsonl", dataclasses.replace(
        header, window=TraceWindow("reset", "cut", None, seen)),
        [ev for ev in events if not isinstance(ev, UsedEvent)])
    (case,) = discover_cases(corpus)
    runner = Runner("reference", save_traces=tmp_path / "saved")
    try:
        live = runner.run_case(case)
    finally:
        runner.close()
    assert live.status is None and live.outcome() == "pass", live.details_text()
    saved = tmp_path / "saved" / "nu.jsonl"
    assert validate_trace(saved) == []
    assert read_trace(saved)[0].window.captured == (*seen, "used", "device-bytes")
    again = check_trace(saved, subject="device")
    assert sorted((r.clause, r.verdict.value) for r in again.results) == sorted(
        (r.clause, r.verdict.value) for r in live.results)
