"""A fuzz campaign: generate sequences, replay each into the device, judge it with the one
oracle, shrink and keep what fails.

Each sequence is a :class:`~.program.Program`; :meth:`Campaign.judge` turns it into a runner
case (``to_case``) and runs it with :class:`~..runner.Runner` -- the same replay, the same
recorded trace and the same :func:`~..checks.judge` as ``vbproto conform run`` on the
sequence's trace file.  A broken clause (MUST, or SHOULD: reported with its level) is a
finding; it is shrunk (shrink.py) to a minimal program that still breaks *that* clause, and
deduplicated by (clause, shape): the set of operation kinds the minimal program has.

The device is learnt as the campaign goes: a sequence the device calls unsupported at start
narrows the bring-up the generator draws (no big-endian guests, no RAM at 8 TiB, ...); one
unsupported at a step drops that operation kind (QEMU has no host command to start hinting).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..runner import Runner
from ..verdicts import CaseResult, Verdict
from .gen import GenOptions, generate
from .program import Avail, ConfigRead, ConfigWrite, Host, Program, to_case
from .shrink import Budget, shrink

#: feature -> the device option the runner derives from it (runner._device_options)
OPTION_OF = {"DEFLATE_ON_OOM": "deflate-on-oom", "FREE_PAGE_HINT": "free-page-hint",
             "PAGE_POISON": "page-poison", "PAGE_REPORTING": "free-page-reporting",
             "MUST_TELL_HOST": "must-tell-host", "STATS_VQ": "stats-vq"}


@dataclass
class Finding:
    """One (clause, shape): the minimal program that breaks the clause, and how often and
    when the campaign hit it."""

    clause: str
    level: str  # MUST | SHOULD
    message: str
    shape: tuple[str, ...]
    program: Program
    original_ops: int
    first_sequence: int
    first_seconds: float
    hits: int = 1
    shrink_replays: int = 0
    path: str = ""  # the written trace (--out)
    replay: str = ""  # the command that replays it

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        return self.clause, self.shape

    def to_json(self) -> dict[str, Any]:
        return {
            "clause": self.clause, "level": self.level, "message": self.message,
            "shape": list(self.shape), "ops": len(self.program.ops),
            "original_ops": self.original_ops, "origin": self.program.origin,
            "env": self.program.env.describe(), "first_sequence": self.first_sequence,
            "first_seconds": round(self.first_seconds, 3), "hits": self.hits,
            "shrink_replays": self.shrink_replays, "trace": self.path or None,
            "replay": self.replay or None,
        }


@dataclass
class Stats:
    sequences: int = 0
    steps: int = 0
    seconds: float = 0.0
    unsupported: int = 0
    errors: int = 0  # sequences our side could not run (a trace or judge error: a bug of ours)
    shrink_replays: int = 0
    flaky: int = 0  # findings whose minimal sequence did not break the clause again
    narrowed: list[str] = field(default_factory=list)
    error_messages: list[str] = field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


def shape_of(program: Program) -> tuple[str, ...]:
    """What a finding looks like: the kinds of operations its minimal program has (sorted,
    without repeats), so the same bug reached by different paths is one finding."""
    return tuple(sorted(set(program.shape())))


def _kind(op: Any) -> str:
    if isinstance(op, Avail):
        return f"avail:{op.role}"
    if isinstance(op, Host):
        return f"host:{op.kind}"
    if isinstance(op, ConfigRead):
        return "config-read"
    assert isinstance(op, ConfigWrite)
    return "config-write"


class Campaign:
    """Fuzz one device.  ``device``: a device spec (``reference``, ``python:...``,
    ``stdio:...``, ``qemu[:OPTS]``) or a DeviceUnderTest."""

    def __init__(self, device: Any, *, seed: int = 0, options: GenOptions | None = None,
                 timeout: float = 5.0, shrink_budget: int = 400,
                 on_finding: Callable[[Finding], None] | None = None) -> None:
        self.device_spec = device if isinstance(device, str) else getattr(device, "name", "")
        self.runner = Runner(device, timeout=timeout)
        self.seed = seed
        self.options = options or GenOptions()
        self.shrink_budget = shrink_budget
        self.on_finding = on_finding
        self.findings: dict[tuple[str, tuple[str, ...]], Finding] = {}
        self.stats = Stats()
        self.disabled_kinds: set[str] = set()
        self._t0 = time.monotonic()
        self._unsupported_kind: dict[str, int] = {}

    def close(self) -> None:
        self.runner.close()

    # --- one program ---------------------------------------------------------------------
    def judge(self, program: Program, case_id: str = "fuzz") -> CaseResult:
        """Replay ``program`` into the device and judge it (``conform run`` on its trace)."""
        case = to_case(program, case_id)
        res = self.runner.run_case(case)
        # the steps really replayed (a sequence the device calls unsupported stops early)
        self.stats.steps += len(res.traffic) if res.traffic else 0
        return res

    def broken(self, res: CaseResult) -> dict[str, tuple[str, str]]:
        """clause -> (level, message) of every broken clause in a result."""
        out: dict[str, tuple[str, str]] = {}
        for r in res.results:
            if r.broken:
                c = self.runner.catalog.find(r.clause)
                out[r.clause] = (c.level if c is not None else "MUST", r.message)
        return out

    # --- the loop ------------------------------------------------------------------------
    def run(self, *, sequences: int | None = None, steps: int | None = None,
            seconds: float | None = None, first: int = 0,
            progress: Callable[[Campaign], None] | None = None,
            stop_when: Callable[[Campaign], bool] | None = None) -> Stats:
        """Run sequences ``first, first + 1, ...`` until a budget is reached."""
        t0 = time.monotonic()
        self._t0 = t0
        k = first
        last_progress = t0
        while True:
            now = time.monotonic()
            self.stats.seconds = now - t0
            if sequences is not None and self.stats.sequences >= sequences:
                break
            if steps is not None and self.stats.steps >= steps:
                break
            if seconds is not None and now - t0 >= seconds:
                break
            if stop_when is not None and stop_when(self):
                break
            self.one(k)
            k += 1
            if progress is not None and time.monotonic() - last_progress >= 1.0:
                last_progress = time.monotonic()
                self.stats.seconds = last_progress - t0
                progress(self)
        self.stats.seconds = time.monotonic() - t0
        return self.stats

    def program(self, k: int) -> Program:
        p = generate(self.options, self.seed, k)
        if self.disabled_kinds:
            p = p.with_ops(tuple(o for o in p.ops if _kind(o) not in self.disabled_kinds))
        return p

    def one(self, k: int) -> None:
        program = self.program(k)
        res = self.judge(program, f"seed-{self.seed}-seq-{k}")
        self.stats.sequences += 1
        if res.status == Verdict.UNSUPPORTED:
            self.stats.unsupported += 1
            self._learn(program, res)
            return
        if res.status == Verdict.ERROR:
            self.stats.errors += 1
            if len(self.stats.error_messages) < 20:
                self.stats.error_messages.append(f"sequence {k}: {res.reason}")
            return
        for clause, (level, message) in sorted(self.broken(res).items()):
            self._found(program, clause, level, message, k)

    def _found(self, program: Program, clause: str, level: str, message: str, k: int) -> None:
        found_at = time.monotonic() - self._t0
        # a clause already found whose shape this sequence contains is taken as the same
        # finding without shrinking again (shrinking costs hundreds of replays)
        have = set(program.shape())
        for f in self.findings.values():
            if f.clause == clause and set(f.shape) <= have:
                f.hits += 1
                return
        budget = Budget(self.shrink_budget)

        def fails(p: Program) -> bool:
            r = self.judge(p, "shrink")
            self.stats.shrink_replays += 1
            return r.status is None and clause in self.broken(r)

        small = shrink(program, fails, budget)
        used = self.shrink_budget - max(budget.left, 0)
        res = self.judge(small, "minimal")
        if res.status is not None or clause not in self.broken(res):
            # the minimal sequence does not break the clause again: not reproducible (a
            # device that did not start in time, a timing-dependent answer)
            self.stats.flaky += 1
            if len(self.stats.error_messages) < 20:
                self.stats.error_messages.append(
                    f"sequence {k}: {clause} did not reproduce ({message[:200]})")
            return
        msg = self.broken(res)[clause][1]
        key = (clause, shape_of(small))
        if key in self.findings:
            self.findings[key].hits += 1
            return
        f = Finding(clause, level, msg, key[1], small, len(program.ops), k, found_at,
                    shrink_replays=used)
        self.findings[key] = f
        if self.on_finding is not None:
            self.on_finding(f)

    def _learn(self, program: Program, res: CaseResult) -> None:
        """Narrow what is generated after the device called a sequence unsupported."""
        reason = res.reason or ""
        if reason.startswith("step "):
            try:
                index = int(reason.split()[1])
            except (IndexError, ValueError):
                return
            case = to_case(program)
            step = next((s for s in case.steps if s.index == index), None)
            if step is None:
                return
            kind = (f"avail:{step.role}" if step.kind == "avail" else
                    f"host:{step.host_kind}" if step.kind == "host" else
                    "config-read" if step.kind == "config_read" else "config-write")
            self._unsupported_kind[kind] = self._unsupported_kind.get(kind, 0) + 1
            if self._unsupported_kind[kind] >= 3 and kind not in self.disabled_kinds:
                self.disabled_kinds.add(kind)
                self.stats.narrowed.append(f"{kind}: {reason}")
                if kind == "host:hint-start":  # no hinting rounds without the host's start
                    self.options = replace(self.options, hinting=False)
            return
        env, o = program.env, self.options
        # a feature the device does not have (by its name or its device option's)
        low = reason.lower()
        missing = sorted(f for f in env.offered if f in reason
                         or OPTION_OF[f] in low)
        if missing:
            self.options = replace(o, features=o.features - set(missing))
            self.stats.narrowed.append(f"{', '.join(missing)}: {reason}")
            return
        for cond, change, what, words in (
                (env.endian == "be", {"big_endian": False}, "big-endian guests", ("endian",)),
                (len(env.memory) > 1, {"high_ram": False}, "RAM above 4 GiB",
                 ("ram", "memory")),
                (env.page_size != 4096, {"large_pages": False}, "64 KiB pages", ("page",)),
                (not env.modern, {"legacy": False}, "legacy drivers", ("legacy", "version_1"))):
            if cond and getattr(o, next(iter(change))) and any(w in low for w in words):
                self.options = replace(o, **change)  # type: ignore[arg-type]
                self.stats.narrowed.append(f"{what}: {reason}")
                return
        # the reason names nothing we know: narrow the first unusual dimension the sequence has
        for cond, change, what in (
                (env.endian == "be", {"big_endian": False}, "big-endian guests"),
                (len(env.memory) > 1, {"high_ram": False}, "RAM above 4 GiB"),
                (env.page_size != 4096, {"large_pages": False}, "64 KiB pages"),
                (not env.modern, {"legacy": False}, "legacy drivers")):
            if cond and getattr(o, next(iter(change))):
                self.options = replace(o, **change)  # type: ignore[arg-type]
                self.stats.narrowed.append(f"{what}: {reason}")
                return
