"""QEMU's balloon as changes (qemu/balloonlog.py) equals the whole fold of its trace log.

The fold is checked on random logs (buffers popped on the inflate, deflate and other queues,
PFNs QEMU processed or skipped as bad, buffers whose queue is not known yet, a buffer still
being processed, PFNs arriving between observations): after every observation, the balloon
the changes build equals ``extents_from_trace`` of the log as it stands.  Then a real QEMU
replay judged from the changes gives the verdicts of one judged from full observations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto.conformance.runner import Runner, discover_cases
from virtio_balloon_proto.qemu.balloonlog import BalloonLog
from virtio_balloon_proto.qemu.device import extents_from_trace
from virtio_balloon_proto.qemu.tracelog import TraceBuffer, TraceLog

REPO = Path(__file__).resolve().parent.parent
INFLATE, DEFLATE = 0, 1

op = st.one_of(
    # pop a buffer on a queue (2: another queue; None: its queue not known yet)
    st.tuples(st.just("pop"), st.sampled_from([INFLATE, INFLATE, DEFLATE, 2, None])),
    # QEMU logs PFNs of the current buffer (good or bad_addr)
    st.tuples(st.just("pfns"), st.lists(st.tuples(st.integers(0, 40), st.booleans()),
                                        max_size=6)),
    st.tuples(st.just("fill"), st.none()),  # the current buffer is used
    st.tuples(st.just("resolve"), st.none()),  # the queues of every popped buffer are known
    st.tuples(st.just("observe"), st.none()),
)


def _extents(frames: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for f in sorted(frames):
        if out and out[-1][0] + out[-1][1] == f:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((f, 1))
    return out


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op, max_size=40))
def test_changes_rebuild_the_whole_fold_at_every_observation(
        ops: list[tuple[str, Any]]) -> None:
    log = TraceLog(Path("/nonexistent"))
    queue_of: dict[int, int | None] = {}
    bl = BalloonLog()
    seen: set[int] = set()
    for kind, arg in [*ops, ("observe", None)]:
        if kind == "pop":
            b = TraceBuffer(len(log.buffers) + 1, vq=len(log.buffers), elem=len(log.buffers),
                            in_num=0, out_num=1, queue=arg)
            queue_of[b.vq] = arg if arg is not None else len(log.buffers) % 2
            log.buffers.append(b)
            log._current = b
        elif kind == "pfns" and log._current is not None:
            for p, good in arg:
                log._current.pfns.append(p)
                log._current.ok.append(good)
        elif kind == "fill":
            if log._current is not None:
                log._current.used_line = 1
            log._current = None
        elif kind == "resolve":
            for b in log.buffers:
                if b.queue is None:
                    b.queue = queue_of[b.vq]
        else:
            add, remove = bl.changes(log, INFLATE, DEFLATE)
            assert add == sorted(set(add)) and remove == sorted(set(remove))
            assert not set(add) & seen and set(remove) <= seen
            seen = (seen | set(add)) - set(remove)
            assert [tuple(e) for e in extents_from_trace(log, INFLATE, DEFLATE)] == \
                _extents(seen)


def test_qemu_replay_judged_from_changes_equals_full_observations() -> None:
    cases = discover_cases(REPO / "conformance" / "traces",
                           case_globs=["spec/inflate-le", "spec/deflate-le",
                                       "spec/malformed-le"])
    assert len(cases) == 3
    got = []
    for full in (False, True):
        runner = Runner("qemu")
        if full:
            runner.device.observe_changes = None  # type: ignore[attr-defined]
        try:
            got.append([(r.case_id, r.outcome(), sorted((c.clause, c.verdict.name, c.message)
                                                         for c in r.results),
                         r.behaviour) for r in (runner.run_case(c) for c in cases)])
        finally:
            runner.close()
    assert got[0] == got[1]
    assert {o for _, o, _, _ in got[0]} == {"pass"}
