"""The replay in bounded memory (issue 13): what ``conform run`` keeps per step is made when
it is walked (a case's steps), answered in page sets (the reference device's balloon), shared
with the step before (equal observation values) or cached (config bytes) -- and must judge
exactly as the eager, unshared JSON forms do, also when a fault shows only late in a case.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto.conformance.cases import _walk
from virtio_balloon_proto.conformance.runner import (
    Runner,
    case_from_trace,
    check_trace,
    discover_cases,
)
from virtio_balloon_proto.models.device import ReferenceDevice
from virtio_balloon_proto.models.interface import Segment, Setup, Used
from virtio_balloon_proto.models.synth import SynthOptions, synthesize
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.wire.structs import CONFIG

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from test_oracle_incremental import FullObserve  # noqa: E402

GOOD_INFLATES = 48


class LateDrop(ReferenceDevice):
    """Right for its first GOOD_INFLATES inflates, then leaves the first page of every
    inflate out of its balloon: a fault only the end of a long case shows."""

    name = "late-drop"

    def start(self, setup: Setup) -> Any:
        self.inflates = 0
        return super().start(setup)

    def _on_inflate(self, head: int, segs: list[Segment]) -> list[Used]:
        self.inflates += 1
        if self.inflates <= GOOD_INFLATES:
            return super()._on_inflate(head, segs)
        d = self._decode("inflate", segs)
        if d is not None and d.pages:
            pages = self._in_ram(d.pages)
            self.state.pages.add(pages - PageSet.from_range(int(pages.starts[0]), 1))
        return [Used(head, 0)]


def _key(res: Any) -> list[tuple[Any, ...]]:
    return sorted((r.clause, r.verdict.value, r.message, r.step) for r in res.results)


def _long_case() -> Any:
    """A 64-buffer inflate (16,384 pages of a 128 MiB guest) with an actual write after each."""
    header, events = synthesize(SynthOptions("spec", "inflate", pages=256 * 64,
                                             memory=128 << 20))
    return case_from_trace(header, events, "long-inflate")


def test_a_late_fault_gets_the_verdicts_of_full_json_recordings(tmp_path: Path) -> None:
    case = _long_case()
    inflates = [s.index for s in case.iter_steps() if s.kind == "avail"]
    assert len(inflates) == 64
    for cls in (ReferenceDevice, LateDrop):
        compact = Runner(cls()).run_case(case)  # page-set deltas, shared values, lazy steps
        full = Runner(FullObserve(cls())).run_case(case)  # a full balloon every step
        saved = Runner(cls(), save_traces=tmp_path / cls.__name__).run_case(case)
        offline = check_trace(tmp_path / cls.__name__ / "long-inflate.jsonl",
                              subject="device")  # the JSON recording, read back
        assert _key(compact) == _key(full) == _key(saved) == _key(offline), cls.__name__
        assert compact.behaviour == full.behaviour == saved.behaviour == offline.behaviour
        bad = [r for r in compact.results if r.verdict.value == "fail"]
        if cls is ReferenceDevice:
            assert compact.verdict().value == "pass" and not bad
        else:
            assert [r.clause for r in bad] == ["spec.device.inflate.pfn-4k-units"]
            # named at the first bad inflate (its event number in the recorded trace), far
            # into the case
            from virtio_balloon_proto import trace as tr

            _, recorded = tr.read_trace(tmp_path / cls.__name__ / "long-inflate.jsonl")
            avails = [i for i, ev in enumerate(recorded, start=1)
                      if isinstance(ev, tr.AvailEvent)]
            assert bad[0].step == avails[GOOD_INFLATES]


def test_the_recording_holds_page_sets_and_shares_repeated_values() -> None:
    case = _long_case()
    runner = Runner(ReferenceDevice())
    rec = runner.record(case, runner.run_case(case))
    assert rec is not None
    states = [ev.value for ev in rec[1] if getattr(ev, "what", "") == "state"]
    deltas = [s["balloon_delta"] for s in states if "balloon_delta" in s]
    assert all(isinstance(d["add"], PageSet) for d in deltas)
    unchanged = [d for d in deltas if not d["add"] and not d["remove"]]
    assert len(unchanged) >= 64 and len({id(d) for d in unchanged}) == 1  # one shared object
    assert len({id(s["stats"]) for s in states[:-1]}) == 1  # all but the checkpoint
    assert isinstance(states[-1]["balloon"], PageSet)  # the checkpoint, compact too
    assert len(states[-1]["balloon"]) == 256 * 64


def test_steps_walked_lazily_are_the_case_s_steps_and_gaps() -> None:
    """Every corpus case: the gaps found without building steps are the full walk's, and the
    steps plus gaps account for every driver-side event exactly once."""
    from virtio_balloon_proto import trace as tr

    cases = discover_cases()
    assert len(cases) > 50 and any(c.gaps for c in cases)  # the gap-only path really ran
    driver = (tr.AvailEvent, tr.ConfigEvent, tr.HostEvent)
    for case in cases:
        walked = list(_walk(case.header, case.events))
        assert [g for g in walked if isinstance(g, str)] == list(case.gaps), case.id
        steps = case.steps
        assert steps == tuple(case.iter_steps())
        assert [s.index for s in steps] == sorted(s.index for s in steps)
        idx = {s.index for s in steps} | {int(g.split()[1]) for g in case.gaps}
        assert idx == {i for i, ev in enumerate(case.events, start=1)
                       if isinstance(ev, driver)}, case.id


@settings(max_examples=40, deadline=None)
@given(profile=st.sampled_from(["spec", "v3", "hybrid"]),
       ops=st.lists(st.tuples(st.sampled_from(["write", "target", "hint"]),
                              st.integers(0, 15), st.binary(min_size=1, max_size=4),
                              st.integers(0, 0xFFFFFFFF)), max_size=25))
def test_cached_config_bytes_are_what_config_builds(profile: str, ops: list[Any]) -> None:
    dev = ReferenceDevice()
    dev.start(Setup(profile=profile, driver_features=(1 << 64) - 1))
    size = dev._config_size
    for op, offset, data, value in ops:
        if op == "write":
            dev.config_write(offset, data)
        elif op == "target":
            dev.host_request("set-target", {"num_pages": value})
        else:
            dev.host_request("hint-start", {"cmd_id": max(2, value)})
        s = dev.state
        vals = {"num_pages": s.num_pages, "actual": s.actual,
                "free_page_hint_cmd_id": s.hint_cmd_id, "poison_val": s.poison_val}
        fresh = bytes(CONFIG[size].build({k: v for k, v in vals.items()
                                          if k in {c.name for c in CONFIG[size].subcons}}))
        assert dev.config_read(0, size) == fresh
