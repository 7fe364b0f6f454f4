"""Reports are rewritten after a case only when due (issue 13), yet an interrupted or killed
run still leaves complete, valid reports."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from virtio_balloon_proto.conformance.report import ReportWriter
from virtio_balloon_proto.conformance.verdicts import CaseResult, RunResult

sys.path.insert(0, str(Path(__file__).parent))
import conform_doubles as d

ROOT = Path(__file__).resolve().parents[1]
VBPROTO = [sys.executable, "-m", "virtio_balloon_proto"]
FAULTY = f"stdio:{sys.executable} {Path(__file__).parent / 'conform_testees' / 'faulty_testee.py'}"


def test_after_a_case_reports_are_rewritten_only_when_due(tmp_path: Path) -> None:
    paths = [tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.html"]
    w = ReportWriter(None, *map(str, paths), every=3600)
    run = RunResult(device="d", corpus="c", planned=5)
    for i in range(5):
        case = CaseResult(f"spec/c{i}", "spec", f"c{i}.jsonl")
        run.cases.append(case)
        w(run, case)
    assert w.rewrites == 1  # the first case wrote, the next four were not due
    assert [c["id"] for c in json.loads(paths[0].read_text())["cases"]] == ["spec/c0"]
    w.write(run)  # the end of the run always writes
    assert len(json.loads(paths[0].read_text())["cases"]) == 5
    assert paths[1].read_text().count("<testcase") == 5 and "spec/c4" in paths[2].read_text()
    w0 = ReportWriter(None, str(paths[0]), every=0)
    for case in run.cases:
        w0(run, case)
    assert w0.rewrites == 5  # every=0: after every case, as before


def test_a_killed_run_leaves_a_valid_report(tmp_path: Path) -> None:
    """SIGKILL (no handler runs): the last rewrite is on disk, complete and valid JSON."""
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(3):
        d.spec_trace(corpus / f"c{i}.jsonl")
    report = tmp_path / "r.json"
    proc = subprocess.Popen(
        [*VBPROTO, "conform", "run", "--device", f"{FAULTY} hang", "--corpus", str(corpus),
         "--timeout", "30", "--report-json", str(report)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    data = json.loads(report.read_text())
    assert data["partial"] is True and data["planned"] == 3 and len(data["cases"]) < 3
