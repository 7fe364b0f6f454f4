"""Runner: verdicts, known failures, faulty devices, reports, interrupted runs."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import conform_doubles as d

from virtio_balloon_proto.conformance.known_failures import KnownFailures
from virtio_balloon_proto.conformance.python_adapter import PythonDevice
from virtio_balloon_proto.conformance.report import ReportWriter
from virtio_balloon_proto.conformance.report_html import to_html
from virtio_balloon_proto.conformance.runner import Runner, check_trace, load_case
from virtio_balloon_proto.conformance.verdicts import (
    CaseResult,
    ClauseResult,
    Verdict,
    verdict_for_level,
)


@pytest.fixture
def case(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_case(d.spec_trace(tmp_path / "spec-basic.jsonl"), "spec-basic")


def run(dev: d.DictDevice, case, **kw):  # type: ignore[no-untyped-def]
    return Runner(PythonDevice(dev, "t"), reference=d.DictDevice, **kw).run_case(case)


def test_reference_double_passes(case) -> None:  # type: ignore[no-untyped-def]
    res = run(d.DictDevice(), case)
    assert res.outcome() == "pass"
    checked = {r.clause for r in res.results}
    assert {
        "spec.device.inflate.acks-buffer",
        "spec.device.used.len-written",
        "spec.device.stats.records-values",
        "spec.device.config.actual-readback",
    } <= checked


@pytest.mark.parametrize(
    ("device", "clause"),
    [
        (d.FaultyWrongId, "spec.device.used.id-is-head"),
        (d.FaultyWrongId, "spec.device.inflate.acks-buffer"),
        (d.FaultyUsedLen, "spec.device.used.len-written"),
        (d.FaultyIgnoresDeflate, "spec.device.deflate.pfn-4k-units"),
        (d.FaultyDropsTail, "spec.device.inflate.pfn-4k-units"),
        (d.FaultyNeverAcksInflate, "spec.device.inflate.acks-buffer"),
        (d.FaultyCrashes, "suite.device.transport"),
    ],
)
def test_faulty_device_fails_named_clause(case, device, clause) -> None:  # type: ignore[no-untyped-def]
    res = run(device(), case)
    assert res.outcome() == "fail"
    assert clause in {r.clause for r in res.failures()}


def test_big_endian_guest_read_as_le(tmp_path: Path) -> None:
    case = load_case(d.spec_trace(tmp_path / "be.jsonl", endian="be"))
    assert run(d.DictDevice(), case).outcome() == "pass"
    res = run(d.FaultyByteOrder(), case)
    assert "spec.device.inflate.pfn-4k-units" in {r.clause for r in res.failures()}
    # its stats tags come out byte-swapped (>= 16) and it drops them: reporting none of the
    # driver's tags is allowed ("devices omit unsupported statistics", 5.5.6.3), and a legacy
    # device may ignore the first stats buffer (5.5.6.3.3) -- not a records-values failure
    assert "spec.device.stats.records-values" not in {r.clause for r in res.failures()}
    assert res.behaviour["stats.legacy-first-buffer"] == ["ignored"]


def test_verdict_levels() -> None:
    assert verdict_for_level("MUST") == Verdict.FAIL
    assert verdict_for_level("SHOULD") == Verdict.NON_STRICT
    assert verdict_for_level("SHOULD", strict=True) == Verdict.FAIL
    assert verdict_for_level("MAY") == Verdict.PASS


def _res(*pairs: tuple[str, Verdict]) -> CaseResult:
    return CaseResult("spec/a", "spec", "x", [ClauseResult(c, v, "m") for c, v in pairs])


def test_known_failures_and_unexpected_pass(tmp_path: Path) -> None:
    f = tmp_path / "kf.toml"
    f.write_text('[[failure]]\ncase = "spec/*"\nclause = "spec.device.used.*"\nreason = "bug 1"\n')
    kf = KnownFailures.load(f)
    failing = _res(("spec.device.used.len-written", Verdict.FAIL), ("x.y.z", Verdict.PASS))
    kf.apply(failing)
    assert failing.outcome() == "expected-failure"
    assert failing.results[0].known == "bug 1"
    passing = _res(("spec.device.used.len-written", Verdict.PASS))
    kf.apply(passing)
    assert passing.outcome() == "unexpected-pass"
    other = _res(("spec.device.inflate.acks-buffer", Verdict.FAIL))
    kf.apply(other)
    assert other.outcome() == "fail"  # not covered by the entry


def test_non_strict_does_not_fail_unless_strict() -> None:
    r = _res(("spec.driver.features.accept-must-tell-host", Verdict.NON_STRICT))
    assert r.outcome() == "non-strict"


def test_update_known_failures_round_trip(tmp_path: Path, case) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "kf.toml"
    kf = KnownFailures.load(f)  # missing file = empty list
    res = run(d.FaultyUsedLen(), case)
    assert res.outcome() == "fail"
    assert kf.write_updated([res]) == 1
    kf2 = KnownFailures.load(f)
    assert kf2.entries[0].case == "spec-basic"
    assert kf2.entries[0].clause == "spec.device.used.len-written"
    res2 = run(d.FaultyUsedLen(), case)
    kf2.apply(res2)
    assert res2.outcome() == "expected-failure"


@pytest.mark.parametrize(
    "text",
    [
        "[[failure]]\nclause='x'\n",
        "failure = 3\n",
        "[[failure]]\ncase='a'\nextra=1\n",
        "nonsense [",
    ],
)
def test_bad_known_failures_file(tmp_path: Path, text: str) -> None:
    from virtio_balloon_proto.errors import UsageError

    f = tmp_path / "kf.toml"
    f.write_text(text)
    with pytest.raises(UsageError):
        KnownFailures.load(f)


def test_offline_check(tmp_path: Path) -> None:
    res = check_trace(d.spec_trace(tmp_path / "t.jsonl"))
    verdicts = {r.clause: r.verdict for r in res.results}
    assert verdicts["spec.device.used.id-is-head"] == Verdict.PASS
    assert verdicts["spec.driver.op.update-actual"] == Verdict.PASS
    # tag 99 in the driver's stats is a note that blames nobody: no driver failure, and no
    # device verdict either (what a device does with it is judged from a run, not the bytes)
    assert "spec.device.stats.ignores-unknown-tag" not in verdicts
    assert any(n.startswith("note.stats.unknown-tag: 1 buffer(s)") for n in res.notes)
    # the trace's driver did not accept an offered MUST_TELL_HOST: a broken SHOULD
    assert verdicts["spec.driver.features.accept-must-tell-host"] == Verdict.NON_STRICT
    # a PFN named twice in one buffer: no VIRTIO sentence forbids it (a suite rule derived
    # from Linux, MAY): a note, never a failure, also under --strict
    for strict in (False, True):
        dup = check_trace(d.spec_trace(tmp_path / "u.jsonl", inflate=(1, 2, 2)), strict=strict)
        r = {x.clause: x for x in dup.results}["suite.driver.pages.no-duplicate"]
        assert r.verdict == Verdict.PASS and r.message.startswith("(MAY)"), r
        assert not any(x.clause == "suite.driver.pages.no-duplicate" for x in dup.failures())


def test_reports_and_interrupted_run(tmp_path: Path) -> None:
    cases = [load_case(d.spec_trace(tmp_path / f"c{i}.jsonl"), f"c{i}") for i in range(3)]
    out = {k: tmp_path / f"r.{k}" for k in ("json", "xml", "html")}
    # every=0: rewrite after every case (the CLI's default rewrites at most every 2 s and writes
    # on the interrupt itself: tests/test_report_rewrites.py, test_conform_cli.py)
    writer = ReportWriter(None, str(out["json"]), str(out["xml"]), str(out["html"]), every=0)
    calls = 0

    def on_case(runres, caseres):  # type: ignore[no-untyped-def]
        nonlocal calls
        writer(runres, caseres)
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt  # Ctrl-C after the second case

    runner = Runner(PythonDevice(d.FaultyUsedLen(), "t"), reference=d.DictDevice)
    with pytest.raises(KeyboardInterrupt):
        runner.run(cases, on_case=on_case)
    data = json.loads(out["json"].read_text())
    assert data["partial"] is True and len(data["cases"]) == 2 and data["planned"] == 3
    assert data["index"]["c0"]["outcome"] == "fail"
    fail = next(c for c in data["cases"][0]["clauses"] if c["verdict"] == "fail")
    assert fail["clause"] == "spec.device.used.len-written"
    root = ET.parse(out["xml"]).getroot()
    assert root.get("partial") == "true" and int(root.get("failures", "0")) == 2
    assert root.find("testsuite").get("name") == "vbproto.spec"
    html = out["html"].read_text()
    assert "Partial report" in html and "<details" in html and "http" not in html.split("<body>")[1]
    assert not list(tmp_path.glob(".r.*.tmp"))  # no temp files left behind


def test_html_escapes_device_text(case) -> None:  # type: ignore[no-untyped-def]
    from virtio_balloon_proto.conformance.verdicts import RunResult

    r = RunResult(device="<script>alert(1)</script>", corpus="c", partial=False)
    r.cases.append(run(d.DictDevice(), case))
    assert "<script>alert" not in to_html(r)
