"""The runner against hostile testees: no traceback, no hang, valid reports, no survivors.

Each mode of tests/conform_testees/hostile_testee.py misbehaves in one way (crash, hang,
garbage, values the protocol schema forbids, JSON nested 100,000 deep, lone surrogates and
control characters in its messages, a real frame over MAX_FRAME, a testee that stops reading
stdin while the runner writes a 320 KB request, a slow reader, forked children).  For each,
``vbproto conform run`` must: exit 1 (a failing case, not 2 or a traceback), give the case a
``suite.device.transport`` failure, spend at most about ``--timeout`` per failing step, write
JSON that parses strictly, JUnit that xml.etree parses, an HTML file, and leave no process
of the testee alive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import conform_doubles as d

HOSTILE = Path(__file__).parent / "conform_testees" / "hostile_testee.py"
TIMEOUT = 1.0

OBSERVE_MODES = [
    "extent-x", "extent-null", "extent-float", "nan", "overflow-float", "big-int",
    "huge-digits", "deep", "surrogate", "list-error",
    "list-unsupported", "stats-string", "result-list", "id-float", "not-utf8",
]
IO_MODES = ["crash", "hang", "garbage", "huge-frame", "stop-reading", "slow-reader",
            "trickle", "fork-exit"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _strict_json(text: str) -> object:
    def bad(name: str) -> object:
        raise ValueError(f"{name} in a JSON report")

    return json.loads(text, parse_constant=bad)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two cases: a small one, and one whose inflate request is 40,000 PFNs (a ~320 KB
    frame, far over a pipe's 64 KiB buffer)."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "spec").mkdir()
    d.spec_trace(root / "spec" / "a-small.jsonl")
    d.spec_trace(root / "spec" / "b-big.jsonl",
                 inflate=tuple(range(0x1000, 0x1000 + 40_000)), deflate=(0x1000,))
    return root


def _run(mode: str, corpus: Path, tmp: Path) -> tuple[subprocess.CompletedProcess[str], float,
                                                       dict, Path]:  # type: ignore[type-arg]
    pidfile = tmp / "pids"
    device = f"stdio:{sys.executable} {HOSTILE} {mode} {pidfile}"
    cmd = [sys.executable, "-m", "virtio_balloon_proto", "conform", "run", "--device", device,
           "--corpus", str(corpus), "--timeout", str(TIMEOUT),
           "--report-json", str(tmp / "r.json"), "--junit", str(tmp / "r.xml"),
           "--html", str(tmp / "r.html")]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    report = _strict_json((tmp / "r.json").read_text())
    assert isinstance(report, dict)
    ET.parse(tmp / "r.xml")
    assert (tmp / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert not list(tmp.glob(".*.tmp")), "a temporary report file was left behind"
    time.sleep(0.2)
    pids = [int(x) for x in pidfile.read_text().split()] if pidfile.exists() else []
    survivors = [p for p in pids if _alive(p)]
    for p in survivors:  # never leave them to the next test
        os.kill(p, signal.SIGKILL)
    assert not survivors, f"testee processes survived the run: {survivors}"
    return proc, took, report, pidfile


def _case_outcomes(report: dict) -> dict[str, tuple[str, list[str]]]:  # type: ignore[type-arg]
    out = {}
    for c in report["cases"]:
        clauses = [r["clause"] for r in c.get("clauses", []) if r.get("verdict") == "fail"]
        out[c["id"]] = (c["outcome"], clauses)
    return out


@pytest.mark.parametrize("mode", OBSERVE_MODES + IO_MODES)
def test_hostile_testee(mode: str, corpus: Path, tmp_path: Path) -> None:
    proc, took, report, _ = _run(mode, corpus, tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    outcomes = _case_outcomes(report)
    assert set(outcomes) == {"spec/a-small", "spec/b-big"}
    for cid, (outcome, clauses) in outcomes.items():
        assert outcome == "fail", (cid, outcome)
        assert "suite.device.transport" in clauses, (cid, clauses)
    # each case costs at most one --timeout (plus process start-up and the reference's work)
    assert took < 2 * (TIMEOUT + 10), took  # generous: a loaded CI machine; it used to hang
    assert report["partial"] is False


def test_stop_reading_is_bounded_by_timeout(corpus: Path, tmp_path: Path) -> None:
    """The historical hang: the runner writing a > 64 KiB request to a testee that no longer
    reads; each case must end within about --timeout."""
    _, took, report, _ = _run("stop-reading", corpus, tmp_path)
    msgs = [r["message"] for c in report["cases"] for r in c["clauses"]
            if r["clause"] == "suite.device.transport"]
    assert any("hang" in m for m in msgs), msgs
    assert took < 2 * TIMEOUT + 20


def test_forked_child_of_a_serving_testee_dies_with_the_run(corpus: Path, tmp_path: Path) -> None:
    proc, _, _, pidfile = _run("fork-serve", corpus, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(pidfile.read_text().split()) >= 2  # the testee and its child were recorded


@pytest.mark.parametrize("mode", ["setsid-exit", "setsid-serve"])
def test_double_forked_setsid_grandchild_dies_with_the_run(mode: str, corpus: Path,
                                                          tmp_path: Path) -> None:
    """A testee whose grandchild setsid()s (its own session: out of reach of killpg) and is
    orphaned: the runner (a child subreaper that tags its testees' environment) kills it,
    whether the testee then exits or goes on serving.  _run asserts no recorded pid lives."""
    proc, _, _, pidfile = _run(mode, corpus, tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    pids = pidfile.read_text().split()
    assert len(pids) >= 2  # the testee and its setsid grandchild(ren) were recorded
    assert proc.returncode == (1 if mode == "setsid-exit" else 0), proc.stderr[-2000:]


def test_setsid_child_with_a_wiped_environment_dies_with_the_run(corpus: Path,
                                                                 tmp_path: Path) -> None:
    """A child of a serving testee that setsid()s and execs with an empty environment (out of
    the process group, without VBPROTO_PEER_TAG) escaped the run; the runner now also kills
    the testee's live descendants, found through their parents before the testee is told to
    exit.  (What stays out of reach, without a cgroup: such a process whose parent chain to
    the testee was already broken -- docs/fuzzing.md, "What is guaranteed".)"""
    proc, _, _, pidfile = _run("envwipe-serve", corpus, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(pidfile.read_text().split()) == 2  # the testee and its env-less child


def test_junit_escapes_control_characters_and_surrogates(corpus: Path, tmp_path: Path) -> None:
    _run("surrogate", corpus, tmp_path)
    xml_text = (tmp_path / "r.xml").read_text(encoding="utf-8")
    assert "\\ud800" in xml_text and "\\x1b" in xml_text and "\\x00" in xml_text
    report = json.loads((tmp_path / "r.json").read_text())
    assert "\ud800" in json.dumps(report, ensure_ascii=False)  # kept, escaped as JSON allows


def test_unsupported_with_control_characters_and_surrogates(corpus: Path, tmp_path: Path) -> None:
    """A valid 'unsupported' answer whose text holds NUL and a lone surrogate: the case is
    unsupported (not a failure, not a crash) and every report stays well-formed."""
    proc, _, report, _ = _run("control-unsupported", corpus, tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert {c["outcome"] for c in report["cases"]} == {"unsupported"}
    assert "\\ud83d" in (tmp_path / "r.xml").read_text(encoding="utf-8")


def test_python_adapter_answers_are_schema_checked_like_stdio_answers() -> None:
    """Every spoiled answer of an in-process device (an extent ["x", 1], NaN, 2^64, a used id
    over 16 bits, a dict where Used or Negotiated belongs, a queue index of -1, hex text where
    bytes belong) fails its case with suite.device.transport naming the step -- the checks a
    stdio testee's answer gets -- while the untouched reference passes."""
    import hostile_python_devices as hp

    from virtio_balloon_proto.conformance.runner import Runner, discover_cases

    corpus = Path(__file__).resolve().parents[1] / "conformance" / "traces"
    cases = discover_cases(corpus, case_globs=["spec/inflate-le"])
    assert cases
    for cls in [None, *hp.HOSTILE]:
        spec = (f"python:{Path(hp.__file__)}:{cls.__name__}" if cls else
                "python:virtio_balloon_proto.models.device:ReferenceDevice")
        runner = Runner(spec)
        try:
            results = [runner.run_case(c) for c in cases]
        finally:
            runner.close()
        failed = [(v.clause, v.message) for r in results for v in r.failures()]
        if cls is None:
            assert failed == []
            continue
        assert failed and {c for c, _ in failed} == {"suite.device.transport"}, (cls, failed)
