"""Every check judges only the clauses it registered (``@register``).

The registry is what ``vbproto conform clauses`` counts and what tells a reader which check
judges a clause; a check that evaluates or breaks a clause it did not register is judged by
code nobody finds from the clause.  Each check is wrapped while the corpus is judged offline,
and while the regression zoo's faulty devices and their fixed twins run live (live runs reach
the acknowledgement paths a captured window never does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from virtio_balloon_proto.conformance.catalog import catalog
from virtio_balloon_proto.conformance.checks import CHECKS, Judgement
from virtio_balloon_proto.conformance.runner import Runner, check_trace, discover_cases
from virtio_balloon_proto.conformance.zoo import ZOO

REPO = Path(__file__).resolve().parent.parent

#: check name -> clauses it evaluated or broke outside its registration
Stray = dict[str, set[str]]


@pytest.fixture
def stray(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stray]:
    out: Stray = {}
    # the wire layer's clauses (``wire = true`` in clauses.toml) are judged by wire_findings
    # from the codec's findings; the catalog counts them as its (Catalog.check_counts)
    wire = frozenset(c.id for c in catalog() if c.wire)

    def wrap(fn: Callable[[Judgement], None], ids: tuple[str, ...]
             ) -> Callable[[Judgement], None]:
        def wrapped(j: Judgement) -> None:
            ev, br = j.evaluated, j.broken

            def evaluated(clause: str) -> None:
                if clause not in ids:
                    out.setdefault(fn.__name__, set()).add(clause)
                ev(clause)

            def broken(clause: str, *a: Any, **k: Any) -> None:
                if clause not in ids:
                    out.setdefault(fn.__name__, set()).add(clause)
                br(clause, *a, **k)

            j.evaluated, j.broken = evaluated, broken  # type: ignore[method-assign]
            try:
                fn(j)
            finally:
                j.evaluated, j.broken = ev, br  # type: ignore[method-assign]
        return wrapped

    monkeypatch.setattr("virtio_balloon_proto.conformance.checks.CHECKS",
                        [(wrap(fn, ids + tuple(wire) if fn.__name__ == "wire_findings"
                               else ids), ids) for fn, ids in CHECKS])
    yield out


def test_offline_traces_judge_only_registered_clauses(stray: Stray) -> None:
    paths = sorted(p for d in ("conformance/traces", "conformance/real-guests", "tests/cases")
                   for p in (REPO / d).rglob("*.jsonl"))
    assert len(paths) > 80
    judged = 0
    for p in paths:
        res = check_trace(p, traffic=False)
        judged += bool(res.results)
    assert judged > 80
    assert not stray, stray


def test_live_zoo_runs_judge_only_registered_clauses(stray: Stray) -> None:
    broken: set[str] = set()
    for entry in ZOO:
        for which in ("device", "twin"):
            cases = discover_cases(REPO / "conformance" / "traces", case_globs=list(entry.cases))
            runner = Runner(f"python:{entry.target(which)}")
            try:
                for c in cases:
                    broken |= {r.clause for r in runner.run_case(c).failures()}
            finally:
                runner.close()
    # the zoo's devices really broke clauses (the wrapped checks ran on failing paths too)
    assert len(broken) >= 5, broken
    assert not stray, stray
