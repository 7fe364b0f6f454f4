"""QEMU's balloon as a change per observation, from its trace log (issue 13).

QEMU keeps no set of ballooned pages, so the balloon is rebuilt from its own trace lines:
the PFNs its inflate handler processed minus those its deflate handler processed, folded in
the order QEMU popped the buffers (:func:`~.extents.extents_from_trace`, which folds the
whole log: O(buffers so far) at every observation, quadratic over a replay).

:class:`BalloonLog` folds each buffer once, when it is settled (its queue is known and QEMU
logs no more PFNs for it: a later buffer was popped or it was used), and answers what changed
since the previous answer.  Buffers not settled yet are folded tentatively on top for this
answer only, so every answer equals the whole fold of the log at that moment
(tests/test_qemu_balloonlog.py checks it against ``extents_from_trace`` on random logs).
"""

from __future__ import annotations

from .tracelog import TraceLog


class BalloonLog:
    """The balloon folded from a :class:`~.tracelog.TraceLog`, answered as changes."""

    def __init__(self) -> None:
        #: the fold of ``log.buffers[:cursor]`` (every one settled)
        self.held: set[int] = set()
        self.cursor = 0
        #: the tentative fold the previous answer reported on top of ``held`` (frame -> in)
        self._overlay: dict[int, bool] = {}

    def changes(self, log: TraceLog, inflate_q: int, deflate_q: int
                ) -> tuple[list[int], list[int]]:
        """(frames added, frames removed), each sorted, since the previous call (the first
        call: since an empty balloon).  Cost: the PFNs of the buffers settled since the
        previous call plus those of the buffers not settled yet."""
        held, bufs = self.held, log.buffers
        #: frames ``held`` changed in this call, with whether each was held before it
        before: dict[int, bool] = {}
        i = self.cursor
        while i < len(bufs):
            b = bufs[i]
            if b.queue is None or b is log._current:
                break  # not settled: more PFNs may come, or its queue is not known yet
            if b.queue in (inflate_q, deflate_q):
                adding = b.queue == inflate_q
                for p in b.processed:
                    if p not in before:
                        before[p] = p in held
                    if adding:
                        held.add(p)
                    else:
                        held.discard(p)
            i += 1
        self.cursor = i
        overlay: dict[int, bool] = {}
        for b in bufs[i:]:  # tentative: the whole fold skips a buffer of unknown queue too
            if b.queue in (inflate_q, deflate_q):
                adding = b.queue == inflate_q
                for p in b.processed:
                    overlay[p] = adding
        prev = self._overlay
        added: list[int] = []
        removed: list[int] = []
        for f in before.keys() | overlay.keys() | prev.keys():
            if f in prev:
                was = prev[f]
            elif f in before:
                was = before[f]
            else:
                was = f in held
            now = overlay[f] if f in overlay else f in held
            if now and not was:
                added.append(f)
            elif was and not now:
                removed.append(f)
        self._overlay = overlay
        added.sort()
        removed.sort()
        return added, removed
