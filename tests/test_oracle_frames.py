"""The balloon check's frame path (issue 13) judges exactly as its page-set path.

A used inflate whose decoding is a plain PFN array (no repeats; ``DecodedBuffer.frames()``)
inside one RAM region is added to the oracle's ``required`` map as frames, and its frames are
compared with the device's map without building a page set.  Random traces of inflates,
deflates, used entries and ``state`` observations (full balloons and deltas, right and wrong,
RAM with a hole, PFNs outside RAM, repeats, malformed lengths) are judged with the frame path
and with it switched off (``frames()`` answering None, as before): the verdicts, messages,
steps, expected/received sets, behaviour and notes must be identical.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any
from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto.codecs import DecodedBuffer
from virtio_balloon_proto.conformance.checks import judge
from virtio_balloon_proto.framemap import FrameMap
from virtio_balloon_proto.profiles import QueueRole
from virtio_balloon_proto.trace import (
    AvailEvent,
    ObserveEvent,
    StatusEvent,
    TraceHeader,
    TraceReader,
    UsedEvent,
    write_trace,
)

#: RAM: frames 0-99 and 200-299 (a hole at 100-199); PFNs up to 320 land in, between and
#: beyond the regions
MEMORY = ((0, 100 << 12), (200 << 12, 100 << 12))
pfn = st.integers(0, 320)
frames_set = st.lists(pfn, max_size=12)

#: a buffer's PFNs: mostly inside one region (the frame path), else anywhere (the set path)
buf_pfns = st.one_of(st.lists(st.integers(0, 99), max_size=12, unique=True),
                     st.lists(st.integers(200, 299), max_size=12, unique=True),
                     st.lists(st.integers(0, 15), max_size=6),  # repeats
                     st.lists(pfn, max_size=12))
step = st.one_of(
    st.tuples(st.just("buf"), st.sampled_from(["inflate", "deflate"]), buf_pfns,
              st.sampled_from(["used", "used", "later", "never"]), st.booleans()),
    # an observation: the balloon the device shows, as a full list or as a change
    st.tuples(st.just("obs"), st.sampled_from(["full", "delta"]), buf_pfns, frames_set,
              st.booleans()),
)


def _extents(frames: list[int]) -> list[list[int]]:
    return [[f, 1] for f in sorted(set(frames))]


def _verdicts(path: str) -> Any:
    with TraceReader(path) as r:
        header, events = r.header, list(r.events())
    j = judge(header, events)
    return ([(r.clause, r.verdict, r.message, r.step, str(r.expected), str(r.received))
             for r in j.results], j.behaviour, j.notes)


@settings(max_examples=120, deadline=None)
@given(steps=st.lists(step, min_size=1, max_size=14), endian=st.sampled_from(["le", "be"]))
def test_balloon_check_frame_path_equals_the_page_set_path(
        steps: list[tuple[Any, ...]], endian: str) -> None:
    version_1 = 1 << 32 if endian == "le" else 0
    header = TraceHeader.for_features("spec", version_1, version_1, virtio_endian=endian,
                                      memory=MEMORY, observed=True)
    events: list[Any] = [StatusEvent(0), StatusEvent(1)]
    later: list[tuple[QueueRole, int, int]] = []
    head = 0
    for s in steps:
        if s[0] == "buf":
            _, role, pfns, fate, odd = s
            data = np.array(pfns, dtype="<u4" if endian == "le" else ">u4").tobytes()
            if odd:
                data += b"\x01\x02"  # a length that is no multiple of 4: malformed
            q = 0 if role == "inflate" else 1
            events.append(AvailEvent(QueueRole(role), q, (data,), (), id=head))
            if fate == "used":
                events.append(UsedEvent(QueueRole(role), q, 0, id=head))
            elif fate == "later":
                later.append((QueueRole(role), q, head))
            head += 1
        else:
            _, form, add, remove, flush = s
            if flush:  # the chains held back are used now (out of order)
                for role, q, h in reversed(later):
                    events.append(UsedEvent(role, q, 0, id=h))
                later.clear()
            value = ({"balloon": _extents(add)} if form == "full" else
                     {"balloon_delta": {"add": _extents(add), "remove": _extents(remove)}})
            events.append(ObserveEvent("state", value))
    events.append(ObserveEvent("end", {}))
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)
    try:
        write_trace(path, header, events)
        fast = _verdicts(path)
        with mock.patch.object(DecodedBuffer, "frames", lambda self: None):
            slow = _verdicts(path)
        assert fast == slow
    finally:
        os.unlink(path)


def test_the_frame_path_is_taken_and_catches_a_missing_frame() -> None:
    """The fast path runs (``differs_frames`` is called) and still names a frame the device
    lost."""
    header = TraceHeader.for_features("spec", 1 << 32, 1 << 32, memory=MEMORY, observed=True)
    data = np.array([5, 6, 7, 9], dtype="<u4").tobytes()
    events: list[Any] = [StatusEvent(0), StatusEvent(1),
                         AvailEvent(QueueRole.INFLATE, 0, (data,), (), id=0),
                         UsedEvent(QueueRole.INFLATE, 0, 0, id=0),
                         ObserveEvent("state", {"balloon": [[5, 3]]}), ObserveEvent("end", {})]
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)
    calls: list[int] = []
    real = FrameMap.differs_frames

    def counted(self: FrameMap, other: FrameMap, frames: Any) -> Any:
        calls.append(int(frames.size))
        return real(self, other, frames)

    try:
        write_trace(path, header, events)
        with mock.patch.object(FrameMap, "differs_frames", counted):
            results, _, _ = _verdicts(path)
    finally:
        os.unlink(path)
    assert calls == [4]
    failed = {c: m for c, v, m, *_ in results if v.name == "FAIL"}
    assert "1 frame(s) an acknowledged inflate named are not in the device's balloon" in \
        failed["spec.device.inflate.pfn-4k-units"], failed
