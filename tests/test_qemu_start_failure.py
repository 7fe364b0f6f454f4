"""A QEMU that could not be started is "the case could not be run" (outcome ``error``, exit 2),
never the device's conformance failure nor a known-failure candidate; a QEMU that started and
then died is the device's failure (``suite.device.transport``).  QA findings 18 (issue 15)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from virtio_balloon_proto.conformance.dut import Segment
from virtio_balloon_proto.conformance.qemu_adapter import QemuDevice
from virtio_balloon_proto.conformance.runner import Runner, discover_cases
from virtio_balloon_proto.errors import PeerError, PeerStartError
from virtio_balloon_proto.qemu.process import STDERR_TAIL_CHARS, find_qemu

X86 = "qemu-system-x86_64"


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "virtio_balloon_proto", "conform", "run",
                           *args], capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def _script(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


def _one_case(tmp_path: Path, device: str, case: str = "spec/inflate-le",
              *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    report = tmp_path / "report.json"
    r = _run("--device", device, "--case", case, "--report-json", str(report), *extra)
    return r, json.loads(report.read_text())


@pytest.mark.parametrize(("binary", "says"), [
    ("/nonexistent/qemu", "does not exist"),
    ("/tmp", "is a directory"),
])
def test_a_binary_that_is_not_there_is_bad_input_exit_2(binary: str, says: str) -> None:
    r = _run("--device", f"qemu:binary={binary}", "--case", "spec/inflate-le")
    assert r.returncode == 2, r.stdout + r.stderr
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "suite.device.transport" not in r.stdout + r.stderr
    assert "--update-known-failures" not in r.stdout + r.stderr
    with pytest.raises(PeerStartError, match=says):
        QemuDevice(f"qemu:binary={binary}")


def test_a_binary_that_exits_at_once_is_a_case_not_run(tmp_path: Path) -> None:
    known = tmp_path / "known.toml"
    r, rep = _one_case(tmp_path, "qemu:binary=/bin/false", "spec/inflate-le",
                       "--known-failures", str(known), "--update-known-failures")
    case = rep["cases"][0]
    assert case["outcome"] == "error" and case["clauses"] == [], case
    assert "could not be started" in case["reason"] and "status 1" in case["reason"], case
    # never a known-failure candidate: the updated list is empty
    assert "wrote 0 known failure(s)" in r.stdout, r.stdout
    r, rep = _one_case(tmp_path, "qemu:binary=/bin/false")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "CONFORMANCE INCOMPLETE: 1 case(s) could not be run" in r.stdout, r.stdout
    assert "--update-known-failures" not in r.stdout + r.stderr
    assert "suite.device.transport" not in r.stdout


def test_a_program_that_never_opens_qtest_is_a_case_not_run(tmp_path: Path) -> None:
    silent = _script(tmp_path, "silent.sh", "exec sleep 60")
    r, rep = _one_case(tmp_path, f"qemu:binary={silent}", "spec/inflate-le", "--timeout", "1")
    case = rep["cases"][0]
    assert r.returncode == 2 and case["outcome"] == "error", (r.stdout, case)
    assert "did not connect to the qtest socket within 1 s" in case["reason"], case


def test_a_stderr_flood_is_capped_in_the_reason(tmp_path: Path) -> None:
    flood = _script(tmp_path, "flood.sh",
                    'i=0; while [ $i -lt 5000 ]; do echo "flood line $i" >&2; i=$((i+1)); done;'
                    " exit 3")
    r, rep = _one_case(tmp_path, f"qemu:binary={flood}")
    reason = rep["cases"][0]["reason"]
    assert r.returncode == 2
    assert "status 3" in reason and "flood line 4999" in reason, reason
    assert "earlier byte(s) left out" in reason and "flood line 4000" not in reason, reason
    assert len(reason) < STDERR_TAIL_CHARS + 400 and reason.count("flood line") <= 12, reason
    assert len(r.stdout) < 4 * STDERR_TAIL_CHARS, len(r.stdout)


def _need(binary: str) -> str:
    try:
        return find_qemu(binary)
    except PeerError as e:
        pytest.fail(str(e))


@pytest.mark.qemu
def test_a_property_the_build_lacks_is_a_case_not_run(tmp_path: Path) -> None:
    """QEMU 7.2's virtio-balloon-pci has no ``vectors``: QEMU exits at start-up."""
    _need(X86)
    r, rep = _one_case(tmp_path, "qemu:msix=off,vectors=0")
    case = rep["cases"][0]
    assert r.returncode == 2 and case["outcome"] == "error", (r.stdout, case)
    assert "Property 'virtio-balloon-pci.vectors' not found" in case["reason"], case


@pytest.mark.qemu
def test_an_x86_binary_for_ppc64_says_it_is_not_ppc64(tmp_path: Path) -> None:
    x86 = _need(X86)
    r, rep = _one_case(tmp_path, f"qemu:binary={x86},arch=ppc64", "spec/inflate-be")
    case = rep["cases"][0]
    assert r.returncode == 2 and case["outcome"] == "error", (r.stdout, case)
    assert f"QEMU binary {x86} is not a ppc64 build" in case["reason"], case
    assert "no machine 'pseries'" in case["reason"], case


class _DiesAfterStart(QemuDevice):
    """QEMU is SIGKILLed right before the first buffer: a device that started and died."""

    def avail(self, role: str, head: int, segments: list[Segment]) -> Any:
        assert self.session is not None and self.session.proc is not None
        pid = self.session.proc.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        self.session.proc.proc.wait()  # type: ignore[union-attr]
        return super().avail(role, head, segments)


@pytest.mark.qemu
def test_a_qemu_that_dies_mid_case_is_the_devices_failure() -> None:
    _need(X86)
    case = discover_cases(None, case_globs=["spec/inflate-le"])[0]
    runner = Runner(_DiesAfterStart())
    try:
        res = runner.run_case(case)
    finally:
        runner.close()
    assert res.outcome() == "fail", (res.status, res.reason)
    broken = [r for r in res.results if r.broken]
    assert [r.clause for r in broken] == ["suite.device.transport"], broken
