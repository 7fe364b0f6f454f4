"""Eleven deliberately faulty devices, each through the python AND the stdio adapter, over the
shipped corpus: each must fail the clause its defect breaks (issue 5), and pass elsewhere."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from virtio_balloon_proto.conformance.runner import Runner, discover_cases

sys.path.insert(0, str(Path(__file__).parent))
from faulty_devices import FAULTS

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "conformance" / "traces"


def _spec(cls: type, adapter: str) -> str:
    target = f"{HERE / 'faulty_devices.py'}:{cls.__name__}"
    if adapter == "python":
        return f"python:{target}"
    cmd = [sys.executable, "-m", "virtio_balloon_proto.conformance.testee", target]
    return "stdio:" + shlex.join(cmd)


@pytest.mark.parametrize("adapter", ["python", "stdio"])
@pytest.mark.parametrize("cls", list(FAULTS), ids=lambda c: c.__name__)
def test_faulty_device_fails_its_clause(cls: type, adapter: str) -> None:
    clause, case_glob = FAULTS[cls]
    cases = discover_cases(CORPUS, case_globs=[case_glob])
    assert cases, case_glob
    runner = Runner(_spec(cls, adapter))
    try:
        results = [runner.run_case(c) for c in cases]
    finally:
        runner.close()
    failed = {v.clause for r in results for v in r.failures()}
    assert clause in failed, (cls.__name__, [r.to_json() for r in results])


@pytest.mark.parametrize("adapter", ["python", "stdio"])
def test_reference_through_each_adapter_passes_the_spec_corpus(adapter: str) -> None:
    spec = ("python:virtio_balloon_proto.models.device:ReferenceDevice" if adapter == "python"
            else "stdio:" + shlex.join([sys.executable, "-m",
                                        "virtio_balloon_proto.conformance.testee", "reference"]))
    runner = Runner(spec)
    try:
        results = [runner.run_case(c) for c in discover_cases(CORPUS, profiles=["spec"])]
    finally:
        runner.close()
    assert results and all(not r.failures() for r in results)


def test_hanging_python_device_is_reported_and_the_run_goes_on() -> None:
    """The python adapter's per-step timeout: a hang fails the case (suite.device.transport)
    and the next case gets a fresh instance."""
    cases = discover_cases(CORPUS, case_globs=["spec/deflate-le", "spec/inflate-le"])
    runner = Runner(f"python:{HERE / 'faulty_devices.py'}:HangsOnDeflate", timeout=0.5)
    try:
        results = {c.id: runner.run_case(c) for c in cases}
    finally:
        runner.close()
    hang = results["spec/deflate-le"].failures()
    assert [r.clause for r in hang] == ["suite.device.transport"]
    assert "hang" in hang[0].message
    assert results["spec/inflate-le"].failures() == []  # no deflate: the fresh device passes
