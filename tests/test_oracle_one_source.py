"""Findings have one source (issue 11): every rule ``vbproto decode`` reports for a trace is a
clause ``conform check`` reports for it too, with the same standing (a ``note.*`` finding is a
note of the check: it blames nobody)."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtio_balloon_proto.conformance.catalog import catalog
from virtio_balloon_proto.conformance.runner import check_trace
from virtio_balloon_proto.findings import is_note
from virtio_balloon_proto.trace import TraceReader
from virtio_balloon_proto.tracedecode import decode_trace

ROOT = Path(__file__).resolve().parent
TRACES = sorted((ROOT.parent / "conformance" / "traces").rglob("*.jsonl")) + sorted(
    (ROOT / "cases").rglob("*.jsonl"))


@pytest.mark.parametrize("path", TRACES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_decode_findings_are_check_results(path: Path) -> None:
    with TraceReader(path) as r:
        rules = {f.rule for d in decode_trace(r) if d.buffer is not None
                 for f in d.buffer.findings}
    checked = check_trace(path)
    res = {x.clause: x for x in checked.results}
    cat = catalog()
    for rule in rules:
        if is_note(rule):  # a note blames nobody: a note of the check, never a clause result
            assert rule not in res and any(n.startswith(f"{rule}: ") for n in checked.notes)
            continue
        assert rule in res, (path.name, rule)
        c = cat.get(rule)
        if c.side == "driver" and c.level != "MAY":
            assert res[rule].broken, (path.name, rule, res[rule])
