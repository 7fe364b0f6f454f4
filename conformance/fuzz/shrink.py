"""Shrinking a failing sequence to a minimal one that still fails the same clause.

Delta debugging (Zeller and Hildebrandt, "Simplifying and Isolating Failure-Inducing Input",
2002: ``ddmin``) over the sequence's operations, then over the bring-up (features the
sequence does not need, the indirect table, extra RAM regions, poison_val) and inside each
remaining buffer (fewer PFNs, stats entries, reported or hinted ranges), then operations
once more.  ``fails(program)`` is the only oracle: it replays the candidate into the device
and says whether the same clause still breaks; the shrinker never judges anything itself.

A budget (replays) bounds the work: shrinking stops where it is and returns the smallest
failing program found so far.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from virtio_balloon_proto.codecs import Segment

from .program import ROLE_FEATURE, Avail, Env, Op, Program

T = TypeVar("T")


class Budget:
    """Replays left for one shrink."""

    def __init__(self, replays: int) -> None:
        self.left = replays

    def spend(self) -> bool:
        self.left -= 1
        return self.left >= 0


def ddmin(items: Sequence[T], fails: Callable[[list[T]], bool], budget: Budget) -> list[T]:
    """A 1-minimal sublist of ``items`` (within the budget) for which ``fails`` holds;
    ``fails(items)`` is assumed."""
    cur = list(items)
    n = 2
    while len(cur) >= 2 and budget.left > 0:
        chunk = -(-len(cur) // n)
        parts = [cur[i:i + chunk] for i in range(0, len(cur), chunk)]
        reduced = False
        for i in range(len(parts)):  # try each complement (removing one part)
            cand = [x for j, p in enumerate(parts) if j != i for x in p]
            if not budget.spend():
                return cur
            if fails(cand):
                cur, n, reduced = cand, max(n - 1, 2), True
                break
        if not reduced:
            if n >= len(cur):
                break
            n = min(len(cur), 2 * n)
    if len(cur) == 1 and budget.spend() and fails([]):
        return []
    return cur


# --------------------------------------------------------------------------- the bring-up
def _env_candidates(p: Program) -> list[Env]:
    env = p.env
    used = {o.role for o in p.ops if isinstance(o, Avail)}
    out: list[Env] = []
    for feat in sorted(env.wanted):
        role = next((r for r, f in ROLE_FEATURE.items() if f == feat), None)
        if role in used:
            continue
        out.append(replace(env, wanted=env.wanted - {feat}, offered=env.offered - {feat},
                           poison_val=None if feat == "PAGE_POISON" else env.poison_val))
    for feat in sorted(env.offered - env.wanted):
        out.append(replace(env, offered=env.offered - {feat}))
    if env.indirect:
        out.append(replace(env, indirect=False))
    if len(env.memory) > 1:
        out.append(replace(env, memory=env.memory[:-1]))
    if env.poison_val:
        out.append(replace(env, poison_val=0))
    return out


# --------------------------------------------------------------------------- inside buffers
def _resplit(template: tuple[Segment, ...], data: bytes) -> tuple[Segment, ...]:
    """``data`` over the readable segments of ``template`` in the same proportions (writable
    segments kept as they are)."""
    readable = [s for s in template if not s.writable]
    total = sum(s.length for s in readable) or 1
    out: list[Segment] = []
    at = 0
    seen = 0
    for s in template:
        if s.writable:
            out.append(s)
            continue
        seen += s.length
        end = len(data) if seen == total else min(len(data), round(len(data) * seen / total))
        if end > at or not any(not x.writable for x in out):
            out.append(Segment(s.addr, end - at, False, data[at:end]))
        at = end
    return tuple(out)


def _unit(op: Avail) -> int:
    """Size of one element of the buffer's array: 4 (PFN), 10 (stats entry), 0 (none)."""
    if op.label.startswith("pfns"):
        return 4
    if op.label.startswith("stats"):
        return 10
    return 0


def _structure_candidates(op: Avail) -> list[Avail]:
    """The same bytes in a plainer layout: without the indirect table, the readable
    descriptors as one, without device-writable descriptors in a device-readable buffer."""
    out: list[Avail] = []
    if op.indirect:
        out.append(replace(op, indirect=False))
    readable = [s for s in op.segments if not s.writable]
    if len(readable) > 1:
        data = b"".join(s.data for s in readable)
        one = Segment(readable[0].addr, len(data), False, data)
        out.append(replace(op, segments=(one, *(s for s in op.segments if s.writable))))
    ranges = op.role == "reporting" or op.label.startswith("hint")
    if not ranges and readable and any(s.writable for s in op.segments):
        out.append(replace(op, segments=tuple(readable)))
    return out


def _payload_candidates(op: Avail) -> list[Avail]:
    out: list[Avail] = _structure_candidates(op)
    unit = _unit(op)
    if unit:
        data = b"".join(s.data for s in op.segments if not s.writable)
        n = len(data) // unit
        tail = data[n * unit:]
        elems = [data[i * unit:(i + 1) * unit] for i in range(n)]
        if n >= 2:
            half = n // 2
            for part in (elems[:half], elems[half:], elems[:1], elems[-1:]):
                out.append(replace(op, segments=_resplit(op.segments,
                                                         b"".join(part) + tail)))
        if len(elems) > 1:  # the elements in ascending order (fewer runs to read)
            srt = sorted(elems)
            if srt != elems:
                out.append(replace(op, segments=_resplit(op.segments, b"".join(srt) + tail)))
    writ = [s for s in op.segments if s.writable]
    if len(writ) >= 2 and not unit:
        half = len(writ) // 2
        for keep in (writ[:half], writ[half:], writ[:1]):
            kept = set(map(id, keep))
            out.append(replace(op, segments=tuple(s for s in op.segments
                                                  if not s.writable or id(s) in kept)))
    for s in writ:  # a range of one page
        if s.length > 4096 and s.addr % 4096 == 0 and s.length % 4096 == 0:
            out.append(replace(op, segments=tuple(
                Segment.into(x.addr, 4096) if x is s else x for x in op.segments)))
            break
    return out


def shrink(program: Program, fails: Callable[[Program], bool], budget: Budget) -> Program:
    """The smallest program found that still ``fails`` (``fails(program)`` is assumed)."""
    best = program

    def try_ops(ops: list[Op]) -> bool:
        return fails(best.with_ops(tuple(ops)))

    best = best.with_ops(tuple(ddmin(list(best.ops), try_ops, budget)))
    # the bring-up
    changed = True
    while changed and budget.left > 0:
        changed = False
        for env in _env_candidates(best):
            cand = replace(best, env=env).usable()
            if not budget.spend():
                break
            if fails(cand):
                best, changed = cand, True
                break
    # inside each buffer, to a fixed point per buffer
    i = 0
    while i < len(best.ops) and budget.left > 0:
        op = best.ops[i]
        progressed = False
        if isinstance(op, Avail):
            for cand_op in _payload_candidates(op):
                if not budget.spend():
                    break
                cand = best.with_ops((*best.ops[:i], cand_op, *best.ops[i + 1:]))
                if fails(cand):
                    best, progressed = cand, True
                    break
        if not progressed:
            i += 1
    if budget.left > 0:
        best = best.with_ops(tuple(ddmin(list(best.ops), try_ops, budget)))
    return best
