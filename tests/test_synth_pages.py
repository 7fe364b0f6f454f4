"""The streamed page pick (models/synth_pages.py) is the pick ``trace synth`` always made.

The reference below is the former ``Session.pick_pages`` (one ``choice``, one ``lexsort`` over
every page, 16-40 bytes a page held at once): the corpus and vectors were made with it, so
the streamed pick must give the same sequence, draw the same random numbers and leave the
generator in the same state, whichever way it draws (numpy's ``choice`` or the bounded-memory
recomputation, forced here with ``direct_max=0``) and however the sequence is cut.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from virtio_balloon_proto.errors import UsageError
from virtio_balloon_proto.models.synth_pages import KERNEL_FRAMES, _choice_set, pick_pages


def lexsort_pick(rng: np.random.Generator, count: int, fpp: int,
                 memory: int) -> NDArray[np.uint64]:
    """The pick as synth.py made it before it streamed (1d843c8)."""
    ram = memory >> 12
    npages = max(1, count // fpp)
    lo, hi = KERNEL_FRAMES // fpp, ram // fpp
    assert npages <= hi - lo
    chosen = rng.choice(hi - lo, npages, replace=False)
    chosen += lo
    chosen.sort()
    run = np.zeros(chosen.size, dtype=np.intp)
    run[np.flatnonzero(np.diff(chosen) != 1) + 1] = 1
    np.cumsum(run, out=run)
    order = rng.permutation(int(run[-1]) + 1)
    pos = np.empty_like(order)
    pos[order] = np.arange(order.size)
    idx = np.lexsort((-chosen, pos[run]))
    seq = chosen[idx]
    if fpp != 1:
        seq *= fpp
    return seq.astype(np.uint64, copy=False)


def _same(seed: int, count: int, fpp: int, memory: int, direct_max: int, per: int) -> None:
    old_rng, new_rng = np.random.default_rng(seed), np.random.default_rng(seed)
    old = lexsort_pick(old_rng, count, fpp, memory)
    pick = pick_pages(new_rng, count, fpp, memory, direct_max=direct_max)
    assert pick.size == old.size
    assert np.array_equal(pick.frames(), old)
    assert np.array_equal(np.concatenate(list(pick.chunks(per))), old)
    for n in (old.size // 2, old.size // 4, old.size):  # deflate: frames[::-1][:n]
        back = list(pick.chunks(per, old.size - n, old.size, reverse=True))
        assert all(c.size == per for c in back[:-1])
        assert np.array_equal(np.concatenate(back or [np.empty(0, np.uint64)]), old[::-1][:n])
    assert np.array_equal(pick.between(0, 3), old[:3])
    # the generator is where the old pick left it (a scenario draws again after a pick)
    assert old_rng.integers(1 << 62) == new_rng.integers(1 << 62)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), mib=st.integers(17, 80),
       share=st.floats(0.0, 1.0), fpp=st.sampled_from([1, 4, 16]),
       direct_max=st.sampled_from([0, 1 << 22]), per=st.sampled_from([1, 7, 256, 4096]))
def test_streamed_pick_equals_the_lexsort_pick(seed: int, mib: int, share: float, fpp: int,
                                               direct_max: int, per: int) -> None:
    pop_frames = (mib << 8) - KERNEL_FRAMES
    count = max(1, int(pop_frames * share))
    _same(seed, count, fpp, mib << 20, direct_max, per)


@pytest.mark.parametrize("pop,size", [
    (10001, 201), (10001, 200), (10001, 10001), (20000, 19999), (50000, 1001), (50000, 1000),
    (300000, 299000), (300000, 150000), (300000, 7000),
])
def test_choice_set_draws_what_numpy_choice_draws(pop: int, size: int) -> None:
    """At and around numpy's branch point (tail shuffle when pop > 10000 and size > pop//50;
    the pick only takes _choice_set on that branch): same values, same generator state."""
    for seed in (0, 1, 12345):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        want = np.sort(a.choice(pop, size, replace=False))
        if not (pop > 10000 and size > pop // 50):
            continue
        rest = _choice_set(b, pop, size)
        keep = np.ones(pop, dtype=bool)
        keep[rest] = False
        got = np.flatnonzero(keep)
        assert np.array_equal(got, want)
        assert a.integers(1 << 62) == b.integers(1 << 62)


def test_the_7_gib_bench_pick_is_unchanged_by_the_bounded_path() -> None:
    """The e2e bench's 7 GiB inflate (1,835,008 pages of 8 GiB): numpy's choice and the
    bounded recomputation give the same pick (the 128 GiB pick takes the latter)."""
    a = pick_pages(np.random.default_rng(0), 1_835_008, 1, 8192 << 20)
    b = pick_pages(np.random.default_rng(0), 1_835_008, 1, 8192 << 20, direct_max=0)
    assert np.array_equal(a.top, b.top) and np.array_equal(a.length, b.length)
    assert a.size == 1_835_008


def test_too_many_pages_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="do not fit 64 MiB"):
        pick_pages(np.random.default_rng(0), (64 << 8) - KERNEL_FRAMES + 1, 1, 64 << 20)


def test_a_large_pick_holds_a_fraction_of_what_numpy_choice_held() -> None:
    """numpy's choice holds two int64 arrays of the population (16 bytes a guest page: 538 MB
    for the 128 GiB inflate); the bounded draw one int32 array plus its index batches, and
    the pick itself only its runs, however the sequence is then cut."""
    import tracemalloc

    memory = 18 << 30  # 4.7 M guest pages: above DIRECT_CHOICE_MAX
    pop = (memory >> 12) - KERNEL_FRAMES
    tracemalloc.start()
    try:
        pick = pick_pages(np.random.default_rng(1), pop - 40_000, 1, memory)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        total = sum(int(c.size) for c in pick.chunks(65_536))
        _, chunk_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == pop - 40_000
    assert peak < 10 * pop, peak
    assert chunk_peak < 8 << 20, chunk_peak


@pytest.mark.parametrize("scenario,page_size", [
    ("deflate", 4096), ("must-tell-host", 4096), ("deflate-on-oom", 65536), ("deflate", 16384)])
def test_batches_do_not_change_the_traffic(monkeypatch: pytest.MonkeyPatch, scenario: str,
                                           page_size: int) -> None:
    """Streamed inflate/deflate batches are whole chains: the events are the same whatever
    the batch size (1 chain, 3 chains, the default 256)."""
    from virtio_balloon_proto.models import synth_scenarios
    from virtio_balloon_proto.models.synth import SynthOptions, synthesize

    opts = SynthOptions("spec", scenario, page_size=page_size, pages=5000, memory=64 << 20)
    want = synthesize(opts)
    for per in (1, 3):
        monkeypatch.setattr(synth_scenarios, "CHAINS_PER_BATCH", per)
        assert synthesize(opts) == want
