"""Verdicts: what one clause did in one case, what a case did, what a run did.

Verdicts follow the anchors (conformance-anchors.md "Seven things", 2): more than pass/fail,
mapped onto the clause level.

* ``pass``        -- the clause was checked in the case and held.
* ``fail``        -- a MUST clause was broken (or a SHOULD clause under ``--strict``).
* ``non-strict``  -- a SHOULD clause was broken (Autobahn NON-STRICT, h2spec without --strict).
* ``unsupported`` -- the device does not implement the profile/feature the case needs
  (adapter raised Unsupported, stdio exit 127, or the device did not offer a needed feature).
* ``skipped``     -- the case was not run (the reference cannot run it, or it was filtered).
* ``error``       -- a runner-side problem (unreadable trace, bug in a check): never the
  device's fault, never counted as a device failure.

A broken MAY clause is not a failure: it is recorded as ``pass`` with a note (informational).

Outcomes of a case combine the verdicts with the known-failures list (protobuf's failure list):
``pass``, ``non-strict``, ``fail``, ``expected-failure``, ``unexpected-pass``, ``unsupported``,
``skipped``, ``error``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NON_STRICT = "non-strict"
    UNSUPPORTED = "unsupported"
    SKIPPED = "skipped"
    ERROR = "error"


#: outcomes that make a run fail (exit status 1)
FAILING_OUTCOMES = frozenset({"fail", "unexpected-pass"})
OUTCOMES = (
    "pass",
    "non-strict",
    "fail",
    "expected-failure",
    "unexpected-pass",
    "unsupported",
    "skipped",
    "error",
)


def verdict_for_level(level: str, strict: bool = False) -> Verdict:
    """The verdict of a *broken* clause of this level."""
    if level == "MUST":
        return Verdict.FAIL
    if level == "SHOULD":
        return Verdict.FAIL if strict else Verdict.NON_STRICT
    return Verdict.PASS  # MAY: informational only


@dataclass
class ClauseResult:
    """One clause in one case."""

    clause: str
    verdict: Verdict
    message: str = ""
    #: index of the trace event (step) where the difference appeared; None for end-of-case
    step: int | None = None
    expected: Any = None  # what the reference did (JSON-able; bytes as hex dumps)
    received: Any = None  # what the device under test did
    #: set when a known-failures entry covers this result (its reason)
    known: str | None = None

    @property
    def broken(self) -> bool:
        return self.verdict in (Verdict.FAIL, Verdict.NON_STRICT)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"clause": self.clause, "verdict": self.verdict.value}
        if self.message:
            out["message"] = self.message
        if self.step is not None:
            out["step"] = self.step
        if self.expected is not None:
            out["expected"] = self.expected
        if self.received is not None:
            out["received"] = self.received
        if self.known is not None:
            out["known_failure"] = self.known
        return out


@dataclass
class CaseResult:
    case_id: str
    profile: str
    source: str  # trace path (or "<memory>")
    results: list[ClauseResult] = field(default_factory=list)
    #: case-level status when no clause was evaluated (unsupported, skipped, error)
    status: Verdict | None = None
    reason: str = ""
    #: with status UNSUPPORTED: whose limit ("device", "adapter", "" unsaid; Unsupported.by)
    unsupported_by: str = ""
    duration: float = 0.0
    #: the replayed traffic, for reports: one dict per step (JSON-able, bytes as hex)
    traffic: list[dict[str, Any]] = field(default_factory=list)
    #: known-failures entries that matched this case but whose clause passed
    unexpected_passes: list[str] = field(default_factory=list)
    #: the device's behaviour profile in this case: choice -> value(s) it showed, where the
    #: spec leaves the choice to the device (conformance/checks/)
    behaviour: dict[str, list[str]] = field(default_factory=dict)
    #: what the judgement could not judge and why (chains in flight, bytes not captured)
    notes: list[str] = field(default_factory=list)

    # --- verdicts --------------------------------------------------------------------------
    def verdict(self) -> Verdict:
        """Worst verdict, ignoring known failures: error > unsupported > skipped > fail >
        non-strict > pass."""
        if self.status is not None:
            return self.status
        vs = {r.verdict for r in self.results}
        for v in (Verdict.ERROR, Verdict.FAIL, Verdict.NON_STRICT):
            if v in vs:
                return v
        return Verdict.PASS

    def outcome(self, strict: bool = False) -> str:
        """The case's outcome once known failures are taken into account."""
        if self.status is not None:
            return self.status.value
        unknown_broken = [r for r in self.results if r.broken and r.known is None]
        if any(r.verdict == Verdict.ERROR for r in self.results):
            return "error"
        if any(r.verdict == Verdict.FAIL for r in unknown_broken):
            return "fail"
        if self.unexpected_passes:
            return "unexpected-pass"
        if any(r.known is not None for r in self.results):
            return "expected-failure"
        if unknown_broken:  # only non-strict ones remain
            return "non-strict"
        return "pass"

    def failures(self) -> list[ClauseResult]:
        return [r for r in self.results if r.broken or r.verdict == Verdict.ERROR]

    def summary_line(self) -> str:
        broken = self.failures()
        if not broken:
            return f"{self.case_id}: {self.outcome()}" + (
                f" ({self.reason})" if self.reason else ""
            )
        clauses = ", ".join(sorted({r.clause for r in broken}))
        return f"{self.case_id}: {self.outcome()} [{clauses}]"

    def details_text(self) -> str:
        lines = [self.summary_line()]
        if self.reason and self.failures():  # without failures the summary line has it
            lines.append(f"  reason: {self.reason}")
        for r in self.failures():
            at = f" (step {r.step})" if r.step is not None else ""
            known = f" [known failure: {r.known}]" if r.known else ""
            lines.append(f"  {r.verdict.value:10} {r.clause}{at}: {r.message}{known}")
            if r.expected is not None:
                lines.append(f"      expected: {_short(r.expected)}")
            if r.received is not None:
                lines.append(f"      received: {_short(r.received)}")
        for entry in self.unexpected_passes:
            lines.append(f"  unexpected pass of known failure {entry}")
        if self.behaviour:
            lines.append("  behaviour: " + "; ".join(
                f"{k} = {', '.join(v)}" for k, v in self.behaviour.items()))
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)

    def to_json(self, strict: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.case_id,
            "profile": self.profile,
            "source": self.source,
            "verdict": self.verdict().value,
            "outcome": self.outcome(strict),
            "duration": round(self.duration, 6),
            "clauses": [r.to_json() for r in self.results],
            "traffic": self.traffic,
        }
        if self.reason:
            out["reason"] = self.reason
        if self.unsupported_by:
            out["unsupported_by"] = self.unsupported_by
        if self.unexpected_passes:
            out["unexpected_passes"] = list(self.unexpected_passes)
        if self.behaviour:
            out["behaviour"] = {k: list(v) for k, v in self.behaviour.items()}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PRINTABLE = bytes(b if 32 <= b < 127 else 0x2E for b in range(256))


def hexdump(data: bytes, limit: int = 4096) -> str:
    """Classic 16-bytes-a-line hex dump (offset, hex, ASCII); long buffers are cut at
    ``limit`` bytes with a note, so a report never balloons."""
    shown = bytes(data[:limit])
    text = shown.translate(_PRINTABLE).decode("ascii")
    # bytes.hex(" ") and translate run in C: a 7 GiB trace's traffic log is 7,168 of these
    lines = [f"{off:08x}  {shown[off:off + 16].hex(' '):<47}  |{text[off:off + 16]}|"
             for off in range(0, len(shown), 16)]
    if len(data) > limit:
        lines.append(f"... {len(data) - limit} more bytes")
    return "\n".join(lines)


@dataclass
class RunResult:
    """All cases of one run, plus what the reports need to say about the run."""

    device: str
    corpus: str
    strict: bool = False
    cases: list[CaseResult] = field(default_factory=list)
    partial: bool = True
    started: float = 0.0
    finished: float | None = None
    known_failures: str | None = None
    #: known-failures entries that matched no case of the run (protobuf's unmatched.txt)
    unmatched_known: list[str] = field(default_factory=list)
    #: total number of cases the run intends to execute
    planned: int = 0
    #: the status the process exits with once decided (130: interrupted); None: from verdicts
    exit_status: int | None = None

    def behaviour_profile(self) -> dict[str, dict[str, list[str]]]:
        """The device's behaviour profile over the run: choice -> value -> case ids."""
        out: dict[str, dict[str, list[str]]] = {}
        for c in self.cases:
            for key, values in c.behaviour.items():
                for v in values:
                    out.setdefault(key, {}).setdefault(v, []).append(c.case_id)
        return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}

    def behaviour_lines(self) -> list[str]:
        """The behaviour profile as text lines ("choice: value (n cases)")."""
        return [f"{k}: " + "; ".join(f"{v} ({len(ids)} case{'s' if len(ids) != 1 else ''})"
                                     for v, ids in vals.items())
                for k, vals in self.behaviour_profile().items()]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(OUTCOMES, 0)
        for c in self.cases:
            out[c.outcome(self.strict)] += 1
        return out

    def judged(self) -> int:
        """Cases in which at least one clause was judged (not unsupported, skipped, error)."""
        return sum(1 for c in self.cases if c.status is None and c.results)

    def nothing_tested(self) -> str | None:
        """Why the run is no evidence at all (no case judged), or None when some case was."""
        if self.judged():
            return None
        if not self.cases:
            return "no case matched" if not self.planned else "no case ran"
        unsupported = sorted({c.reason for c in self.cases
                              if c.status == Verdict.UNSUPPORTED and c.reason})
        if unsupported and all(c.status == Verdict.UNSUPPORTED for c in self.cases):
            return ("every case is unsupported by the device; it lacks: "
                    + "; ".join(unsupported[:12])
                    + (f" (+{len(unsupported) - 12} more)" if len(unsupported) > 12 else ""))
        counts = {k: v for k, v in self.counts().items() if v}
        return "no case judged any clause (" + ", ".join(f"{v} {k}" for k, v in
                                                        counts.items()) + ")"

    def exit_code(self) -> int:
        """0: at least one case judged and none failed (known failures allowed); 1: failures,
        unexpected passes, or nothing tested; 2: a case could not be run because its input is
        bad (runner-side error); ``exit_status`` when the process decided otherwise (130)."""
        if self.exit_status is not None:
            return self.exit_status
        counts = self.counts()
        if counts["error"]:
            return 2
        if any(counts[o] for o in FAILING_OUTCOMES):
            return 1
        if self.nothing_tested():
            return 1
        return 0
