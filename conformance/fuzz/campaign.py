"""A fuzz campaign: generate sequences, replay each into the device, judge it with the one
oracle, shrink and keep what fails.

Each sequence is a :class:`~.program.Program`; :meth:`Campaign.judge` turns it into a runner
case (``to_case``) and runs it with :class:`~..runner.Runner` -- the same replay, the same
recorded trace and the same :func:`~..checks.judge` as ``vbproto conform run`` on the
sequence's trace file.

**One root cause, one finding.**  A device bug rarely breaks one clause only: a device that
dies on a bad buffer leaves every later buffer unacknowledged (and a stats buffer it held
before), and each of those clauses would be "found" again in every sequence that reaches it.
So a failing sequence is first cut to its *shortest failing prefix* (a binary search over its
operations, every prefix judged as a sequence of its own): the clauses that prefix breaks were
broken by its last operation, and only they are findings; what the whole sequence breaks
besides is counted under them as consequences, never reported on its own (a second,
independent bug is found first in a sequence that does not hit the first one).  A finding is
shrunk (shrink.py) to a minimal program that still breaks its clause, and deduplicated by
(clause, shape): the shape being what the minimal program contains, read from its bytes
(shape.py), not what the generator meant to draw.

The device is learnt as the campaign goes: a sequence the device calls unsupported at start
narrows the bring-up the generator draws (no big-endian guests, no RAM at 8 TiB, ...); one
unsupported at a step drops that operation kind (QEMU has no host command to start hinting).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from virtio_balloon_proto.codecs import Segment

from ..runner import Runner
from ..verdicts import CaseResult, Verdict
from .gen import ADDR_PFNS, GenOptions, generate
from .program import Avail, ConfigRead, ConfigWrite, Env, Host, Program, to_case
from .shape import covers, op_shape
from .shape import shape as shape_of
from .shrink import Budget, shrink

#: feature -> the device option the runner derives from it (cases._device_options)
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
    #: clause -> in how many of the sequences that hit this finding it broke as well, beyond
    #: the sequence's first failing prefix (consequences, not findings of their own)
    consequences: dict[str, int] = field(default_factory=dict)
    #: the device used no buffer after the failure (a probe inflate went unanswered): every
    #: sequence that kills it is this one finding, whatever buffer killed it
    stops_answering: bool = False
    #: (clause, the shape of the operation that killed it) -> [first sequence, hits,
    #: seconds into the campaign at the first]
    triggers: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def count(self, later: list[Broken]) -> None:
        for b in later:
            self.consequences[b.clause] = self.consequences.get(b.clause, 0) + 1

    def trigger(self, clause: str, prefix: Program, k: int, later: list[Broken],
                seconds: float) -> None:
        """Another sequence that stopped the device (its first failing prefix)."""
        self.hits += 1
        self.count(later)
        t = self.triggers.setdefault((clause, _last_shape(prefix)), [k, 0, seconds])
        t[1] += 1

    def clauses(self) -> set[str]:
        """The finding's clause and, for a device that stops answering, every clause a
        trigger broke."""
        return {self.clause, *(c for c, _ in self.triggers)}

    def first_for(self, clause: str) -> tuple[int, float]:
        """(sequence, seconds) at which the campaign first broke ``clause`` as this finding."""
        if clause == self.clause:
            return self.first_sequence, self.first_seconds
        k, _, sec = min(v for (c, _), v in self.triggers.items() if c == clause)
        return int(k), sec

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
            "consequences": dict(sorted(self.consequences.items())),
            "stops_answering": self.stops_answering,
            "triggers": [{"clause": c, "op": op, "first_sequence": int(v[0]),
                          "hits": int(v[1]), "first_seconds": round(v[2], 3)}
                         for (c, op), v in sorted(self.triggers.items(),
                                                  key=lambda kv: kv[1][0])],
        }


#: the kind narrowed when a device cannot start a second hinting round in one sequence
AGAIN = "host:hint-start:again"
#: the key of the one finding "the device stops answering" (Campaign.stops_answering)
STOPS_ANSWERING: tuple[str, tuple[str, ...]] = ("*device stops answering*", ())


def _last_shape(program: Program) -> str:
    """The shape of the last operation of a first failing prefix: what broke the device."""
    return op_shape(program.ops[-1], program.usable().env) if program.ops else "bring-up"


def probe_inflate(env: Env) -> Avail:
    """A plain inflate of one page of guest RAM (the page at 16 MiB: every generated RAM
    layout has it), as Linux sends it."""
    first = (16 << 20) >> 12
    fmt = ("<" if env.little_endian else ">") + "I"
    data = b"".join(struct.pack(fmt, first + i) for i in range(env.frames_per_page))
    return Avail("inflate", (Segment(ADDR_PFNS, len(data), False, data),), "pfns")


@dataclass(frozen=True)
class Broken:
    """One broken clause of one judged sequence, at the driver event (step) it names."""

    clause: str
    level: str
    message: str
    step: int | None  # None: judged at the end of the sequence


@dataclass
class Stats:
    sequences: int = 0
    steps: int = 0
    seconds: float = 0.0
    unsupported: int = 0
    errors: int = 0  # sequences our side could not run (a trace or judge error: a bug of ours)
    shrink_replays: int = 0
    prefix_replays: int = 0  # replays of prefixes, to find a sequence's first failure
    flaky: int = 0  # findings whose minimal sequence did not break the clause again
    narrowed: list[str] = field(default_factory=list)
    error_messages: list[str] = field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


def _kind(op: Any) -> str:
    """An operation's kind, as the campaign narrows what a device does not support; a host's
    hint stop is two kinds (QEMU can publish DONE but not STOP)."""
    if isinstance(op, Avail):
        return f"avail:{op.role}"
    if isinstance(op, Host):
        if op.kind == "hint-stop":
            return "host:hint-stop:" + ("done" if dict(op.params).get("cmd_id") == 1 else "stop")
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
        #: kinds of operations the device has run in a whole sequence: never narrowed away
        #: (an unsupported step of such a kind is about its data, e.g. a PFN in the QEMU
        #: adapter's ring window, not about the kind)
        self._supported_kinds: set[str] = set()

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
        return {b.clause: (b.level, b.message) for b in self.failures(res)}

    def failures(self, res: CaseResult) -> list[Broken]:
        """Every broken clause of a result, with the step it names."""
        out: list[Broken] = []
        for r in res.results:
            if r.broken:
                c = self.runner.catalog.find(r.clause)
                out.append(Broken(r.clause, c.level if c is not None else "MUST", r.message,
                                  r.step))
        return out

    def first_failing_prefix(self, program: Program, res: CaseResult) -> tuple[
            Program, CaseResult]:
        """The shortest prefix of ``program`` (``res``: its failing result) that breaks a
        clause, and that prefix's result: a binary search, each prefix replayed and judged as
        a sequence of its own (a prefix the device calls unsupported counts as not failing)."""
        lo, hi, best = 0, len(program.ops), res
        while lo < hi:
            mid = (lo + hi) // 2
            r = self.judge(program.with_ops(program.ops[:mid]), "prefix")
            self.stats.prefix_replays += 1
            if r.status is None and self.failures(r):
                hi, best = mid, r
            else:
                lo = mid + 1
        return program.with_ops(program.ops[:hi]), best

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
        if not self.disabled_kinds:
            return p
        ops = list(p.ops)
        if AGAIN in self.disabled_kinds:
            # one hinting round per sequence: the sequence ends at the host's second start
            starts = [i for i, o in enumerate(ops)
                      if isinstance(o, Host) and o.kind == "hint-start"]
            if len(starts) > 1:
                ops = ops[:starts[1]]
        return p.with_ops(tuple(o for o in ops if _kind(o) not in self.disabled_kinds))

    def one(self, k: int) -> None:
        self.one_program(self.program(k), k)

    def one_program(self, program: Program, k: int) -> None:
        """Run one sequence (number ``k``): judge it, and find, shrink and keep what fails."""
        res = self.judge(program, f"seed-{self.seed}-seq-{k}")
        self.stats.sequences += 1
        if res.status is None:
            self._supported_kinds |= {_kind(o) for o in program.ops}
            if sum(isinstance(o, Host) and o.kind == "hint-start" for o in program.ops) > 1:
                self._supported_kinds.add(AGAIN)
        if res.status == Verdict.UNSUPPORTED:
            self.stats.unsupported += 1
            self._learn(program, res)
            return
        if res.status == Verdict.ERROR:
            self.stats.errors += 1
            if len(self.stats.error_messages) < 20:
                self.stats.error_messages.append(f"sequence {k}: {res.reason}")
            return
        broken = self.failures(res)
        if not broken:
            return
        prefix, pres = self.first_failing_prefix(program, res)
        first = self.failures(pres)
        firsts = {b.clause for b in first}
        later = [b for b in broken if b.clause not in firsts]
        dead: bool | None = None  # does the device stop answering after the prefix?
        for b in sorted(first, key=lambda b: b.clause):
            if self._hit(prefix, b.clause, later):
                continue
            if dead is None:
                dead = self.stops_answering(prefix)
            if dead and STOPS_ANSWERING in self.findings:
                self.findings[STOPS_ANSWERING].trigger(b.clause, prefix, k, later,
                                                       time.monotonic() - self._t0)
                continue
            self._found(prefix, b.clause, b.level, b.message, k, later, len(program.ops),
                        dead)

    def stops_answering(self, prefix: Program) -> bool:
        """Does the device still use a plain, valid inflate buffer (one page of RAM) posted
        after ``prefix``?  One replay.  A device that does not (its worker died, it crashed,
        it went to an error state on a valid buffer) has one root cause, whatever the
        buffer that killed it and whichever clauses that breaks."""
        probe = prefix.with_ops((*prefix.ops, probe_inflate(prefix.env)))
        r = self.judge(probe, "probe")
        self.stats.prefix_replays += 1
        if r.status is not None:
            return False  # cannot tell
        traffic = r.traffic or []
        steps = len(to_case(probe).steps)
        if len(traffic) < steps:
            return True  # the replay stopped before the probe: the device failed
        last = traffic[-1]
        return bool(last.get("error")) or not last.get("device")

    def _hit(self, program: Program, clause: str, later: list[Broken]) -> bool:
        """A clause already found whose shape this sequence contains is taken as the same
        finding without shrinking again (shrinking costs hundreds of replays)."""
        have = shape_of(program)
        for f in self.findings.values():
            # a finding at bring-up (no operation) is only the same as another at bring-up:
            # the empty shape is in every sequence (the ppc64 campaign's start failure took
            # every later suite.device.transport as its hit)
            if f.clause == clause and covers(f.shape, have) and (f.shape or not have):
                f.hits += 1
                f.count(later)
                return True
        return False

    def _found(self, program: Program, clause: str, level: str, message: str, k: int,
               later: list[Broken], original_ops: int, dead: bool = False) -> None:
        found_at = time.monotonic() - self._t0
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
        key = STOPS_ANSWERING if dead else (clause, shape_of(small))
        if key in self.findings:
            self.findings[key].hits += 1
            self.findings[key].count(later)
            return
        f = Finding(clause, level, msg, shape_of(small), small, original_ops, k, found_at,
                    shrink_replays=used, stops_answering=dead)
        f.count(later)
        if dead:
            f.triggers[(clause, _last_shape(program))] = [k, 1, found_at]
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
            if kind == "host:hint-stop":
                kind += ":done" if step.params.get("cmd_id") == 1 else ":stop"
            elif kind == "host:hint-start" and any(
                    s.kind == "host" and s.host_kind == "hint-start" and s.index < step.index
                    for s in case.steps):
                kind = AGAIN  # a second round (QEMU: only at a migration's next bitmap sync)
            if kind in self._supported_kinds:
                return  # the device runs this kind: the data of this step was the problem
            self._unsupported_kind[kind] = self._unsupported_kind.get(kind, 0) + 1
            if self._unsupported_kind[kind] >= 3 and kind not in self.disabled_kinds:
                self.disabled_kinds.add(kind)
                self.stats.narrowed.append(f"{kind}: {reason}")
                if kind == "host:hint-start":  # no hinting rounds without the host's start
                    self.options = replace(self.options, hinting=False)
            return
        env, o = program.env, self.options
        if (env.endian == "le" and "endian=le asked" in reason and "big-endian" in reason
                and o.legacy and o.big_endian and not o.big_endian_only):
            # the device is big-endian legacy only (QEMU's legacy device on ppc64 pseries)
            self.options = replace(o, big_endian_only=True)
            self.stats.narrowed.append(f"little-endian guests: {reason}")
            return
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
