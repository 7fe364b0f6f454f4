"""FrameMap reads a page set a chunk of runs at a time (issue 12): block-form and swept sets
are never expanded into whole extent arrays, and the part above the byte map's span is a
window that is not built.  Differential: the same operations on the compact sets and on
their plain extents form (one chunk: the old path) give the same answers and the same maps,
across many chunks (``_CHUNK_RUNS`` made tiny), the span and MAX_SPAN.  And ``conform
check``'s oracle of a 1 MiB buffer of 0x55 hybrid words adds a bounded amount to decoding."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hybrid_traces import x55_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto import framemap
from virtio_balloon_proto.framemap import FrameJournal, FrameMap
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.wire import WireLayout, decode
from virtio_balloon_proto.wire.hybridset import HybridPageSet

CAP = 6000  # MAX_SPAN in these tests: sets straddle it


def _hybrid(records: list[tuple[int, int, list[int]]]) -> PageSet:
    """The decoded set of a little-endian hybrid message of (start_pfn, page_shift, words)
    records of 63 bits each, plus 16 records of 0x55 words at order 3 and 8 phases from
    frame 3000 (so the decoder sweeps: a HybridPageSet straddling CAP)."""
    extra = [(3000 + r * 8192 + r % 8, 15, [0x5555555555555555] * 8) for r in range(16)]
    body = b"".join(struct.pack("<Q", s | sh << 52 | 63 << 58)
                    + b"".join(struct.pack("<Q", w) for w in ws)
                    for s, sh, ws in [*records, *extra])
    data = struct.pack("<BBHI", 0, 0, 0, len(body)) + body
    return decode("hybrid", data, WireLayout(), profile="hybrid").pages()


words = st.lists(st.sampled_from([0x5555555555555555, 0xFFFFFFFFFFFFFFFF, 0, 1 << 63])
                 | st.integers(0, (1 << 64) - 1), min_size=8, max_size=8)
compact = st.one_of(
    # bit blocks (plain and scaled) from a bitmap, anywhere around the span and the cap
    st.builds(lambda raw, base, shift, phase: PageSet.from_le_units(
        np.frombuffer(bytes(raw), dtype=np.uint8), base, len(raw) * 8, shift,
        phase % (1 << shift)),
        st.lists(st.sampled_from([0x55, 0xAA, 0xFF, 0x0F, 0]) | st.integers(0, 255),
                 min_size=1, max_size=200),
        st.integers(0, 9000), st.sampled_from([0, 0, 1, 3]), st.integers(0, 7)),
    # swept hybrid sets
    st.builds(_hybrid, st.lists(st.tuples(st.integers(0, 9000), st.sampled_from([12, 13, 15]),
                                          words), max_size=4)),
    # plain extents
    st.builds(lambda e: PageSet.from_extents([list(x) for x in e]) if e else PageSet(),
              st.lists(st.tuples(st.integers(0, 9000), st.integers(1, 300)), max_size=5)),
)
ops = st.lists(st.tuples(st.sampled_from(["add", "remove", "set1", "set0"]), compact),
               min_size=1, max_size=6)


def _plain(ps: PageSet) -> PageSet:
    """The same set as whole extents (read through the runs: a swept set stays swept)."""
    return PageSet.from_extents(ps.extents()) if ps else PageSet()


@pytest.fixture(autouse=True)
def _small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(framemap, "MAX_SPAN", CAP)
    monkeypatch.setattr(framemap, "_PIECES", [])


@settings(max_examples=60, deadline=None)
@given(span=st.sampled_from([0, 1000, 5000]), seq=ops, probe=compact,
       chunk=st.sampled_from([1, 3, 1 << 13]))
def test_chunked_reads_of_compact_sets_equal_the_extents_path(
        span: int, seq: list[tuple[str, PageSet]], probe: PageSet, chunk: int) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(framemap, "_CHUNK_RUNS", chunk)
        mp.setattr(framemap, "_PIECES", [])
        _differential(span, seq, probe)


def _differential(span: int, seq: list[tuple[str, PageSet]], probe: PageSet) -> None:
    fm, ref, model = FrameMap(span), FrameMap(span), PageSet()
    jf, jr = FrameJournal(span), FrameJournal(span)
    for op, ps in seq:
        plain = _plain(ps)
        if op == "add":
            assert fm.add(ps) == ref.add(plain) == len(plain - model)
            model = model | plain
        elif op == "remove":
            assert fm.remove(ps) == ref.remove(plain) == len(plain & model)
            model = model - plain
        else:
            value = int(op == "set1")
            got, want = fm.set_to(ps, value), ref.set_to(plain, value)
            as_set = [g if isinstance(g, PageSet) else PageSet.from_frames(g.astype(np.uint64))
                      for g in (got[0], want[0])]
            assert as_set[0] == as_set[1] and got[1] == want[1]
            model = model | plain if value else model - plain
        (jf.add if op in ("add", "set1") else jf.remove)(ps)
        (jr.add if op in ("add", "set1") else jr.remove)(plain)
        assert len(fm) == len(ref) == len(model) and fm.span == ref.span
        assert fm.to_pageset() == model == ref.to_pageset()
        q = _plain(probe)
        assert fm.mask(probe) == ref.mask(q) == q & model
        assert fm.count_in(probe) == ref.count_in(q) == len(q & model)
        assert fm.differs(FrameMap(), probe) == q & model
    assert jf.changes() == jr.changes()


def test_a_straddling_swept_set_is_added_without_being_built() -> None:
    """The part above the span is a window over the decoder's set: counted by clipping its
    runs, never expanded (the swept set stays swept)."""
    ps = _hybrid([(5, 12, [0x5555555555555555] * 8)])
    assert isinstance(ps, HybridPageSet) and ps.min() < CAP < ps.max()
    fm = FrameMap(0)
    assert fm.add(ps) == len(ps) == len(fm)
    assert ps._rec is not None and fm.span == CAP
    over = fm._over
    assert isinstance(over, framemap._Window) and over._base is ps
    assert over == PageSet.from_extents(ps.extents()).window(CAP, (1 << 64) - CAP)
    assert fm.to_pageset() == _plain(ps)


def _peak(trace: Path, check: bool) -> int:
    from virtio_balloon_proto.conformance.offline import check_trace
    from virtio_balloon_proto.trace import TraceReader
    from virtio_balloon_proto.tracedecode import decode_trace

    tracemalloc.start()
    try:
        if check:
            assert check_trace(trace, traffic=False).results
        else:
            with TraceReader(str(trace)) as reader:
                for d in decode_trace(reader):
                    for _ in d.buffer.pages._iter_runs() if d.buffer is not None else ():
                        pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_check_of_a_big_buffer_adds_little_to_decoding(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """``conform check`` of 1 MiB of 0x55 words (a run every 2 frames: ~3.7 M runs, 59 MB as
    extents) peaks no higher than decoding alone plus 4x the trace (measured: +0x, the check's
    working set -- the balloon's byte map, 15 MB for these 14.9 M frames -- stays below the
    ~16x orjson reserves to parse the line; before the chunked reads: +78x)."""
    monkeypatch.setattr(framemap, "MAX_SPAN", 1 << 26)
    trace = tmp_path / "x55.jsonl"
    size = x55_trace(trace, 1 << 20, 1024)
    _peak(trace, False)  # imports and first-use caches out of the measure
    alone = _peak(trace, False)
    checked = _peak(trace, True)
    assert checked - alone <= 4 * size, f"{(checked - alone) / size:.1f}x"
