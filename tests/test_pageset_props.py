"""Differential property tests: PageSet against a plain Python ``set`` of frames."""

from __future__ import annotations

from typing import Literal

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto.pageset import MAX_FRAME, PageSet
from virtio_balloon_proto.pagesets_strategies import extent_lists, page_sets

SMALL = 2047

frames_lists = st.lists(st.integers(0, SMALL), max_size=200)
high_sets = page_sets(max_frame=MAX_FRAME, max_extents=6, max_count=40)


def oracle_of_extents(extents: list[list[int]]) -> set[int]:
    return {f for first, count in extents for f in range(first, first + count)}


def frames_of(ps: PageSet) -> set[int]:
    """Frames via the Python-level extent iterator (independent of to_frames)."""
    return {f for first, count in ps for f in range(first, first + count)}


def extents_of_set(s: set[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for f in sorted(s):
        if out and out[-1][0] + out[-1][1] == f:
            out[-1][1] += 1
        else:
            out.append([f, 1])
    return out


def check_invariants(ps: PageSet) -> None:
    s, last = ps.starts, ps.lasts
    assert s.dtype == np.uint64 and last.dtype == np.uint64
    assert not s.flags.writeable and not last.flags.writeable
    assert s.shape == last.shape
    assert bool(np.all(last >= s))
    if s.size > 1:
        # sorted, disjoint and non-adjacent: next start > previous last + 1
        gap = s[1:].astype(object) - last[:-1].astype(object)
        assert all(g > 1 for g in gap.tolist())


@settings(max_examples=150)
@given(frames_lists)
def test_from_frames_matches_set(frames: list[int]) -> None:
    ps = PageSet.from_frames(np.array(frames, dtype=np.uint32))
    check_invariants(ps)
    assert frames_of(ps) == set(frames)
    assert ps.extents() == extents_of_set(set(frames))
    assert len(ps) == len(set(frames))
    assert ps.to_frames().tolist() == sorted(set(frames))
    # a Python list gives the same set as a numpy array of any width
    assert PageSet.from_frames(frames) == ps
    assert PageSet.from_frames(np.array(frames, dtype=np.int64)) == ps


@settings(max_examples=150)
@given(frames_lists)
def test_duplicates_counted(frames: list[int]) -> None:
    res = PageSet.from_frames_counted(frames)
    assert res.duplicates == len(frames) - len(set(frames))
    repeated = {f for f in frames if frames.count(f) > 1}
    assert frames_of(res.duplicated) == repeated
    assert frames_of(res.pages) == set(frames)


@settings(max_examples=150)
@given(extent_lists(max_frame=SMALL))
def test_from_extents_matches_set(ext: list[list[int]]) -> None:
    ps = PageSet.from_extents(ext)
    check_invariants(ps)
    oracle = oracle_of_extents(ext)
    assert frames_of(ps) == oracle
    assert ps.extents() == extents_of_set(oracle)
    assert ps.page_count() == len(oracle)
    # JSON and text forms round-trip
    assert PageSet.from_extents(ps.extents()) == ps
    assert PageSet.from_text(ps.to_text()) == ps
    assert PageSet.from_frames(ps.to_frames()) == ps
    # the text form written by hand from the oracle
    expected_text = ",".join(
        str(a) if c == 1 else f"{a}-{a + c - 1}" for a, c in extents_of_set(oracle)
    )
    assert ps.to_text() == expected_text


@settings(max_examples=150)
@given(extent_lists(max_frame=SMALL), st.randoms(use_true_random=False))
def test_from_text_any_order(ext: list[list[int]], rnd: object) -> None:
    items = [str(a) if c == 1 else f"{a}-{a + c - 1}" for a, c in ext]
    rnd.shuffle(items)  # type: ignore[attr-defined]
    ps = PageSet.from_text(",".join(items))
    assert frames_of(ps) == oracle_of_extents(ext)


@settings(max_examples=200)
@given(page_sets(max_frame=SMALL), page_sets(max_frame=SMALL))
def test_set_algebra(a: PageSet, b: PageSet) -> None:
    fa, fb = frames_of(a), frames_of(b)
    for got, want in (
        (a | b, fa | fb),
        (a & b, fa & fb),
        (a - b, fa - fb),
        (b - a, fb - fa),
        (a ^ b, fa ^ fb),
    ):
        check_invariants(got)
        assert frames_of(got) == want
    assert (a == b) == (fa == fb)
    assert (a <= b) == (fa <= fb)
    assert a.isdisjoint(b) == fa.isdisjoint(fb)
    assert (hash(a) == hash(b)) or fa != fb


@settings(max_examples=150)
@given(high_sets, high_sets)
def test_set_algebra_near_2_64(a: PageSet, b: PageSet) -> None:
    fa, fb = frames_of(a), frames_of(b)
    assert frames_of(a | b) == fa | fb
    assert frames_of(a & b) == fa & fb
    assert frames_of(a - b) == fa - fb
    for ps in (a | b, a & b, a - b):
        check_invariants(ps)
        assert PageSet.from_text(ps.to_text()) == ps
        assert PageSet.from_extents(ps.extents()) == ps


@settings(max_examples=150)
@given(page_sets(max_frame=SMALL), st.lists(st.integers(-3, SMALL + 3), max_size=30))
def test_membership_min_max(ps: PageSet, probes: list[int]) -> None:
    fr = frames_of(ps)
    for p in probes:
        assert (p in ps) == (p in fr)
    arr = np.array([p for p in probes if p >= 0], dtype=np.uint64)
    assert ps.contains_frames(arr).tolist() == [int(p) in fr for p in arr.tolist()]
    if fr:
        assert ps.min() == min(fr) and ps.max() == max(fr)


# ---------------------------------------------------------------- bitmaps


def oracle_bitmap_frames(data: bytes, base: int, word_size: int, order: str, unit: int) -> set[int]:
    """PROTOCOL.md §2 literally: bit n is bit n % BITS_PER_LONG of word n / BITS_PER_LONG."""
    wb = word_size // 8
    out: set[int] = set()
    nwords = len(data) // wb
    for w in range(nwords):
        byteorder: Literal["big", "little"] = "big" if order in ("big", "be") else "little"
        word = int.from_bytes(data[w * wb : (w + 1) * wb], byteorder)
        for b in range(word_size):
            if word >> b & 1:
                n = w * word_size + b
                out.update(range(base + n * unit, base + (n + 1) * unit))
    return out


word_params = st.sampled_from(
    [(32, "little"), (32, "big"), (64, "little"), (64, "big"), (32, "be"), (64, "le")]
)


@settings(max_examples=150)
@given(
    st.integers(0, 24).flatmap(lambda n: st.binary(min_size=n * 8, max_size=n * 8)),
    st.integers(0, 1 << 40),
    word_params,
    st.sampled_from([1, 2, 4, 16]),
)
def test_from_bitmap_matches_definition(
    data: bytes, base: int, wp: tuple[int, str], unit: int
) -> None:
    ws, order = wp
    ps = PageSet.from_bitmap(data, base, ws, order, unit)  # type: ignore[arg-type]
    check_invariants(ps)
    assert frames_of(ps) == oracle_bitmap_frames(data, base, ws, order, unit)
    # and back: the window is the whole bitmap
    nbits = len(data) * 8
    assert ps.to_bitmap(base, nbits, ws, order, unit) == data  # type: ignore[arg-type]


@settings(max_examples=150)
@given(page_sets(max_frame=SMALL), st.integers(0, 100), word_params)
def test_to_bitmap_matches_definition(ps: PageSet, slack: int, wp: tuple[int, str]) -> None:
    ws, order = wp
    base = ps.min() if ps else 0
    nbits = (ps.max() - base + 1 if ps else 0) + slack
    data = ps.to_bitmap(base, nbits, ws, order)  # type: ignore[arg-type]
    assert len(data) == -(-nbits // ws) * ws // 8
    assert oracle_bitmap_frames(data, base, ws, order, 1) == frames_of(ps)
    assert PageSet.from_bitmap(data, base, ws, order) == ps  # type: ignore[arg-type]


@settings(max_examples=100)
@given(page_sets(max_frame=SMALL), st.integers(0, SMALL), st.integers(0, 600), word_params)
def test_to_bitmap_clip_is_window(ps: PageSet, base: int, nbits: int, wp: tuple[int, str]) -> None:
    ws, order = wp
    data = ps.to_bitmap(base, nbits, ws, order, clip=True)  # type: ignore[arg-type]
    want = {f for f in frames_of(ps) if base <= f < base + nbits}
    assert oracle_bitmap_frames(data, base, ws, order, 1) == want
    assert ps.window(base, nbits) == PageSet.from_frames(sorted(want))


@settings(max_examples=100)
@given(st.binary(max_size=40), st.integers(0, 400), word_params)
def test_from_bitmap_nbits_limits_bits(data: bytes, nbits: int, wp: tuple[int, str]) -> None:
    ws, order = wp
    wb = ws // 8
    data = data[: len(data) // wb * wb]
    nbits = min(nbits, len(data) * 8)
    ps = PageSet.from_bitmap(data, 7, ws, order, nbits=nbits)  # type: ignore[arg-type]
    want = {f for f in oracle_bitmap_frames(data, 7, ws, order, 1) if f < 7 + nbits}
    assert frames_of(ps) == want


# ---------------------------------------------------------------- aligned blocks


def greedy_blocks(ps: PageSet, max_order: int) -> list[tuple[int, int]]:
    """The obvious decomposition: at each frame take the largest aligned block that fits."""
    out = []
    for first, count in ps:
        p, end = first, first + count
        while p < end:
            k = max_order
            while p % (1 << k) or p + (1 << k) > end:
                k -= 1
            out.append((p, k))
            p += 1 << k
    return out


@settings(max_examples=200)
@given(page_sets(max_frame=1 << 14, max_count=3000), st.integers(0, 14))
def test_aligned_blocks_equal_greedy(ps: PageSet, max_order: int) -> None:
    starts, orders = ps.aligned_blocks(max_order)
    got = list(zip(starts.tolist(), orders.tolist(), strict=True))
    assert got == greedy_blocks(ps, max_order)
    for s, k in got:
        assert s % (1 << k) == 0 and k <= max_order
    assert sum(1 << k for _, k in got) == len(ps)


@settings(max_examples=100)
@given(page_sets(max_frame=(1 << 63) - 1, max_extents=4, max_count=200), st.integers(0, 63))
def test_aligned_blocks_high_frames(ps: PageSet, max_order: int) -> None:
    starts, orders = ps.aligned_blocks(max_order)
    got = list(zip(starts.tolist(), orders.tolist(), strict=True))
    assert got == greedy_blocks(ps, max_order)


@settings(max_examples=150)
@given(
    st.lists(st.integers(0, 300), max_size=200),
    st.sampled_from([0, 5, 1 << 20, (1 << 32) - 400, (1 << 64) - 400]),
)
def test_dense_counting_path_equals_sort_path(frames: list[int], shift: int) -> None:
    """The counting path (long arrays over a bounded span) against the sorting path."""
    import virtio_balloon_proto.pageset as mod

    arr = np.array([f + shift for f in frames], dtype=np.uint64)
    if shift < 1 << 32:
        arr32 = arr.astype(np.uint32)
    saved = mod.DENSE_MIN
    try:
        mod.DENSE_MIN = 0
        dense = PageSet.from_frames_counted(arr)
        dense32 = PageSet.from_frames_counted(arr32) if shift < 1 << 32 else dense
    finally:
        mod.DENSE_MIN = saved
    sorted_ = PageSet.from_frames_counted(arr)
    want = {f + shift for f in frames}
    assert frames_of(dense.pages) == want == frames_of(sorted_.pages)
    assert dense.duplicates == sorted_.duplicates == len(frames) - len(set(frames))
    assert dense.duplicated == sorted_.duplicated
    assert dense32 == dense
    check_invariants(dense.pages)
