"""Incremental state == full comparison (issue 13).

A device with ``observe_changes`` is recorded as a balloon *delta* per step plus one full
observation at the end; the same device without it is recorded with its full balloon after
every step.  The oracle must give both recordings exactly the same verdicts, for the reference
device and for faulty devices whose balloons go wrong (so a delta can never hide a fault).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from virtio_balloon_proto.conformance.runner import Runner, discover_cases
from virtio_balloon_proto.models.device import ReferenceDevice

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import faulty_devices  # noqa: E402

BALLOON_CASES = ["spec/inflate-le", "spec/deflate-*", "spec/malformed-le",
                 "spec/inflate-high-ram-le", "spec/inflate-malformed-then-good-le",
                 "v3/deflate-le64", "v3/inflate-64k-be",
                 "hybrid/deflate-le", "hybrid/malformed-le"]


class FullObserve:
    """Any device, minus observe_changes: the runner records its full state every step."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        if name == "observe_changes":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _key(res: Any) -> list[tuple[Any, ...]]:
    return sorted((r.clause, r.verdict.value, r.message, r.step) for r in res.results)


@pytest.mark.parametrize("cls", [ReferenceDevice, faulty_devices.DropsTrailingPage,
                                 faulty_devices.IgnoresDeflate],
                         ids=lambda c: c.__name__)
def test_deltas_and_full_states_get_the_same_verdicts(cls: type) -> None:
    cases = discover_cases(case_globs=BALLOON_CASES)
    assert len(cases) == 12
    delta, full = Runner(cls()), Runner(FullObserve(cls()))
    seen_delta = 0
    for case in cases:
        a, b = delta.run_case(case), full.run_case(case)
        assert (a.status, _key(a), a.behaviour) == (b.status, _key(b), b.behaviour), case.id
        rec = delta.record(case, a)
        if rec is not None:
            states = [ev.value for ev in rec[1] if getattr(ev, "what", "") == "state"]
            seen_delta += any("balloon_delta" in s for s in states)
            if any("balloon_delta" in s for s in states):
                assert "balloon" in states[-1]  # the checkpoint: one full state at the end
    assert seen_delta == 12  # the delta path really ran


def test_a_lying_delta_is_caught_at_the_checkpoint() -> None:
    """A device whose deltas drop a page but whose full state is right: the full observation
    at the end disagrees with the judge's expectation nowhere, but the per-step deltas do --
    the verdict names the step where the reported balloon went wrong."""

    class LyingDelta(ReferenceDevice):
        def observe_changes(self) -> dict[str, Any]:
            from virtio_balloon_proto.pageset import PageSet

            out = super().observe_changes()
            add = out["balloon_delta"]["add"]  # a PageSet: the reference's compact answer
            assert isinstance(add, PageSet)
            if add:
                # drop the first frame of the first extent (all of it when it is one frame)
                out["balloon_delta"]["add"] = add - PageSet.from_range(int(add.starts[0]), 1)
            return out

    case = discover_cases(case_globs=["spec/inflate-le"])[0]
    res = Runner(LyingDelta()).run_case(case)
    bad = [r for r in res.results if r.clause == "spec.device.inflate.pfn-4k-units"]
    assert bad and bad[0].verdict.value == "fail", _key(res)


@pytest.mark.parametrize("cls", [ReferenceDevice, faulty_devices.DropsTrailingPage,
                                 faulty_devices.IgnoresDeflate],
                         ids=lambda c: c.__name__)
def test_compact_deltas_get_the_verdicts_of_json_deltas(cls: type, tmp_path: Path) -> None:
    """The runner keeps a recorded delta as page sets (issue 13: bounded memory) unless it
    writes the recording out (--save-traces keeps the JSON lists): same verdicts either way,
    and the saved recording re-judged offline agrees too."""
    from virtio_balloon_proto.conformance.runner import check_trace
    from virtio_balloon_proto.pageset import PageSet

    cases = discover_cases(case_globs=BALLOON_CASES)
    compact, saved = Runner(cls()), Runner(cls(), save_traces=tmp_path)
    for case in cases:
        a, b = compact.run_case(case), saved.run_case(case)
        assert (a.status, _key(a), a.behaviour) == (b.status, _key(b), b.behaviour), case.id
        offline = check_trace(tmp_path / f"{case.id}.jsonl", subject="device")
        assert _key(offline) == _key(b), case.id
        rec = compact.record(case, a)
        assert rec is not None
        deltas = [ev.value["balloon_delta"] for ev in rec[1]
                  if getattr(ev, "what", "") == "state" and "balloon_delta" in ev.value]
        assert deltas and all(isinstance(d["add"], PageSet) for d in deltas)  # really compact
        fulls = [ev.value["balloon"] for ev in rec[1]
                 if getattr(ev, "what", "") == "state" and "balloon" in ev.value]
        assert fulls and isinstance(fulls[-1], PageSet)
