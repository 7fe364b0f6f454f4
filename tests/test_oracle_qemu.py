"""Real QEMU 7.2 against the oracle (issue 11): the Linux 6.12 stats case passes (QEMU keeps tags
0-9 and ignores 10-15, exactly what VIRTIO 1.2 5.5.6.3.2 requires), and its queue numbering over
offered features is a choice in its behaviour profile, not a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from virtio_balloon_proto.conformance.runner import Runner, check_trace, discover_cases
from virtio_balloon_proto.errors import PeerError
from virtio_balloon_proto.qemu.process import find_qemu

pytestmark = pytest.mark.qemu
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _require_qemu() -> None:
    try:
        find_qemu()
    except PeerError as e:
        pytest.fail(str(e))


@pytest.mark.parametrize("transport", ["modern", "legacy"])
def test_qemu_passes_linux_6_12_stats(transport: str, tmp_path: Path) -> None:
    _require_qemu()
    res = subprocess.run(
        [sys.executable, "-m", "virtio_balloon_proto", "conform", "run",
         "--device", f"qemu:transport={transport}",
         "--corpus", str(HERE / "cases" / "verdicts" / "stats-linux-6.12-tags.jsonl"),
         "--report-json", str(tmp_path / "r.json"), "--save-traces", str(tmp_path / "t")],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "HYPOTHESIS_NO_PLUGINS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    (case,) = report["cases"]
    assert case["outcome"] == "pass"
    assert case["behaviour"]["stats.unknown-tags"] == ["not reported"]
    assert case["behaviour"]["stats.tags-reported"] == ["0-9"]
    assert report["behaviour_profile"]["stats.unknown-tags"] == {
        "not reported": ["stats-linux-6.12-tags"]}
    # the saved trace re-judged offline: the same verdicts
    again = check_trace(tmp_path / "t" / "stats-linux-6.12-tags.jsonl", subject="device")
    assert again.outcome() == "pass" and again.behaviour == case["behaviour"]


@pytest.mark.parametrize("transport", ["modern", "legacy"])
def test_qemu_numbers_queues_by_offered_features(transport: str) -> None:
    """Reporting without stats: QEMU puts reporting at queue 3 (offered numbering), Linux
    expects 2 (negotiated).  VIRTIO 1.2 5.5.2 does not say which: a choice, named."""
    _require_qemu()
    (case,) = discover_cases(REPO / "conformance" / "traces",
                             case_globs=["spec/report-no-stats-le"])
    runner = Runner(f"qemu:transport={transport}")
    try:
        result = runner.run_case(case)
    finally:
        runner.close()
    assert result.outcome() == "pass", result.details_text()
    assert result.behaviour["queues.numbering"] == ["offered"]
