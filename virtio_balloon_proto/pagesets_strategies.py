"""Hypothesis strategies for :class:`~virtio_balloon_proto.pageset.PageSet`.

Kept apart from the package's public ``strategies`` module until the lead folds it in.
"""

from __future__ import annotations

from hypothesis import strategies as st

from .pageset import MAX_FRAME, PageSet

__all__ = ["extent_lists", "page_sets"]


@st.composite
def extent_lists(
    draw: st.DrawFn, max_frame: int = 4095, max_extents: int = 12, max_count: int = 300
) -> list[list[int]]:
    """Raw ``[first, count]`` lists inside ``0..max_frame``: unsorted, overlapping and
    adjacent extents included on purpose, so constructors have something to merge."""
    n = draw(st.integers(0, max_extents))
    out: list[list[int]] = []
    for _ in range(n):
        first = draw(
            st.one_of(
                st.integers(0, max_frame),
                # cluster near both ends, where the overflow-prone arithmetic lives
                st.integers(0, min(max_frame, 70)),
                st.integers(max(0, max_frame - 70), max_frame),
            )
        )
        count = draw(st.integers(1, max(1, min(max_count, max_frame - first + 1))))
        out.append([first, count])
    return out


def page_sets(
    max_frame: int = 4095, max_extents: int = 12, max_count: int = 300
) -> st.SearchStrategy[PageSet]:
    """PageSets whose frames lie in ``0..max_frame`` (at most 2**64-1)."""
    if not 0 <= max_frame <= MAX_FRAME:
        raise ValueError("max_frame must be within 0..2**64-1")
    return extent_lists(max_frame, max_extents, max_count).map(PageSet.from_extents)
