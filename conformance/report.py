"""Reports of a conformance run: text summary, JSON (Autobahn index.json-like), JUnit XML, HTML.

Every file is written atomically (temporary file in the same directory, then os.replace), and
the runner rewrites them after each case with ``partial: true`` until the run ends, so an
interrupted run (Ctrl-C, SIGTERM) leaves valid, readable partial reports.

The HTML report is one self-contained file built with the standard library (no template
engine, no external assets): a matrix of clauses x cases, and per case a ``<details>`` block
with the replayed traffic and the per-clause differences (hex dumps).

This module holds the text summary, the JSON report and :class:`ReportWriter`; the HTML report
is in :mod:`.report_html`, the JUnit XML in :mod:`.report_junit`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtio_balloon_proto import __version__
from virtio_balloon_proto.limits import clean_text, dumps_strict

from .catalog import Catalog
from .known_failures import atomic_write_text
from .report_html import write_html
from .report_junit import write_junit
from .verdicts import CaseResult, RunResult

REPORT_FORMAT = "vbproto-conformance-report/1"


# --------------------------------------------------------------------------- text
def text_summary(run: RunResult, *, verbose: bool = False, command_hint: str | None = None) -> str:
    lines: list[str] = []
    for case in run.cases:
        outcome = case.outcome(run.strict)
        if verbose or outcome not in ("pass",) or case.reason:
            lines.append(case.details_text() if outcome != "pass" else case.summary_line())
    counts = run.counts()
    total = len(run.cases)
    state = "INTERRUPTED" if run.partial else ("PASSED" if run.exit_code() == 0 else "FAILED")
    nothing = None if run.partial else run.nothing_tested()
    if nothing and state == "FAILED" and not any(counts[o] for o in ("fail", "error",
                                                                    "unexpected-pass")):
        state = "FAILED: nothing tested"
    if state == "FAILED" and counts["error"] and run.exit_code() == 2:
        # a case that could not be run (its input, or a device that never started) is no
        # verdict on the device
        state = f"INCOMPLETE: {counts['error']} case(s) could not be run"
    lines.append("")
    lines.append(
        f"CONFORMANCE {state}: {total} case(s) against {run.device}: "
        + ", ".join(f"{counts[k]} {k}" for k in counts if counts[k])
    )
    if run.partial and run.planned:
        lines.append(f"  ({total} of {run.planned} planned cases ran)")
    if nothing:
        lines.append(f"  nothing tested: {nothing}")
    profile = run.behaviour_lines()
    if profile:
        lines.append("  behaviour profile (choices the spec leaves to the device):")
        lines.extend(f"    {line}" for line in profile)
    if run.unmatched_known:
        lines.append(
            "  known-failures entries that matched no case: " + "; ".join(run.unmatched_known)
        )
    if command_hint and (counts["fail"] or counts["unexpected-pass"] or counts["expected-failure"]):
        if counts["fail"] or counts["unexpected-pass"]:
            lines.append("  to accept the current failures, run:")
            lines.append(f"    {command_hint}")
    return clean_text("\n".join(lines))  # a device's text may hold controls, lone surrogates


# --------------------------------------------------------------------------- JSON
def to_json(run: RunResult, cat: Catalog | None = None) -> dict[str, Any]:
    """Autobahn-like: an index {case id -> outcome, verdict, duration} plus full case records."""
    index = {
        c.case_id: {
            "outcome": c.outcome(run.strict),
            "verdict": c.verdict().value,
            "profile": c.profile,
            "duration": round(c.duration, 6),
            "failed_clauses": sorted({r.clause for r in c.failures()}),
        }
        for c in run.cases
    }
    out: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "tool": {"name": "vbproto", "version": __version__},
        "device": run.device,
        "corpus": run.corpus,
        "strict": run.strict,
        "partial": run.partial,
        "started": run.started,
        "finished": run.finished,
        "planned": run.planned,
        "counts": run.counts(),
        "exit_code": run.exit_code(),
        "known_failures": run.known_failures,
        "unmatched_known_failures": run.unmatched_known,
        "index": index,
        "behaviour_profile": run.behaviour_profile(),
        "cases": [c.to_json(run.strict) for c in run.cases],
    }
    if cat is not None:
        used = {r.clause for c in run.cases for r in c.results}
        out["clauses"] = {
            cid: {"level": cat.get(cid).level, "side": cat.get(cid).side, "text": cat.get(cid).text}
            for cid in sorted(used)
            if cid in cat
        }
    return out


def write_json(path: str | Path, run: RunResult, cat: Catalog | None = None) -> None:
    """Strict JSON (RFC 8259): no NaN/Infinity (non-finite numbers are written as strings),
    ASCII only, so a device's lone surrogates travel as ``\\udXXX`` escapes."""
    atomic_write_text(path, dumps_strict(to_json(run, cat), indent=1, sort_keys=False) + "\n")


class ReportWriter:
    """Writes every requested report; called after each case and once at the end.

    After a case the reports are rewritten only when ``every`` seconds have passed since the
    last rewrite -- and at least 4x as long as that rewrite took, so rewriting costs at most
    ~1/5 of the run however large the reports grow (issue 13: README's run with three reports
    spent 5/6 of its time rewriting them after each of 69 cases).  The end of the run and an
    interrupt (SIGINT, SIGTERM) always write; a run killed outright leaves the last rewrite,
    complete and valid (files are replaced atomically), at most ``every`` seconds old.
    """

    #: seconds between rewrites after a case (the first case always writes)
    EVERY = 2.0

    def __init__(
        self,
        cat: Catalog | None,
        json_path: str | None = None,
        junit_path: str | None = None,
        html_path: str | None = None,
        *,
        every: float | None = None,
    ) -> None:
        self.cat = cat
        self.json_path = json_path
        self.junit_path = junit_path
        self.html_path = html_path
        self.every = self.EVERY if every is None else every
        self._next = 0.0  # time.monotonic() of the next rewrite after a case
        self.rewrites = 0  # rewrites after a case so far

    def write(self, run: RunResult, *, skip_streams: bool = False) -> None:
        """Write every report; one that fails does not stop the others (the first error is
        raised once all were attempted).  ``skip_streams``: only those that are regular files
        (stdout, a device or a FIFO gets one report, at the end: virtio_balloon_proto.io)."""
        from virtio_balloon_proto.io import is_stream

        first: BaseException | None = None
        writers: tuple[tuple[str | None, Callable[[str], None]], ...] = (
            (self.json_path, lambda p: write_json(p, run, self.cat)),
            (self.junit_path, lambda p: write_junit(p, run)),
            (self.html_path, lambda p: write_html(p, run, self.cat)),
        )
        for path, writer in writers:
            if not path or (skip_streams and is_stream(path)):
                continue
            try:
                writer(path)
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    def paths(self) -> list[str]:
        return [p for p in (self.json_path, self.junit_path, self.html_path) if p]

    def __call__(self, run: RunResult, _case: CaseResult) -> None:
        # after a case, rewrite the files when due (an interrupted run leaves valid partial
        # reports); stdout, a device or a FIFO gets one report, at the end (io.py)
        now = time.monotonic()
        if now < self._next:
            return
        self.write(run, skip_streams=True)
        took = time.monotonic() - now
        self.rewrites += 1
        if self.every > 0:  # every=0: after every case
            self._next = time.monotonic() + max(self.every, 4 * took)
