"""The regression zoo (conformance/zoo/): every published bug, through the python AND the stdio
adapter, over the corpus cases whose traffic triggers it.  The buggy device must fail the clause
its bug breaks and nothing it does not break; the fixed twin must pass with no finding.

Entries whose verdict still waits for a piece of the judgement (``awaits`` / ``twin_awaits``,
written down in the registry) are not run here until that piece lands.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from virtio_balloon_proto.conformance.catalog import catalog
from virtio_balloon_proto.conformance.python_adapter import load_python_device
from virtio_balloon_proto.conformance.runner import Runner, check_trace, discover_cases
from virtio_balloon_proto.conformance.verdicts import CaseResult
from virtio_balloon_proto.conformance.zoo import ZOO, ZooEntry
from virtio_balloon_proto.conformance.zoo._base import ZooDevice
from virtio_balloon_proto.conformance.zoo.drivers import DRIVER_ZOO, DriverZooEntry

CORPUS = Path(__file__).resolve().parent.parent / "conformance" / "traces"
ADAPTERS = ["python", "stdio"]


def _device_spec(target: str, adapter: str) -> str:
    if adapter == "python":
        return f"python:{target}"
    cmd = [sys.executable, "-m", "virtio_balloon_proto.conformance.testee", target]
    return "stdio:" + shlex.join(cmd)


def _run(entry: ZooEntry, which: str, adapter: str) -> list[CaseResult]:
    cases = discover_cases(CORPUS, case_globs=list(entry.cases))
    assert sorted(c.id for c in cases) == sorted(entry.cases), "a zoo case is missing"
    runner = Runner(_device_spec(entry.target(which), adapter))
    try:
        results = [runner.run_case(c) for c in cases]
    finally:
        runner.close()
    # every case really ran: a skipped or unsupported case would hide the bug
    assert all(r.outcome() in ("pass", "fail", "non-strict") for r in results), [
        (r.case_id, r.outcome(), r.reason) for r in results]
    return results


def _ids(e: ZooEntry) -> str:
    return e.id


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("entry", [e for e in ZOO if e.awaits is None], ids=_ids)
def test_zoo_device_fails_its_clause_and_no_other(entry: ZooEntry, adapter: str) -> None:
    results = _run(entry, "device", adapter)
    broken = {r.clause for res in results for r in res.failures()}
    assert entry.clause in broken, (entry.id, [r.to_json() for r in results])
    assert broken <= {entry.clause, *entry.also}, (entry.id, sorted(broken))
    cat = catalog()
    for c in (entry.clause, *entry.also):
        assert cat.find(c) is not None, c


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("entry", [e for e in ZOO if e.twin_awaits is None], ids=_ids)
def test_zoo_fixed_twin_passes(entry: ZooEntry, adapter: str) -> None:
    results = _run(entry, "twin", adapter)
    assert all(not r.failures() for r in results), [r.summary_line() for r in results]
    assert all(r.outcome() == "pass" for r in results)
    if entry.twin_choice is not None:  # the fix's allowed choice is named, not failed
        key, value = entry.twin_choice
        assert any(value in r.behaviour.get(key, []) for r in results), [
            r.behaviour for r in results]


@pytest.mark.parametrize("which", ["device", "twin"])
@pytest.mark.parametrize("entry", [e for e in ZOO if e.awaits is None and e.twin_awaits is None],
                         ids=_ids)
def test_zoo_run_and_saved_trace_check_agree(entry: ZooEntry, which: str,
                                             tmp_path: Path) -> None:
    """conform run --save-traces, then conform check on what was saved: the same verdicts
    (clause, verdict, message, step) and the same behaviour profile, bug or fix."""
    cases = discover_cases(CORPUS, case_globs=list(entry.cases))
    runner = Runner(_device_spec(entry.target(which), "python"), save_traces=tmp_path)
    try:
        live = {c.id: runner.run_case(c) for c in cases}
    finally:
        runner.close()
    for cid, res in live.items():
        again = check_trace(tmp_path / f"{cid}.jsonl", subject="device")
        assert _key(again) == _key(res), cid
        assert again.behaviour == res.behaviour, cid
    assert any(r.failures() for r in live.values()) == (which == "device")


def _key(res: CaseResult) -> list[tuple[str, str, str, int | None]]:
    return sorted((r.clause, r.verdict.value, r.message, r.step) for r in res.results)


def test_registry_holds_real_bugs_with_sources_and_traffic() -> None:
    assert len(ZOO) >= 14
    assert len({e.id for e in ZOO}) == len(ZOO)
    assert len({e.project for e in ZOO}) >= 4
    shipped = {p.relative_to(CORPUS).with_suffix("").as_posix() for p in CORPUS.rglob("*.jsonl")}
    cat = catalog()
    for e in ZOO:
        assert e.source and e.fixed_in and e.bug, e.id
        assert cat.find(e.clause) is not None, (e.id, e.clause)
        assert e.device is not e.twin and e.device.name != e.twin.name, e.id
        missing = set(e.cases) - shipped
        # only an entry waiting for the judgement may name traffic the corpus cannot hold yet
        assert not missing or e.awaits, (e.id, missing)
        for which in ("device", "twin"):
            dev = load_python_device(e.target(which))  # what python:MODULE:CLASS loads
            assert dev.name == (e.device if which == "device" else e.twin).name


def test_the_whole_zoo_is_caught_now() -> None:
    """A guard against quietly parking entries: every device is caught and every twin passes
    today (``awaits`` is for a new entry whose check has not landed yet)."""
    assert sum(e.awaits is None and e.twin_awaits is None for e in ZOO) >= 16


DOC = CORPUS.parent.parent / "docs" / "zoo.md"


def test_docs_table_is_the_registry() -> None:
    from virtio_balloon_proto.conformance.zoo.table import markdown

    text = DOC.read_text()
    start = text.index("-->\n", text.index("<!-- zoo-table")) + 4
    end = text.index("<!-- /zoo-table -->")
    assert text[start:end] == markdown(), "regenerate docs/zoo.md's table"


def test_docs_commands_run_as_shown() -> None:
    """docs/zoo.md's two commands: the buggy device fails (exit 1), its twin passes (0)."""
    import subprocess

    cmds = [ln for ln in DOC.read_text().splitlines() if ln.startswith("vbproto conform run")]
    assert len(cmds) == 2
    for line, want in zip(cmds, (1, 0), strict=True):
        args = shlex.split(line)[1:]
        args = [a.replace("stdio:python ", f"stdio:{shlex.quote(sys.executable)} ") for a in args]
        p = subprocess.run([sys.executable, "-m", "virtio_balloon_proto", *args],
                           capture_output=True, text=True, timeout=120, check=False,
                           cwd=CORPUS.parent.parent)
        assert p.returncode == want, p.stdout + p.stderr
        assert ("CONFORMANCE FAILED" if want else "CONFORMANCE PASSED") in p.stdout


def test_a_device_that_dies_at_start_fails_transport_and_the_runner_goes_on() -> None:
    """A device whose start fails (a VMM that cannot boot the guest) is the device's failure,
    reported as suite.device.transport -- never a runner error (the runner once lost its
    traffic log on this path)."""
    from virtio_balloon_proto.errors import PeerError

    class DiesAtStart(ZooDevice):
        name = "dies-at-start"

        def start(self, setup: Any) -> Any:
            raise PeerError("cannot start", where="start")

    (case,) = discover_cases(CORPUS, case_globs=["spec/inflate-le"])
    res = Runner(DiesAtStart()).run_case(case)
    assert res.outcome() == "fail"
    assert [r.clause for r in res.failures()] == ["suite.device.transport"]


@pytest.mark.parametrize("fixed", [False, True], ids=["bug", "fix"])
@pytest.mark.parametrize("entry", DRIVER_ZOO, ids=lambda e: e.id)
def test_zoo_driver_trace_is_judged_by_conform_check(entry: DriverZooEntry, fixed: bool,
                                                      tmp_path: Path) -> None:
    """A published driver bug as the trace it produces: ``conform check`` fails the buggy
    driver on its clause and passes the fixed one (driver clauses: no finding)."""
    from virtio_balloon_proto.trace import write_trace

    path = tmp_path / f"{entry.id}.jsonl"
    write_trace(path, *entry.build(fixed))
    res = check_trace(path)
    cat = catalog()
    driver_broken = {r.clause for r in res.failures()
                     if (c := cat.find(r.clause)) is not None and c.side == "driver"}
    if fixed:
        assert driver_broken == set(), res.summary_line()
        assert all(r.clause != entry.clause or not r.message for r in res.results), res.results
    elif entry.noted_only:
        # an informational suite rule: named with a note, never a failure (also --strict)
        assert cat.find(entry.clause).level == "MAY"  # type: ignore[union-attr]
        for strict in (False, True):
            res = check_trace(path, strict=strict)
            r = {x.clause: x for x in res.results}[entry.clause]
            assert r.verdict.value == "pass" and r.message.startswith("(MAY)"), r
            assert entry.clause not in {x.clause for x in res.failures()}
    else:
        assert entry.clause in driver_broken, res.summary_line()
