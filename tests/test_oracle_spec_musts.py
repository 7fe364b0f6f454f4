"""Spec MUSTs checked from traces (review.md section 3), each judged conservatively for windows:

* ``spec.device.hint.no-cmd-id-reuse`` -- VIRTIO 1.2 5.5.6.5.2 "The device MUST NOT reuse a
  command ID until it has received an output buffer containing VIRTIO_BALLOON_CMD_ID_STOP from
  the driver."
* ``spec.driver.stats.same-subset`` -- 5.5.6.3.1 "Driver MUST supply the same subset of
  statistics in all buffers submitted to the statsq."
* ``spec.driver.poison.write-before-driver-ok`` / ``no-write-after-driver-ok`` -- 5.5.6.6.1
  "The driver MUST populate the poison_val configuration data before setting the DRIVER_OK
  bit." and "The driver MUST NOT modify poison_val while the DRIVER_OK bit is set."

A capture that starts mid-life or is cut at the end never fails for what it did not see.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from virtio_balloon_proto.conformance.catalog import catalog
from virtio_balloon_proto.conformance.runner import Runner, check_trace, discover_cases
from virtio_balloon_proto.conformance.verdicts import CaseResult, Verdict
from virtio_balloon_proto.trace import TraceWindow, read_trace, write_trace

HERE = Path(__file__).resolve().parent
SPEC = HERE.parent / "conformance" / "traces" / "spec"
REUSE = "spec.device.hint.no-cmd-id-reuse"
SUBSET = "spec.driver.stats.same-subset"
BEFORE = "spec.driver.poison.write-before-driver-ok"
AFTER = "spec.driver.poison.no-write-after-driver-ok"


def failed(res: CaseResult) -> set[str]:
    return {r.clause for r in res.failures()}


def device_failed(res: CaseResult) -> set[str]:
    cat = catalog()
    return {c for c in failed(res) if (k := cat.find(c)) is None or k.side == "device"}


def verdict(res: CaseResult, clause: str) -> Verdict | None:
    return next((r.verdict for r in res.results if r.clause == clause), None)


def lines_of(name: str) -> list[str]:
    return (SPEC / f"{name}.jsonl").read_text().splitlines()


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def windowed(path: Path, window: TraceWindow) -> Path:
    header, events = read_trace(path)
    out = path.with_name(path.stem + "-w.jsonl")
    write_trace(out, dataclasses.replace(header, window=window), events)
    return out


def test_the_clauses_quote_the_spec() -> None:
    cat = catalog()
    assert cat.get(REUSE).text.startswith("The device MUST NOT reuse a command ID until it has "
                                          "received an output buffer containing "
                                          "VIRTIO_BALLOON_CMD_ID_STOP from the driver.")
    assert cat.get(SUBSET).text.startswith("Driver MUST supply the same subset of statistics in "
                                           "all buffers submitted to the statsq.")
    assert cat.get(BEFORE).text == ("The driver MUST populate the poison_val configuration "
                                    "data before setting the DRIVER_OK bit.")
    assert cat.get(AFTER).text == ("The driver MUST NOT modify poison_val while the DRIVER_OK "
                                   "bit is set.")
    for c in (REUSE, SUBSET, BEFORE, AFTER):
        assert cat.check_counts()[c] >= 1


# --- hint: no command id reuse before the driver's STOP ------------------------------------------
# hint-replayed-id-le: 6 host id X1=0x80000000, 8 echo X1, 14 host STOP, 16 stale echo X1,
# 22 driver STOP (used 23), 24 host id X2=0x80000001, 25 read X2, 26 echo X2, 32 driver STOP
def _replayed(x2: str = "2147483649", drop_stop: bool = False) -> list[str]:
    lines = lines_of("hint-replayed-id-le")
    lines = [ln.replace('"cmd_id":2147483649', f'"cmd_id":{x2}') for ln in lines]
    if x2 == "2147483648":
        lines = [ln.replace('"01000080"', '"00000080"') for ln in lines]
    if drop_stop:
        lines = [ln for n, ln in enumerate(lines) if n not in (22, 23)]  # events 22, 23
    return lines


def test_reusing_an_id_after_the_drivers_stop_passes(tmp_path: Path) -> None:
    # (the driver of hint-replayed-id echoes a stale id: its own clauses fail, not the device's)
    res = check_trace(write(tmp_path / "after-stop.jsonl", _replayed("2147483648")))
    assert verdict(res, REUSE) == Verdict.PASS, res.details_text()
    assert device_failed(res) == set(), res.details_text()
    assert verdict(check_trace(SPEC / "hint-le.jsonl"), REUSE) == Verdict.PASS


def test_reusing_an_id_with_no_stop_from_the_driver_fails(tmp_path: Path) -> None:
    path = write(tmp_path / "reuse.jsonl", _replayed("2147483648", drop_stop=True))
    res = check_trace(path)
    assert device_failed(res) == {REUSE}, res.details_text()
    r = next(r for r in res.results if r.clause == REUSE)
    assert "0x80000000 shown again at event 22 (host free-page-hint)" in r.message
    assert "replaced it at event 14" in r.message
    # a new id instead passes
    ok = check_trace(write(tmp_path / "new.jsonl", _replayed(drop_stop=True)))
    assert verdict(ok, REUSE) == Verdict.PASS, ok.details_text()


def test_reuse_is_not_judged_in_a_mid_life_window_or_without_avail(tmp_path: Path) -> None:
    path = write(tmp_path / "reuse.jsonl", _replayed("2147483648", drop_stop=True))
    mid = check_trace(windowed(path, TraceWindow("mid", "cut")))
    assert REUSE not in failed(mid) and verdict(mid, REUSE) is None, mid.details_text()
    assert any("no-cmd-id-reuse) not judged" in n for n in mid.notes), mid.notes


def test_a_free_page_buffer_whose_bytes_were_not_captured_may_be_the_stop(
        tmp_path: Path) -> None:
    lines = _replayed("2147483648")
    n = next(k for k, ln in enumerate(lines) if k > 20 and '"out":["00000000"]' in ln)
    lines[n] = lines[n].replace('"out":["00000000"]', '"out":[null]')
    res = check_trace(write(tmp_path / "unseen-stop.jsonl", lines))
    assert REUSE not in failed(res), res.details_text()


def _run(device: str, lines: list[str], tmp_path: Path) -> CaseResult:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    write(corpus / "c.jsonl", lines)
    (case,) = discover_cases(corpus)
    spec = device if device == "reference" else f"python:{HERE / 'oracle_devices.py'}:{device}"
    runner = Runner(spec, save_traces=tmp_path / "saved")
    try:
        return runner.run_case(case)
    finally:
        runner.close()


def test_a_live_device_reusing_its_id_fails_and_the_saved_trace_agrees(tmp_path: Path) -> None:
    # the suite asks for X1, STOP, then X2 with no driver STOP in between: the device shows X1
    bad = _run("ReusesCmdId", _replayed(drop_stop=True), tmp_path)
    assert REUSE in failed(bad), bad.details_text()
    again = check_trace(tmp_path / "saved" / "c.jsonl", subject="device")
    assert REUSE in failed(again)
    good = _run("reference", _replayed(drop_stop=True), tmp_path)
    assert verdict(good, REUSE) == Verdict.PASS and good.outcome() == "pass", good.details_text()


def test_a_device_following_the_suites_own_reuse_is_not_blamed(tmp_path: Path) -> None:
    res = _run("reference", _replayed("2147483648", drop_stop=True), tmp_path)
    assert REUSE not in failed(res), res.details_text()
    assert any("the suite's host request reuses command id 0x80000000" in n for n in res.notes)


# --- stats: the same subset in every buffer ----------------------------------------------------
def _stats(tags_second: list[int] | None) -> list[str]:
    """stats-le with its second stats buffer's tags replaced."""
    lines = lines_of("stats-le")
    idx = [n for n, ln in enumerate(lines) if '"role":"stats"' in ln and '"type":"avail"' in ln]
    assert len(idx) >= 3, "stats-le has an initial buffer and at least two more"
    if tags_second is not None:
        rec = json.loads(lines[idx[2]])
        body = b"".join(t.to_bytes(2, "little") + (1000 + t).to_bytes(8, "little")
                        for t in tags_second)
        rec["out"] = [body.hex()]
        rec["descriptors"][0]["len"] = len(body)
        lines[idx[2]] = json.dumps(rec)
    return lines


def test_same_subset_in_another_order_passes(tmp_path: Path) -> None:
    res = check_trace(SPEC / "stats-le.jsonl")
    assert verdict(res, SUBSET) == Verdict.PASS, res.details_text()
    first = json.loads(_stats(None)[[n for n, ln in enumerate(_stats(None))
                                     if '"role":"stats"' in ln and '"avail"' in ln][1]])
    body = bytes.fromhex(first["out"][0])
    tags = [int.from_bytes(body[k:k + 2], "little") for k in range(0, len(body), 10)]
    res = check_trace(write(tmp_path / "reordered.jsonl", _stats(tags[::-1])))
    assert verdict(res, SUBSET) == Verdict.PASS, res.details_text()


def test_a_different_subset_fails(tmp_path: Path) -> None:
    res = check_trace(write(tmp_path / "subset.jsonl", _stats([4, 5])))
    assert SUBSET in failed(res), res.details_text()
    r = next(r for r in res.results if r.clause == SUBSET)
    assert "supplies tags 4-5" in r.message and "missing" in r.message
    # the suite's own driver traffic in a run: a note, never the device's failure
    live = _run("reference", _stats([4, 5]), tmp_path)
    assert SUBSET not in failed(live) and live.outcome() == "pass", live.details_text()


def test_the_first_buffer_after_initialization_is_exempt(tmp_path: Path) -> None:
    """5.5.2: 'Add one empty buffer to the stats virtqueue' -- the first may differ."""
    lines = _stats(None)
    idx = [n for n, ln in enumerate(lines) if '"role":"stats"' in ln and '"type":"avail"' in ln]
    rec = json.loads(lines[idx[0]])
    rec["out"], rec["descriptors"][0]["len"] = [""], 0
    lines[idx[0]] = json.dumps(rec)
    res = check_trace(write(tmp_path / "empty-first.jsonl", lines))
    assert SUBSET not in failed(res), res.details_text()


def test_subsets_are_not_compared_without_status_records(tmp_path: Path) -> None:
    path = write(tmp_path / "subset.jsonl", [ln for ln in _stats([4, 5])
                                             if '"type":"status"' not in ln])
    seen = ("features", "config", "host", "avail", "used", "driver-bytes")
    res = check_trace(windowed(path, TraceWindow("reset", "cut", None, seen)))
    assert SUBSET not in failed(res), res.details_text()
    assert any("stats subsets not compared" in n for n in res.notes)


# --- poison_val: populated before DRIVER_OK, never modified while it is set ---------------------
# poison-le (line numbers): 5 status 11, 6 write poison_val aaaaaaaa, 7 status 15 (DRIVER_OK),
# 8 read it back
def test_poison_written_before_driver_ok_passes() -> None:
    res = check_trace(SPEC / "poison-le.jsonl")
    assert verdict(res, BEFORE) == Verdict.PASS, res.details_text()
    assert verdict(res, AFTER) is None  # no write while DRIVER_OK is set


def test_poison_written_after_driver_ok_fails_both(tmp_path: Path) -> None:
    lines = lines_of("poison-le")
    lines[5], lines[6] = lines[6], lines[5]  # DRIVER_OK first, then the write
    lines.insert(6, '{"type":"config_read","offset":12,"data":"00000000"}')
    res = check_trace(write(tmp_path / "late.jsonl", lines))
    assert {BEFORE, AFTER} <= failed(res), res.details_text()


def test_rewriting_the_same_poison_value_modifies_nothing(tmp_path: Path) -> None:
    lines = lines_of("poison-le")
    lines.insert(9, '{"type":"config_write","offset":12,"data":"aaaaaaaa"}')
    res = check_trace(write(tmp_path / "same.jsonl", lines))
    assert verdict(res, AFTER) == Verdict.PASS and res.outcome() == "pass", res.details_text()
    lines[9] = '{"type":"config_write","offset":12,"data":"55555555"}'
    res = check_trace(write(tmp_path / "changed.jsonl", lines))
    assert failed(res) == {AFTER}, res.details_text()


@pytest.mark.parametrize("window", [TraceWindow("mid", "cut"),
                                    TraceWindow("reset", "cut", None, (
                                        "status", "features", "config-actual", "host", "avail",
                                        "used", "driver-bytes"))])
def test_poison_populate_is_not_judged_without_the_whole_life_or_every_config_write(
        tmp_path: Path, window: TraceWindow) -> None:
    """A mid-life window cannot show the write before DRIVER_OK; QEMU's trace events
    (config-actual) never show a poison_val write at all."""
    lines = [ln for ln in lines_of("poison-le") if '"offset":12' not in ln]
    res = check_trace(windowed(write(tmp_path / "nowrite.jsonl", lines), window))
    assert BEFORE not in failed(res) and verdict(res, BEFORE) is None, res.details_text()
    full = check_trace(write(tmp_path / "full.jsonl", lines))
    assert BEFORE in failed(full)


def test_a_mid_life_write_after_driver_ok_of_an_unknown_value_is_a_note(tmp_path: Path) -> None:
    header, events = read_trace(SPEC / "poison-le.jsonl")
    mid = [ev for ev in events[4:] if not (getattr(ev, "offset", None) == 12)]
    from virtio_balloon_proto.trace import ConfigEvent, StatusEvent

    path = tmp_path / "mid.jsonl"
    write_trace(path, dataclasses.replace(header, window=TraceWindow("mid", "cut")),
                [StatusEvent(15), *mid, ConfigEvent(True, 12, b"\x55" * 4)])
    res = check_trace(path)
    assert AFTER not in failed(res), res.details_text()
    assert any("poison_val written while DRIVER_OK is set" in n for n in res.notes)
