"""The HTML report of a conformance run, and the page parts the matrix report shares.

One self-contained file built with the standard library (no template engine, no external
assets): a matrix of clauses x cases, and per case a ``<details>`` block with the replayed
traffic and the per-clause differences (hex dumps), each bounded (``HTML_*``: the JSON report
keeps everything).  :func:`esc`, :func:`page_start` and :func:`legend_html` are shared with
:mod:`.matrix_report`.
"""

from __future__ import annotations

import html
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from virtio_balloon_proto import __version__
from virtio_balloon_proto.limits import clean_text

from .catalog import Catalog
from .known_failures import atomic_write_text
from .report_junit import _fmt
from .verdicts import CaseResult, RunResult, Verdict

#: the HTML shows at most this many bytes of one segment's hex dump ...
HTML_HEXDUMP_BYTES = 64
#: ... and at most this many characters of one case's traffic (steps a failure names are always
#: shown); the JSON report keeps the whole traffic
HTML_TRAFFIC_CHARS = 24_000
#: ... and at most this many characters of a failure's expected/received value
HTML_VALUE_CHARS = 2_000
#: outcomes whose case block is open when the page loads
_OPEN = frozenset({"fail", "error", "unexpected-pass"})

_CSS = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;overflow-wrap:anywhere}
h1{font-size:1.4em}h2{margin-top:1.2em}h3{margin:.8em 0 .3em;font-size:1.05em}
table{border-collapse:separate;border-spacing:0}
td,th{border:1px solid #ccc;border-width:0 1px 1px 0;padding:2px 5px;text-align:center;
background:#fff}
tr:first-child>*{border-top-width:1px}tr>:first-child{border-left-width:1px}
.matrix{max-width:100%;max-height:85vh;overflow:auto;border:1px solid #ddd;margin-bottom:.6em}
.matrix th{position:sticky;top:0;z-index:2;background:#fafafa}
.matrix th.clause,.matrix th.corner{position:sticky;left:0;z-index:1;text-align:left;
font-weight:normal;font-family:monospace;white-space:nowrap;background:#fafafa}
.matrix th.corner{z-index:3;vertical-align:bottom;font-family:inherit}
.matrix th.case{writing-mode:vertical-rl;transform:rotate(180deg);font-family:monospace;
font-weight:normal;white-space:nowrap;padding:4px 2px;min-width:1.6em}
.matrix td{min-width:1.6em;padding:1px 2px}
.pass{background:#c8f0c8}.fail{background:#f6b3b3}.non-strict{background:#fbe3a6}
.unsupported{background:#d8d8f0}.skipped{background:#eee}.error{background:#e0a0e0}
.expected-failure{background:#f4d0b0}.unexpected-pass{background:#ff7070}
.matrix th.case.pass,.matrix td.pass{background:#c8f0c8}
.matrix th.case.fail,.matrix td.fail{background:#f6b3b3}
.matrix th.case.unsupported{background:#d8d8f0}.matrix th.case.error{background:#e0a0e0}
details{margin:.4em 0;border:1px solid #ddd;padding:.3em .6em}
summary{cursor:pointer;font-family:monospace}
pre{background:#f7f7f7;padding:.4em;overflow:auto;max-height:30em;font-size:12px;margin:.3em 0;
white-space:pre-wrap;overflow-wrap:anywhere}pre.named{border-left:4px solid #d33}
table.failures{width:100%;table-layout:fixed}table.failures td{text-align:left;vertical-align:top}
table.failures col.c{width:22%}table.failures col.v{width:7%}table.failures col.s{width:5%}
.banner{padding:.5em;background:#fbe3a6;border:1px solid #e0c070}
.legend span{padding:1px 6px;margin-right:4px}.omitted{color:#666;font-style:italic}
"""

_CELL = {
    Verdict.PASS: ("pass", "\u2713"),
    Verdict.FAIL: ("fail", "\u2717"),
    Verdict.NON_STRICT: ("non-strict", "!"),
    Verdict.ERROR: ("error", "E"),
}


def esc(s: Any) -> str:
    """``s`` (or the JSON of a non-string) escaped for HTML text and quoted attributes."""
    return html.escape(s if isinstance(s, str) else json.dumps(s, default=str, indent=1))


_e = esc


def page_start(title: str, extra_css: str = "") -> str:
    """The opening of a self-contained report page up to ``<body>``: the shared style sheet
    (outcome colours, the scrolling ``.matrix`` box with sticky heads) plus ``extra_css``.
    This report and the results matrix (matrix_report.py) both start with it."""
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{_CSS}{extra_css}</style></head><body>")


def legend_html(counts: dict[str, int]) -> str:
    """Outcome counts as coloured labels (``pass: 18 fail: 0 ...``)."""
    return ("<p class='legend'>"
            + " ".join(f"<span class='{esc(k)}'>{esc(k)}: {v}</span>" for k, v in counts.items())
            + "</p>")


def _size(n: int) -> str:
    if n < 10_000:
        return f"{n} bytes"
    return f"{n / 1000:.0f} kB" if n < 10**6 else f"{n / 1e6:.1f} MB"


def _clip(value: Any) -> str:
    """A failure's expected/received value for the page, cut to HTML_VALUE_CHARS."""
    if value is None:
        return ""
    text = _fmt(value)
    if len(text) <= HTML_VALUE_CHARS:
        return _e(text)
    return _e(text[:HTML_VALUE_CHARS]) + (
        f"<span class='omitted'>\u2026 {len(text) - HTML_VALUE_CHARS} more character(s), "
        "whole in the JSON report</span>"
    )


def _short(case_id: str, profile: str, limit: int = 26) -> str:
    """A matrix column label: the case id without its profile directory, at most ``limit``."""
    label = case_id.removeprefix(f"{profile}/")
    return label if len(label) <= limit else label[: limit - 1] + "\u2026"


def _hexdump_html(dump: str, length: int) -> str:
    """The first HTML_HEXDUMP_BYTES bytes of a hex dump (16 bytes a line), with what is left."""
    lines = dump.splitlines()
    keep = HTML_HEXDUMP_BYTES // 16
    if len(lines) <= keep:
        return _e(dump)
    more = max(0, length - HTML_HEXDUMP_BYTES)
    return _e("\n".join(lines[:keep])) + (
        f"\n<span class='omitted'>\u2026 {more} more byte(s)</span>" if more else ""
    )


def _step_html(step: dict[str, Any]) -> str:
    """One replayed step, compact: what the driver did, then what each device used."""
    head = f"step {step.get('step')}  {step.get('event', '')}"
    for key in ("role", "kind"):
        if key in step:
            head += f" {step[key]}"
    if "head" in step:
        head += f" head {step['head']}"
    if "offset" in step:
        head += f" offset {step['offset']} data {step.get('data', '')}"
    if step.get("params"):
        head += f" {json.dumps(step['params'], default=str)}"
    out = [_e(head)]
    for seg in step.get("segments", []):
        line = (f"  segment {seg.get('addr')} len {seg.get('len')} "
                f"{'writable' if seg.get('writable') else 'out'}")
        out.append(_e(line))
        if "hexdump" in seg:
            dump = _hexdump_html(str(seg["hexdump"]), int(seg.get("len") or 0))
            out.append("\n".join("    " + x for x in dump.split("\n")))
    for key in ("reference", "device"):
        if key in step:
            out.append(_e(f"  {key + ' used:':<16}{json.dumps(step[key], default=str)}"))
    if "error" in step:
        out.append(_e(f"  error: {step['error']}"))
    known = {"step", "event", "role", "kind", "head", "offset", "data", "params", "segments",
             "reference", "device", "error"}
    for key, value in step.items():
        if key not in known:
            out.append(_e(f"  {key}: {json.dumps(value, default=str)}"))
    return "<pre>" + "\n".join(out) + "</pre>"


def _traffic_html(c: CaseResult) -> str:
    """The case's traffic, at most HTML_TRAFFIC_CHARS of it; the steps a failure names are
    always shown, what is left out is counted (steps, and bytes of the JSON report)."""
    whole = len(json.dumps(c.traffic, default=str))
    named = {r.step for r in c.failures() if r.step is not None}
    blocks: list[str] = []
    used = shown = gap = 0
    cut_dumps = False
    for step in c.traffic:
        block = _step_html(step)
        if used + len(block) > HTML_TRAFFIC_CHARS and step.get("step") not in named:
            gap += 1
            continue
        if gap:
            blocks.append(f"<p class='omitted'>\u2026 {gap} step(s) not shown</p>")
            gap = 0
        if step.get("step") in named:
            block = "<pre class='named'>" + block.removeprefix("<pre>")
        blocks.append(block)
        used += len(block)
        shown += 1
        cut_dumps |= any(int(seg.get("len") or 0) > HTML_HEXDUMP_BYTES and "hexdump" in seg
                         for seg in step.get("segments", []))
    if gap:
        blocks.append(f"<p class='omitted'>\u2026 {gap} step(s) not shown</p>")
    note = f"traffic: {len(c.traffic)} step(s), {_size(whole)} in the JSON report"
    if shown < len(c.traffic) or cut_dumps:
        note += (f"; shown here: {shown} step(s), hex dumps cut to {HTML_HEXDUMP_BYTES} bytes "
                 "(the JSON report, --report-json, keeps it whole)")
    return f"<details><summary>{_e(note)}</summary>{''.join(blocks)}</details>"


def _matrix_html(run: RunResult, cases: Sequence[CaseResult], cat: Catalog | None) -> str:
    """One clauses x cases table per profile, in a box that scrolls (the page does not);
    the header row and the clause column stay in view (sticky)."""
    groups: dict[str, list[CaseResult]] = defaultdict(list)
    for c in cases:
        groups[c.profile].append(c)
    parts = []
    for profile in sorted(groups):
        group = groups[profile]
        clauses = sorted({r.clause for c in group for r in c.results})
        outcomes: dict[str, int] = defaultdict(int)
        for c in group:
            outcomes[c.outcome(run.strict)] += 1
        parts.append(
            f"<h3 id='profile-{_e(profile)}'>Profile <code>{_e(profile)}</code>: "
            f"{len(group)} case(s), "
            + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items()))
            + "</h3>"
        )
        if not clauses:
            parts.append("<p>No clause was judged in these cases.</p>")
            continue
        for lo in range(0, len(group), MATRIX_COLUMNS):
            parts.append(_matrix_table(run, group, lo, clauses, cat, profile))
    return "".join(parts)


#: case columns of one matrix table at most: a profile with more cases gets several tables
#: (same rows), so that none is wider than a 1400 px window (38 spec cases plus the fuzz and
#: real ones made 1407 px: tests/test_report_html.py measures it in headless Chromium)
MATRIX_COLUMNS = 32


def _matrix_table(run: RunResult, group: Sequence[CaseResult], lo: int, clauses: list[str],
                  cat: Catalog | None, profile: str) -> str:
    """The clauses x cases table of ``group[lo:lo + MATRIX_COLUMNS]``."""
    parts = []
    part = group[lo:lo + MATRIX_COLUMNS]
    if len(group) > MATRIX_COLUMNS:
        parts.append(f"<p>Cases {lo + 1}-{lo + len(part)} of {len(group)}:</p>")
    row = ["<div class='matrix'><table><thead><tr><th class='corner'>clause \\ case</th>"]
    for c in part:
        row.append(
            f"<th class='case {c.outcome(run.strict)}' title='{_e(c.case_id)}: "
            f"{c.outcome(run.strict)}'><a href='#case-{_e(c.case_id)}'>"
            f"{_e(_short(c.case_id, profile))}</a></th>"
        )
    row.append("</tr></thead><tbody>")
    parts.append("".join(row))
    for cid in clauses:
        title = ""
        if cat is not None and cid in cat:
            cl = cat.get(cid)
            title = f"{cl.level} ({cl.side}) {cl.text} [{cl.ref}]"
        cells = [f"<tr><th class='clause' title='{_e(title)}'>{_e(cid)}</th>"]
        for c in part:
            r = next((x for x in c.results if x.clause == cid), None)
            if r is None:
                cells.append("<td></td>")
                continue
            cls, sym = _CELL.get(r.verdict, ("skipped", "-"))
            if r.known is not None:
                cls = "expected-failure"
            tip = f"{c.case_id}: {r.message or r.verdict.value}"
            cells.append(f"<td class='{cls}' title='{_e(tip)}'>{sym}</td>")
        cells.append("</tr>")
        parts.append("".join(cells))
    parts.append("</tbody></table></div>")
    return "".join(parts)


def to_html(run: RunResult, cat: Catalog | None = None) -> str:
    """The report page: per profile a clauses x cases matrix that fits a 1400 px window,
    then one block per case (failing cases open), traffic cut to HTML_TRAFFIC_CHARS."""
    counts = run.counts()
    cases: Sequence[CaseResult] = run.cases
    parts = [
        page_start(f"vbproto conformance: {run.device}"),
        "<h1>virtio-balloon conformance report</h1>"
        f"<p>Device <code>{_e(run.device)}</code>, corpus "
        f"<code>{_e(run.corpus)}</code>, vbproto {__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(run.started or time.time()))}"
        f"{', strict' if run.strict else ''}.</p>",
    ]
    if run.partial:
        parts.append(
            f"<p class='banner'>Partial report: the run was interrupted or is still going "
            f"({len(cases)} of {run.planned} cases).</p>"
        )
    parts.append(legend_html(counts))
    profile = run.behaviour_lines()
    if profile:
        parts.append("<h2>Behaviour profile</h2><p>Choices the spec leaves to the device "
                     "(allowed either way):</p><ul>"
                     + "".join(f"<li>{_e(line)}</li>" for line in profile) + "</ul>")
    parts.append("<h2>Clauses &times; cases</h2>")
    parts.append(_matrix_html(run, cases, cat))
    # per case
    parts.append("<h2>Cases</h2>")
    for c in cases:
        outcome = c.outcome(run.strict)
        parts.append(
            f"<details id='case-{_e(c.case_id)}'{' open' if outcome in _OPEN else ''}>"
            f"<summary><span class='{outcome}'>{outcome}</span> "
            f"{_e(c.case_id)} ({_e(c.profile)}, {c.duration * 1000:.1f} ms)</summary>"
        )
        parts.append(
            f"<p>Trace <code>{_e(c.source)}</code>{': ' + _e(c.reason) if c.reason else ''}</p>"
        )
        broken = c.failures()
        if broken:
            parts.append(
                "<table class='failures'><colgroup><col class='c'><col class='v'><col class='s'>"
                "<col><col><col></colgroup><tr><th>clause</th><th>verdict</th><th>step</th>"
                "<th>message</th><th>expected</th><th>received</th></tr>"
            )
            for r in broken:
                parts.append(
                    f"<tr><td>{_e(r.clause)}</td><td class='{r.verdict.value}'>{r.verdict.value}"
                    f"{' (known)' if r.known else ''}</td>"
                    f"<td>{'' if r.step is None else r.step}</td>"
                    f"<td>{_e(r.message)}</td>"
                    f"<td><pre>{_clip(r.expected)}</pre></td>"
                    f"<td><pre>{_clip(r.received)}</pre></td></tr>"
                )
            parts.append("</table>")
        for u in c.unexpected_passes:
            parts.append(f"<p class='unexpected-pass'>unexpected pass of known failure {_e(u)}</p>")
        if c.traffic:
            parts.append(_traffic_html(c))
        parts.append("</details>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html(path: str | Path, run: RunResult, cat: Catalog | None = None) -> None:
    atomic_write_text(path, clean_text(to_html(run, cat)))
