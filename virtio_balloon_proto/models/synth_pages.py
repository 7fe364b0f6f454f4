"""Which guest pages a synthesised driver balloons, in the order it sends them (``trace synth``).

:func:`pick_pages` draws, with the session's seeded generator, ``npages`` distinct guest pages
above the kernel and orders them as a buddy allocator hands them out: runs of consecutive
pages at random places, the runs in a random order, each run descending.  The result is a
:class:`PagePick`: the runs (O(runs) memory), from which any stretch of the sequence is made
on demand (:meth:`PagePick.between`), so a 128 GiB guest's 33 M pages are sent buffer by
buffer without ever being held (issue 13).

The draw is numpy's ``Generator.choice(population, npages, replace=False)`` followed by
``Generator.permutation(runs)``: the exact random stream the synthesiser has always used, so
every trace (the conformance corpus, vectors/) keeps its bytes.  For a large population the
choice is recomputed here in bounded memory (:func:`_choice_set`): numpy's own call holds two
int64 arrays of the population (538 MB for a 128 GiB guest); ours holds one int32 array and
draws the same Fisher-Yates indices in chunks (tests/test_synth_pages.py checks both against
numpy and the whole pick against the former one-lexsort pick).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..errors import UsageError

KERNEL_FRAMES = 16 << 8  # keep the first 16 MiB (kernel, our static buffers) out of page sets

#: populations up to this many pages use numpy's choice as is (16 bytes a page, ~64 MB at
#: most, and 3x faster than the chunked recomputation); larger ones use _choice_set
DIRECT_CHOICE_MAX = 1 << 22
#: Fisher-Yates indices drawn per batch (2 MB of int64)
_DRAW = 1 << 18


@dataclass(frozen=True)
class PagePick:
    """``size`` guest pages as runs: run ``k`` (in the order sent) covers the pages
    ``top[k]``, ``top[k] - 1``, ..., ``top[k] - length[k] + 1``; ``ends[k]`` is the position in
    the sequence just after run ``k``.  Values are guest-page numbers; ``fpp`` 4 KiB frames a
    page (a page is named by its first frame, ``page * fpp``)."""

    top: NDArray[np.int64]
    length: NDArray[np.int64]
    ends: NDArray[np.int64]
    fpp: int

    @property
    def size(self) -> int:
        return int(self.ends[-1]) if self.ends.size else 0

    def between(self, p0: int, p1: int) -> NDArray[np.uint64]:
        """The first 4 KiB frame of each page at positions ``p0 <= p < p1`` of the sequence
        (uint64, in the order sent)."""
        p0, p1 = max(0, p0), min(p1, self.size)
        if p1 <= p0:
            return np.empty(0, dtype=np.uint64)
        ka = int(np.searchsorted(self.ends, p0, side="right"))
        kb = int(np.searchsorted(self.ends, p1 - 1, side="right")) + 1
        length = self.length[ka:kb]
        begin = self.ends[ka:kb] - length  # position of each run's first page
        o0 = np.maximum(p0 - begin, 0)
        cnt = np.minimum(p1 - begin, length) - o0
        first = self.top[ka:kb] - o0
        starts = np.cumsum(cnt) - cnt
        out = np.repeat(first + starts, cnt)
        out -= np.arange(p1 - p0, dtype=np.int64)
        if self.fpp != 1:
            out *= self.fpp
        return out.astype(np.uint64, copy=False)

    def frames(self) -> NDArray[np.uint64]:
        """The whole sequence (``size`` values: 8 bytes a page; prefer :meth:`chunks`)."""
        return self.between(0, self.size)

    def chunks(self, per: int, p0: int = 0, p1: int | None = None, *,
               reverse: bool = False) -> Iterator[NDArray[np.uint64]]:
        """Positions ``p0 <= p < p1`` in arrays of ``per`` pages (the last may be shorter);
        ``reverse``: from ``p1 - 1`` down to ``p0`` (chunks cut from the end)."""
        end = self.size if p1 is None else min(p1, self.size)
        if not reverse:
            for a in range(p0, end, per):
                yield self.between(a, min(a + per, end))
            return
        for b in range(end, p0, -per):
            yield self.between(max(p0, b - per), b)[::-1]


def _choice_set(rng: np.random.Generator, pop: int, size: int) -> NDArray[np.int64]:
    """The values ``rng.choice(pop, size, replace=False)`` returns, as the sorted values it
    does NOT return, leaving ``rng`` in the same state -- for numpy's tail-shuffle branch
    (``pop > 10000 and size > pop // 50``) only.

    numpy fills an int64 ``arange(pop)`` and runs Fisher-Yates steps ``i = pop - 1`` down to
    ``max(pop - size, 1)``, each swapping ``i`` with ``j = integers(0, i, endpoint=True)``
    (the same bounded draw, ``random_bounded_uint64``, whether one by one or from an array of
    bounds), then returns the tail ``[pop - size:]``.  Here the array is int32 and the steps
    run in vectorised batches: steps that touch no position an earlier step of the batch
    touched are independent and swap at once; the first dependent one is done alone."""
    d = np.arange(pop, dtype=np.int32 if pop < 1 << 31 else np.int64)
    first = max(pop - size, 1)
    i = pop - 1
    while i >= first:
        n = min(_DRAW, i - first + 1)
        highs = np.arange(i, i - n, -1, dtype=np.int64)
        js = rng.integers(0, highs, endpoint=True, dtype=np.int64)
        s = 0
        while s < n:
            i0 = i - s
            k = min(n - s, max(64, int(2.5 * i0 ** 0.5)))  # ~ the birthday bound of a batch
            j, ii = js[s:s + k], highs[s:s + k]
            # step t's j is a later step's i (j in the batch's i range, not its own i) ...
            hit = (j > i0 - k) & (j != ii)
            c = int((i0 - j[hit]).min()) if hit.any() else k
            # ... or an earlier step's j (the later of two equal j's)
            if c > 1:
                srt = np.argsort(j[:c], kind="stable")
                sv = j[:c][srt]
                dup = np.flatnonzero(sv[1:] == sv[:-1])
                if dup.size:
                    c = min(c, int(srt[dup + 1].min()))
            if c:
                a, b = ii[:c], j[:c]
                tmp = d[b]
                d[b] = d[a]
                d[a] = tmp
            if c < k:
                a1, b1 = int(ii[c]), int(j[c])
                d[a1], d[b1] = d[b1], d[a1]
                c += 1
            s += c
        i -= n
        del highs, js
    rest = np.sort(d[: pop - size].astype(np.int64))
    return rest


def _runs_of_complement(rest: NDArray[np.int64], pop: int) -> tuple[NDArray[np.int64],
                                                                      NDArray[np.int64]]:
    """Runs (start, length) of ``range(pop)`` minus the sorted values ``rest``, ascending."""
    edges = np.concatenate(([-1], rest, [pop]))
    start = edges[:-1] + 1
    length = edges[1:] - start
    keep = length > 0
    return start[keep], length[keep]


def _runs_of_mask(chosen: NDArray[np.int64], pop: int) -> tuple[NDArray[np.int64],
                                                                 NDArray[np.int64]]:
    """Runs (start, length) of the distinct values ``chosen`` (any order) in ``range(pop)``,
    ascending, through a byte mask of the population."""
    mask = np.zeros(pop + 2, dtype=np.int8)
    mask[1:-1][chosen] = 1
    edges = np.diff(mask)
    start = np.flatnonzero(edges == 1)
    return start, np.flatnonzero(edges == -1) - start


def _runs_of_sorted(chosen: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Runs (start, length) of consecutive values of the sorted distinct ``chosen``."""
    cut = np.flatnonzero(np.diff(chosen) != 1) + 1
    bounds = np.concatenate(([0], cut, [chosen.size]))
    return chosen[bounds[:-1]], np.diff(bounds)


def pick_pages(rng: np.random.Generator, count: int, fpp: int, memory: int, *,
               direct_max: int = DIRECT_CHOICE_MAX) -> PagePick:
    """Guest pages covering ``count`` 4 KiB frames of a ``memory``-byte guest with ``fpp``
    frames a page, above the first 16 MiB (module docstring).  Draws from ``rng`` exactly
    what ``choice`` + ``permutation`` draw.  Memory: O(runs), plus 4 bytes a guest page of
    RAM while drawing a population above ``direct_max`` pages.

    Raises :class:`UsageError` (field ``pages``) when the pages do not fit the RAM."""
    ram = memory >> 12
    npages = max(1, count // fpp)
    lo, hi = KERNEL_FRAMES // fpp, ram // fpp
    pop = hi - lo
    if npages > pop:
        raise UsageError(f"{count} frames do not fit {memory >> 20} MiB of RAM", field="pages")
    if pop > direct_max and pop > 10000 and npages > pop // 50:
        start, length = _runs_of_complement(_choice_set(rng, pop, npages), pop)
    else:
        # indices drawn from the population's size, not from a materialised arange: numpy
        # picks the same indices either way (the values do not enter the draw)
        chosen = rng.choice(pop, npages, replace=False)
        if pop <= direct_max:  # a byte a page of the population: 10x cheaper than a sort
            start, length = _runs_of_mask(chosen, pop)
        else:
            chosen.sort()
            start, length = _runs_of_sorted(chosen)
        del chosen
    # the runs in a random order, each descending (a buddy allocator's order)
    order = rng.permutation(start.size)
    length = length[order]
    top = start[order] + (length - 1) + lo
    return PagePick(top, length, np.cumsum(length), fpp)
