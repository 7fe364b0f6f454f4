"""PageAccumulator equals folding | and - in order (it only changes when merges happen)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto.pageset import PageAccumulator, PageSet
from virtio_balloon_proto.pagesets_strategies import page_sets


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), page_sets(max_frame=1 << 12)), max_size=30),
       flush_at=st.integers(1, 5))
def test_accumulator_matches_the_fold(ops: list[tuple[bool, PageSet]], flush_at: int) -> None:
    acc = PageAccumulator()
    acc.FLUSH_AT = flush_at  # exercise the early merge too
    expect = PageSet.empty()
    for add, ps in ops:
        if add:
            acc.add(ps)
            expect = expect | ps
        else:
            acc.remove(ps)
            expect = expect - ps
    assert acc.value == expect
