"""``conform run --save-traces``: every judged case has its saved trace (qa 24).

A case the runner judged (status None) used to be left without its trace when writing it
failed (ENOSPC under a full /tmp: the OSError was caught as "the runner could not use the
device's answer" and blamed on the device as suite.device.transport), or when a device's answer
broke the runner mid-case (the failure was only in the result, never in a trace).  Now: a write
failure is a runner-side error of that case (exit 2, the path named), and an unusable answer is
an ``error`` observation of the recorded trace, so ``conform check`` of the saved trace agrees.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from virtio_balloon_proto.conformance.runner import Runner, check_trace, discover_cases
from virtio_balloon_proto.conformance.verdicts import Verdict
from virtio_balloon_proto.models.device import ReferenceDevice

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "conformance" / "traces"
CLI = [sys.executable, "-m", "virtio_balloon_proto"]


def _small_files() -> None:  # runs in the child: files over 4 KiB cannot be written (EFBIG)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_trace_that_cannot_be_saved_is_a_runner_error_not_a_device_failure(
        tmp_path: Path) -> None:
    out = subprocess.run(
        [*CLI, "conform", "run", "--device", "reference", "--case", "spec/inflate-le",
         "--save-traces", str(tmp_path / "saved"), "--json"],
        capture_output=True, text=True, check=False, preexec_fn=_small_files, timeout=300)
    assert out.returncode == 2, (out.stdout[-2000:], out.stderr[-2000:])
    report = json.loads(out.stdout)
    (case,) = report["cases"]
    assert case["outcome"] == "error"
    assert "cannot save the recorded trace to" in case["reason"]
    assert "spec/inflate-le.jsonl" in case["reason"]
    assert all(r["clause"] != "suite.device.transport" for r in case["clauses"])
    assert not (tmp_path / "saved" / "spec" / "inflate-le.jsonl").exists()


class AnswersGarbage(ReferenceDevice):
    """Not wrapped by an adapter: its second inflate's answer is not a list of Used."""

    name = "answers-garbage"

    def start(self, setup: Any) -> Any:
        self._n = 0
        return super().start(setup)

    def avail(self, role: str, head: int, segments: Any) -> Any:
        self._n += 1
        if self._n == 2:
            return [object()]
        return super().avail(role, head, segments)


def test_an_unusable_answer_is_in_the_saved_trace_and_judged_the_same(tmp_path: Path) -> None:
    (case,) = discover_cases(CORPUS, case_globs=["spec/inflate-le"])
    runner = Runner(AnswersGarbage(), save_traces=tmp_path)
    try:
        res = runner.run_case(case)
    finally:
        runner.close()
    assert res.status is None
    fail = {r.clause: r for r in res.failures()}
    assert "could not use the device's answer" in fail["suite.device.transport"].message
    saved = tmp_path / "spec" / "inflate-le.jsonl"
    again = check_trace(saved, subject="device")
    key = sorted((r.clause, r.verdict.value, r.message, r.step) for r in res.results)
    assert sorted((r.clause, r.verdict.value, r.message, r.step) for r in again.results) == key
    assert again.results and any(r.verdict == Verdict.FAIL for r in again.results)
