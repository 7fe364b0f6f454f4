"""The right verdicts of the shared cases (tests/cases/, copied from ../shared/cases): devices
that make a choice the spec leaves open pass with the choice named in the report; devices with
the defect fail the named clause; captures are windows (issue 11, item 5)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from virtio_balloon_proto.conformance.runner import Runner, check_trace, discover_cases
from virtio_balloon_proto.conformance.verdicts import CaseResult, Verdict

HERE = Path(__file__).resolve().parent
CASES = HERE / "cases"
CORPUS = HERE.parent / "conformance" / "traces"
sys.path.insert(0, str(HERE))


def run(device: str, case: Path | str, corpus: Path = CASES) -> CaseResult:
    if isinstance(case, str):
        (c,) = discover_cases(corpus, case_globs=[case])
    else:
        (c,) = discover_cases(case)
    spec = device if ":" in device or device == "reference" else (
        f"python:{HERE / 'oracle_devices.py'}:{device}")
    runner = Runner(spec, timeout=5)
    try:
        return runner.run_case(c)
    finally:
        runner.close()


def failed(res: CaseResult) -> set[str]:
    return {r.clause for r in res.failures()}


# --- stats-linux-6.12-tags: tags 10-15 ----------------------------------------------------------
@pytest.mark.parametrize(("device", "choice"), [("KnowsTags0To9", "not reported"),
                                                ("KnowsTags0To15", "reported")])
def test_linux_6_12_stats_either_choice_passes(device: str, choice: str) -> None:
    res = run(device, "verdicts/stats-linux-6.12-tags")
    assert res.outcome() == "pass", res.details_text()
    assert res.behaviour["stats.unknown-tags"] == [choice]
    assert res.behaviour["stats.tags-reported"] == ["0-9"]


def test_linux_6_12_stats_refusing_the_buffer_fails_only_against_a_contrast() -> None:
    # every buffer of the shared case carries tags 10-15: a device that never uses one may
    # simply never ask for statistics (5.5.6.3), so the refusal is a note there ...
    res = run("RefusesUnknownTags", "verdicts/stats-linux-6.12-tags")
    assert res.outcome() == "pass", res.details_text()
    assert any("whether the tags were ignored is not judged" in n for n in res.notes)
    assert res.behaviour["stats.request-trigger"] == ["not when asked"]
    # the replay does not post head 0 again while the device still holds it (2.7)
    assert any("not replayed: the device still holds this head" in n for n in res.notes)
    # ... and a failure where the same life shows the contrast: the buffer without them was
    # used when the host asked, the one with them never
    contrast = run("RefusesUnknownTags", "spec/stats-new-tags-linux-6.12-le", CORPUS)
    assert "spec.device.stats.ignores-unknown-tag" in failed(contrast)
    assert contrast.outcome() == "fail"
    r = next(r for r in contrast.results if r.clause == "spec.device.stats.ignores-unknown-tag")
    assert "was used when asked" in r.message
    dies = run("DiesOnUnknownTags", "verdicts/stats-linux-6.12-tags")
    assert {"spec.device.stats.ignores-unknown-tag", "suite.device.transport"} <= failed(dies)


# --- review2 O5: the host's request for statistics is the harness's, not the spec's ---------
@pytest.mark.parametrize("case", ["spec/stats-le", "spec/stats-linux-6.12-le",
                                  "spec/stats-new-tags-linux-6.12-le",
                                  "spec/stats-new-tags-crosvm-le"])
def test_a_device_that_never_asks_for_statistics_passes(case: str) -> None:
    """VIRTIO 1.2/1.4 5.5.6.3: "The stats virtqueue is atypical because communication is driven
    by the device (not the driver)": a device that never uses the held buffer although the
    host asks conforms -- a MAY note and the named choice, never a failure, also --strict."""
    for strict in (False, True):
        (c,) = discover_cases(CORPUS, case_globs=[case])
        runner = Runner(f"python:{HERE / 'oracle_devices.py'}:NeverAsksForStats", timeout=5,
                        strict=strict)
        try:
            res = runner.run_case(c)
        finally:
            runner.close()
        assert res.outcome(strict) == "pass", res.details_text()
        assert res.behaviour["stats.request-trigger"] == ["not when asked"]
        r = next(r for r in res.results if r.clause == "suite.device.stats.request-by-use")
        assert r.verdict == Verdict.PASS and r.message.startswith("(MAY)"), r


# --- stats-second-buffer --------------------------------------------------------------------
def test_second_stats_buffer() -> None:
    off = check_trace(CASES / "verdicts" / "stats-second-buffer.jsonl")
    assert failed(off) == {"spec.driver.stats.one-buffer"}  # the driver broke the rule
    ok = run("reference", "verdicts/stats-second-buffer")
    assert ok.outcome() == "pass", ok.details_text()
    lost = run("LosesSupersededStats", "verdicts/stats-second-buffer")
    assert failed(lost) == {"spec.device.stats.returns-superseded"}
    assert lost.outcome() == "non-strict"  # a SHOULD: the spec has no MUST for this
    # the driver's breakage is the suite's own input in a run: a note, not the device's fault
    note = next(r for r in ok.results if r.clause == "spec.driver.stats.one-buffer")
    assert note.verdict == Verdict.PASS and note.message.startswith("(driver, MUST)")


# --- inflate-pfns-over-3-descriptors ---------------------------------------------------------
def test_chained_pfns() -> None:
    assert run("reference", "verdicts/inflate-pfns-over-3-descriptors").outcome() == "pass"
    res = run("ReadsFirstDescriptorOnly", "verdicts/inflate-pfns-over-3-descriptors")
    assert failed(res) == {"spec.device.inflate.pfn-4k-units"}


# --- inflate-malformed-then-good -------------------------------------------------------------
@pytest.mark.parametrize(("device", "choice"), [("reference", "kept whole words"),
                                                ("SkipsMalformedPfns", "skipped")])
def test_malformed_buffer_choices_pass(device: str, choice: str) -> None:
    res = run(device, "verdicts/inflate-malformed-then-good")
    assert res.outcome() == "pass", res.details_text()
    assert res.behaviour["pfns.malformed-buffer"] == [choice]


def test_device_dying_on_a_malformed_buffer_fails() -> None:
    res = run("DiesOnMalformedPfns", "verdicts/inflate-malformed-then-good")
    assert {"spec.device.malformed.acks-buffer", "spec.device.inflate.acks-buffer"} <= failed(res)


# --- report-used-len-bytes -------------------------------------------------------------------
def test_reporting_used_len_is_one_verdict() -> None:
    off = check_trace(CASES / "verdicts" / "report-used-len-bytes.jsonl")
    assert off.outcome() == "pass"
    assert off.behaviour["used-len.reporting"] == ["bytes of the buffers"]
    live = run("ReportLenIsBytes", "verdicts/report-used-len-bytes")
    assert live.outcome() == "pass", live.details_text()
    assert live.behaviour["used-len.reporting"] == ["bytes of the buffers"]
    assert run("reference", "verdicts/report-used-len-bytes").behaviour[
        "used-len.reporting"] == ["0"]
    bad = run("ReportLenTooLong", "verdicts/report-used-len-bytes")
    assert failed(bad) == {"spec.device.used.len-written"}


# --- config space size -------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["Config12", "Config16", "Config20"])
def test_config_size_by_offered_features_passes(device: str) -> None:
    for case in ("spec/inflate-le", "spec/hint-le"):
        res = run(device, case, CORPUS)
        assert res.outcome() == "pass", res.details_text()
        size = {"Config12": 12, "Config16": 16, "Config20": 20}[device]
        assert res.behaviour["config.size"] == [f"{size} bytes"]


def test_config_too_small_for_offered_features_fails() -> None:
    res = run("PoisonInEightBytes", "spec/poison-le", CORPUS)
    assert "spec.device.config.size" in failed(res)
    assert "spec.device.config.size" in failed(run("Config12", "spec/poison-le", CORPUS))


# --- queue numbering -------------------------------------------------------------------------
def test_offered_queue_numbering_is_a_choice() -> None:
    res = run("OfferedNumbering", "spec/report-no-stats-le", CORPUS)
    assert res.outcome() == "pass", res.details_text()
    assert res.behaviour["queues.numbering"] == ["offered"]
    ref = run("reference", "spec/report-no-stats-le", CORPUS)
    assert ref.behaviour["queues.numbering"] == ["negotiated"]


# --- guest RAM layout ------------------------------------------------------------------------
def test_ignoring_pfns_above_256_mib_fails_the_512_mib_capture() -> None:
    case = "real/qemu-7.2-linux-6.1-balloon-384M"
    assert run("reference", case, CORPUS).outcome() == "pass"
    res = run("IgnoresHighPfns", case, CORPUS)
    assert "spec.device.inflate.pfn-4k-units" in failed(res)


# --- windows -----------------------------------------------------------------------------
def test_capture_ending_in_flight_passes() -> None:
    res = check_trace(CASES / "windows" / "capture-ends-in-flight.jsonl")
    assert res.outcome() == "pass", res.details_text()
    assert any("in flight" in n and "inflate head 0" in n for n in res.notes)


def test_bytes_not_captured_are_not_checked_nor_blamed() -> None:
    path = CASES / "windows" / "stats-huge-len-bytes-not-captured.jsonl"
    off = check_trace(path)
    assert not [r for r in off.failures()
                if (c := r.clause) and ".device." in c], off.details_text()
    assert any("not captured" in n for n in off.notes)
    live = run("reference", "windows/stats-huge-len-bytes-not-captured")
    assert not live.failures(), live.details_text()
    assert any("not replayed" in n for n in live.notes)
    assert "1 step(s) not replayed" in live.reason  # shown even for a passing case
