"""The fast paths of `decode --summary` and `conform check` (issue 13) equal the slow ones.

A PFN buffer's page set is built lazily (``DecodedBuffer.pages``); its count comes from the
decoder's duplicate check (``page_count``) and its frames straight from the wire array
(``frames()``), which the summary's balloon (``PageAccumulator.add_frames``) and the oracle's
``actual`` accounting (``FrameMap.add_frames``) take without a set per buffer.  Each is
differential-tested here against the set it stands for, and whole traces (random inflates and
deflates with repeated PFNs, in both byte orders and page sizes) give the same summary and
the same verdicts with the fast paths switched off.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto import framemap
from virtio_balloon_proto.codecs import DecodedBuffer, Segment, decode_buffer
from virtio_balloon_proto.conformance.checks import judge
from virtio_balloon_proto.framemap import FrameMap
from virtio_balloon_proto.pageset import PageAccumulator, PageSet
from virtio_balloon_proto.profiles import QueueRole
from virtio_balloon_proto.trace import (
    AvailEvent,
    ConfigEvent,
    StatusEvent,
    TraceHeader,
    TraceReader,
    UsedEvent,
    write_trace,
)
from virtio_balloon_proto.tracedecode import Summary, decode_trace
from virtio_balloon_proto.wire import WireLayout

# PFNs from a small range repeat often; a few from the top of the u32 range land above any
# frame map's span
pfn = st.integers(0, 300) | st.integers((1 << 32) - 8, (1 << 32) - 1)
pfn_lists = st.lists(pfn, max_size=40)


def _bytes(pfns: list[int], endian: str, tail: bytes = b"") -> bytes:
    return np.array(pfns, dtype="<u4" if endian == "le" else ">u4").tobytes() + tail


@settings(max_examples=150, deadline=None)
@given(pfns=pfn_lists, endian=st.sampled_from(["le", "be"]),
       page_size=st.sampled_from([4096, 16384]), tail=st.binary(max_size=3),
       role=st.sampled_from(["inflate", "deflate"]))
def test_pfn_buffer_count_and_frames_are_its_page_set(pfns: list[int], endian: str,
                                                      page_size: int, tail: bytes,
                                                      role: str) -> None:
    data = _bytes(pfns, endian, tail)
    layout = WireLayout(endian, page_size=page_size)
    buf = decode_buffer("spec", role, [Segment(0x1000, len(data), False, data)], layout)
    ref = PageSet.from_frames(np.array(pfns, dtype=np.uint64))
    assert buf.page_count == len(ref)
    frames = buf.frames()
    if len(set(pfns)) == len(pfns):
        assert frames is not None and sorted(frames.tolist()) == sorted(pfns)
    else:
        assert frames is None  # repeats: the set path, which merges them
    assert buf.pages == ref
    same = buf.with_findings(())
    assert same.pages == ref and same.page_count == len(ref) and same.findings == ()


@pytest.fixture(autouse=True)
def _small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(framemap, "MAX_SPAN", 3000)


unique = st.lists(st.integers(0, 5000) | st.integers((1 << 32) - 4, (1 << 32) - 1),
                  unique=True, max_size=50)


@settings(max_examples=80, deadline=None)
@given(span=st.sampled_from([0, 100, 3000]),
       seq=st.lists(st.tuples(st.booleans(), unique), max_size=12))
def test_framemap_add_frames_equals_add(span: int, seq: list[tuple[bool, list[int]]]) -> None:
    fast, slow = FrameMap(span), FrameMap(span)
    for frames_op, frames in seq:
        arr = np.array(frames, dtype=np.uint32)
        ps = PageSet.from_frames(arr.astype(np.uint64))
        if frames_op:
            assert fast.add_frames(arr) == slow.add(ps)
        else:
            assert fast.remove(ps) == slow.remove(ps)
        assert len(fast) == len(slow)
        assert fast.to_pageset() == slow.to_pageset()
        assert fast.span <= 3000


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["frames", "add", "remove"]), pfn_lists),
                    max_size=25),
       flush_at=st.integers(1, 5))
def test_accumulator_add_frames_matches_the_fold(ops: list[tuple[str, list[int]]],
                                                 flush_at: int) -> None:
    acc = PageAccumulator()
    acc.FLUSH_AT = flush_at
    expect = PageSet.empty()
    for op, pfns in ops:
        ps = PageSet.from_frames(np.array(pfns, dtype=np.uint64))
        if op == "frames":
            acc.add_frames(np.array(pfns, dtype=np.uint32))
            expect = expect | ps
        elif op == "add":
            acc.add(ps)
            expect = expect | ps
        else:
            acc.remove(ps)
            expect = expect - ps
    assert acc.value == expect


@contextmanager
def _slow_paths() -> Iterator[None]:
    """Every caller takes the page set, as before the fast paths."""
    with mock.patch.object(DecodedBuffer, "frames", lambda self: None), \
            mock.patch.object(DecodedBuffer, "page_count",
                              property(lambda self: len(self.pages))):
        yield


def _summary(path: str) -> dict[str, Any]:
    s = Summary()
    with TraceReader(path) as r:
        lines = [d.to_json() for d in decode_trace(r, None, s)]
    return {"summary": s.to_json(), "lines": lines}


def _verdicts(path: str) -> Any:
    with TraceReader(path) as r:
        header, events = r.header, list(r.events())
    j = judge(header, events)
    return ([(r.clause, r.verdict, r.message, r.step, r.expected, r.received)
             for r in j.results], j.behaviour, j.notes)


buffers = st.lists(st.tuples(st.sampled_from(["inflate", "deflate"]), pfn_lists,
                             st.booleans()), min_size=1, max_size=10)


@settings(max_examples=40, deadline=None)
@given(bufs=buffers, endian=st.sampled_from(["le", "be"]),
       page_size=st.sampled_from([4096, 65536]), actual=st.integers(0, 400))
def test_summary_and_verdicts_equal_the_slow_paths(bufs: list[tuple[str, list[int], bool]],
                                                   endian: str, page_size: int,
                                                   actual: int) -> None:
    version_1 = 1 << 32 if endian == "le" else 0
    header = TraceHeader.for_features("spec", version_1, version_1, virtio_endian=endian,
                                      page_size=page_size)
    events: list[Any] = [StatusEvent(0), StatusEvent(1)]
    for head, (role, pfns, used) in enumerate(bufs):
        data = _bytes(pfns, endian)
        q = 0 if role == "inflate" else 1
        events.append(AvailEvent(QueueRole(role), q, (data,), (), id=head))
        if used:
            events.append(UsedEvent(QueueRole(role), q, 0, id=head))
        events.append(ConfigEvent(True, 4, actual.to_bytes(4, "little")))
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)
    try:
        write_trace(path, header, events)
        fast = (_summary(path), _verdicts(path))
        with _slow_paths():
            slow = (_summary(path), _verdicts(path))
        assert json.dumps(fast, default=str) == json.dumps(slow, default=str)
    finally:
        os.unlink(path)


# --- TraceReader's hex check: a character class in the schema, the even length at conversion
def test_every_hex_value_of_the_schema_is_converted_by_fromhex() -> None:
    from virtio_balloon_proto.trace.schema import HEX_VALUES, trace_schema

    found = set()

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            if node.get("$ref") == "#/$defs/bytes":
                found.add((path[1], path[3]))  # $defs/<record>/properties/<field>
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, list):
            for v in node:
                walk(v, path)

    walk(trace_schema()["$defs"], ("$defs",))
    assert found == set(HEX_VALUES)


hexish = st.text(alphabet="0123456789abcdefABx ", max_size=9)


@settings(max_examples=150, deadline=None)
@given(h=hexish, where=st.sampled_from(["out", "out+desc", "used", "config"]))
def test_reader_refuses_bad_hex_as_the_whole_schema_does(h: str, where: str) -> None:
    from virtio_balloon_proto.errors import TraceError
    from virtio_balloon_proto.trace import reader, schema

    header = TraceHeader.for_features("spec", 1 << 32, 1 << 32)
    rec: dict[str, Any]
    if where.startswith("out"):
        rec = {"type": "avail", "role": "inflate", "queue": 0, "id": 1, "out": [h], "in": []}
        if where == "out+desc":  # the descriptor's len is checked by the semantic rules
            rec["descriptors"] = [{"addr": "0x1000", "len": len(h) // 2, "flags": 0}]
    elif where == "used":
        rec = {"type": "used", "role": "inflate", "queue": 0, "id": 1, "len": 0, "data": h}
    else:
        rec = {"type": "config_write", "offset": 0, "data": h}
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)

    def read() -> Any:
        try:
            with TraceReader(path) as r:
                return [repr(e) for e in r.events()]
        except TraceError as exc:
            return str(exc)

    try:
        with open(path, "w") as f:
            f.write(json.dumps(header.to_json()) + "\n" + json.dumps(rec) + "\n")
        fast = read()
        with mock.patch.object(reader, "_reading_validator", schema._fast_validator):
            slow = read()  # the whole schema first, as before
        assert fast == slow
    finally:
        os.unlink(path)
