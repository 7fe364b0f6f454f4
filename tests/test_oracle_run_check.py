"""Run and check are one judgement (issue 11): a live run records what the device did as a
trace and judges it; re-judging the saved trace offline gives exactly the same verdicts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from virtio_balloon_proto.conformance.runner import Runner, check_trace, discover_cases

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "conformance" / "traces"
SHARED = HERE.parent.parent / "shared" / "cases"
sys.path.insert(0, str(HERE))


def _key(res):  # type: ignore[no-untyped-def]
    return sorted((r.clause, r.verdict.value, r.message, r.step) for r in res.results)


def _device_view(res):  # type: ignore[no-untyped-def]
    from virtio_balloon_proto.conformance.catalog import catalog

    cat = catalog()
    return sorted((r.clause, r.verdict.value, r.message, r.step) for r in res.results
                  if (c := cat.find(r.clause)) is None or c.side == "device")


DEVICES = [
    "reference",
    f"python:{HERE / 'faulty_devices.py'}:DropsTrailingPage",
    f"python:{HERE / 'faulty_devices.py'}:IgnoresDeflate",
    f"python:{HERE / 'faulty_devices.py'}:WrongReqId",
]


@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.rsplit(":", 1)[-1])
def test_run_and_check_agree_on_every_corpus_trace(device: str, tmp_path: Path) -> None:
    cases = discover_cases(CORPUS)
    runner = Runner(device, save_traces=tmp_path)
    try:
        live = {c.id: runner.run_case(c) for c in cases}
    finally:
        runner.close()
    judged = 0
    for cid, res in live.items():
        saved = tmp_path / f"{cid}.jsonl"
        if res.status is not None:  # unsupported/skipped: nothing recorded
            assert not saved.exists()
            continue
        again = check_trace(saved, subject="device")
        assert _key(again) == _key(res), cid
        assert again.behaviour == res.behaviour, cid
        # conform check's default judges the driver too; the device's clauses are the same
        assert _device_view(check_trace(saved)) == _device_view(res), cid
        judged += 1
    assert judged >= 50
    if device != "reference":
        assert any(r.failures() for r in live.values())


def test_run_and_check_agree_on_the_zoo(tmp_path: Path) -> None:
    """Every zoo device (and twin) over its own cases: the saved traces re-judge identically."""
    from virtio_balloon_proto.conformance.zoo import ZOO

    compared = 0
    for entry in ZOO:
        cases = discover_cases(CORPUS, case_globs=list(entry.cases)) if entry.cases else []
        for which in ("device", "twin"):
            out = tmp_path / entry.id / which
            runner = Runner(f"python:{entry.target(which)}", save_traces=out)
            try:
                live = {c.id: runner.run_case(c) for c in cases}
            finally:
                runner.close()
            for cid, res in live.items():
                if res.status is not None:
                    continue
                again = check_trace(out / f"{cid}.jsonl", subject="device")
                assert _key(again) == _key(res), (entry.id, which, cid)
                assert again.behaviour == res.behaviour, (entry.id, which, cid)
                compared += 1
    assert compared >= 40
