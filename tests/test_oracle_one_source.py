"""Findings have one source (issue 11): every rule ``vbproto decode`` reports for a trace is a
clause ``conform check`` reports for it too, with the same standing."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtio_balloon_proto.conformance.catalog import catalog
from virtio_balloon_proto.conformance.runner import check_trace
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
    res = {x.clause: x for x in check_trace(path).results}
    cat = catalog()
    for rule in rules:
        assert rule in res, (path.name, rule)
        c = cat.get(rule)
        if c.side == "driver" and c.level != "MAY":
            assert res[rule].broken, (path.name, rule, res[rule])
