"""FrameMap / FrameJournal (issue 13): the mutable frame sets of the replay loop and the oracle
are differential-tested against PageSet, the immutable reference, at every step of random
add/remove sequences -- across the byte map, its growth, and the PageSet part above MAX_SPAN."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto import framemap
from virtio_balloon_proto.framemap import FrameJournal, FrameMap, extent_list
from virtio_balloon_proto.pageset import PageSet

# frames 0..5000 with a map capped at 3000: both parts and the boundary are exercised; extents
# up to 200 frames cross the 64-frame slice threshold
extents = st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 200)), max_size=6)
ops = st.lists(st.tuples(st.sampled_from(["add", "remove", "changes"]), extents), max_size=25)


def _ps(ext: list[tuple[int, int]]) -> PageSet:
    return PageSet.from_extents([list(e) for e in ext]) if ext else PageSet.empty()


@pytest.fixture(autouse=True)
def _small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(framemap, "MAX_SPAN", 3000)


@settings(max_examples=60, deadline=None)
@given(span=st.sampled_from([0, 100, 1000, 3000]), seq=ops, probe=extents)
def test_framemap_equals_pageset_at_every_step(span: int, seq: list, probe: list) -> None:
    fm, model = FrameMap(span), PageSet.empty()
    q = _ps(probe)
    for op, ext in seq:
        ps = _ps(ext)
        if op == "add":
            assert fm.add(ps) == len(ps - model)
            model = model | ps
        elif op == "remove":
            assert fm.remove(ps) == len(ps & model)
            model = model - ps
        assert len(fm) == len(model)
        assert fm.to_pageset() == model
        assert extent_list(model) == model.extents()
        assert fm.mask(q) == q & model
        assert fm.count_in(q) == len(q & model)
        assert fm.span <= 3000


@settings(max_examples=60, deadline=None)
@given(span=st.sampled_from([0, 1000]), seq=ops)
def test_journal_changes_are_the_net_difference(span: int, seq: list) -> None:
    j, model, last = FrameJournal(span), PageSet.empty(), PageSet.empty()
    for op, ext in seq:
        ps = _ps(ext)
        if op == "add":
            j.add(ps)
            model = model | ps
        elif op == "remove":
            j.remove(ps)
            model = model - ps
        else:
            added, removed = j.changes()
            assert (added, removed) == (model - last, last - model)
            last = model
    added, removed = j.changes()
    assert (last | added) - removed == model == j.now.to_pageset()


def test_replace_returns_what_changed() -> None:
    fm = FrameMap(64)
    fm.add(PageSet.from_range(10, 20))
    changed = fm.replace(PageSet.from_range(20, 20))
    assert changed == PageSet.from_range(10, 10) | PageSet.from_range(30, 10)
    assert fm.to_pageset() == PageSet.from_range(20, 20) and len(fm) == 20


def test_a_hostile_frame_number_costs_no_allocation() -> None:
    fm = FrameMap(0)
    fm.add(PageSet.from_range((1 << 63) - 10, 10))  # far above MAX_SPAN: the PageSet part
    assert fm.span == 0 and len(fm) == 10
    assert fm.remove(PageSet.from_range(0, 1 << 62) | PageSet.from_range(1 << 62, 1 << 62)) == 10


@settings(max_examples=60, deadline=None)
@given(a=ops, b=ops, probe=extents)
def test_differs_is_the_symmetric_difference_within(a: list, b: list, probe: list) -> None:
    maps, models = [FrameMap(0), FrameMap(1000)], [PageSet.empty(), PageSet.empty()]
    for k, seq in enumerate((a, b)):
        for op, ext in seq:
            if op == "add":
                maps[k].add(_ps(ext))
                models[k] = models[k] | _ps(ext)
            elif op == "remove":
                maps[k].remove(_ps(ext))
                models[k] = models[k] - _ps(ext)
    q = _ps(probe)
    assert maps[0].differs(maps[1], q) == (models[0] ^ models[1]) & q
    assert maps[0].to_pageset() == models[0] and maps[1].to_pageset() == models[1]
