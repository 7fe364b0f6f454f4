"""The balloon as QEMU sees it, rebuilt as page extents (VIRTIO 1.2 5.5.6.1).

QEMU keeps no set of ballooned pages (it discards RAM and forgets), so
:func:`extents_from_trace` rebuilds it from QEMU's own trace lines (inflate ``handle_output``
PFNs minus deflate ones) and :func:`to_extents` merges sorted PFNs into (first, count) runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .tracelog import TraceLog


def extents_from_trace(log: TraceLog, inflate_q: int, deflate_q: int) -> list[tuple[int, int]]:
    held: set[int] = set()
    for b in log.buffers:
        if b.queue == inflate_q:
            held.update(b.processed)
        elif b.queue == deflate_q:
            held.difference_update(b.processed)
    return to_extents(sorted(held))


def to_extents(sorted_pfns: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted unique PFNs -> merged (first, count) runs, vectorised."""
    if not len(sorted_pfns):
        return []
    a = np.asarray(sorted_pfns, dtype=np.int64)
    breaks = np.nonzero(np.diff(a) != 1)[0] + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [a.size]))
    return [(int(a[s]), int(e - s)) for s, e in zip(starts, ends, strict=True)]
