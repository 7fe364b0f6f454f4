"""The results matrix as pages: one self-contained ``matrix.html`` and ``docs/matrix.md``.

Both are views of a ``matrix.json`` document (:mod:`.matrix`), nothing more.  The HTML page
starts with the conformance report's style sheet (:func:`.report_html.page_start`: the same outcome
colours and the scrolling ``.matrix`` box with sticky heads) and reads at 1400 px: the case x
device table is laid out to the window's width (``table-layout: fixed``), so it never scrolls
sideways.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from virtio_balloon_proto.limits import clean_text

from .known_failures import atomic_write_text
from .matrix import NOT_RUN, OUTCOMES
from .report_html import esc, legend_html, page_start

_MATRIX_CSS = """
table.mx{width:100%;table-layout:fixed}
table.mx col.case{width:19em}
table.mx td{text-align:left;vertical-align:top;font-size:12px;padding:2px 4px}
table.mx thead th{text-align:left;vertical-align:bottom;font-weight:normal;font-size:12px}
table.mx thead th b{font-size:13px}
table.mx th.clause{white-space:normal;font-size:12px}
table.mx tr.family th{text-align:left;background:#eef;font-weight:bold;position:static}
.cl{font-family:monospace;font-size:11px;display:block}
.not-run{background:#f0f0f0;color:#777}.dim{color:#666}
table.plain{border-collapse:separate;margin:.4em 0}
table.plain td,table.plain th{text-align:left;vertical-align:top;font-size:13px}
"""

_NONE = "\u2013"
#: the symbol a cell starts with, by outcome
_SYMBOL = {"pass": "\u2713", "fail": "\u2717", "non-strict": "!", "expected-failure": "\u2717",
           "unexpected-pass": "\u2713!", "unsupported": "\u2013", "skipped": "\u2013",
           "error": "E", NOT_RUN: "\u00b7"}


def _short_clause(clause: str) -> str:
    """``spec.device.stats.request-by-use`` -> ``device.stats.request-by-use``."""
    rest = clause.partition(".")[2]
    return rest if rest.count(".") >= 2 else clause


def _title(cell: dict[str, Any]) -> str:
    lines = [f"{cell['outcome']}: {cell['judged']} clause result(s)"]
    if cell.get("reason"):
        lines.append(cell["reason"])
    if cell.get("unsupported_by"):
        lines.append(f"whose limit: {_WHOSE.get(cell['unsupported_by'], '')}")
    for b in cell["broken"]:
        known = f" [known: {b['known_failure']}]" if b.get("known_failure") else ""
        lines.append(f"{b['verdict']} {b['clause']}: {b.get('message', '')}{known}")
    return "\n".join(lines)


def _cell_html(cell: dict[str, Any]) -> str:
    o = cell["outcome"]
    text = f"{_SYMBOL.get(o, '?')} {o}"
    clauses = sorted({b["clause"] for b in cell["broken"]})
    if o == "pass":
        text += f" <span class='dim'>({cell['judged']})</span>"
    body = "".join(f"<span class='cl'>{esc(_short_clause(c))}</span>" for c in clauses)
    return f"<td class='{esc(o)}' title='{esc(_title(cell))}'>{text}{body}</td>"


def _head_html(col: dict[str, Any]) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in col["options"].items()) or _NONE
    status = "" if col["status"] == "complete" else (
        f"<br><span class='fail'>{esc(col['status'])}</span>")
    tip = col["device"] + (f": {col['message']}" if col["message"] else "")
    build, transport = col["build"] or _NONE, col["transport"] or _NONE
    return (f"<th title='{esc(tip)}'><b>{esc(col['name'])}</b><br>{esc(build)}<br>"
            f"transport: {esc(transport)}<br><span class='cl'>{esc(opts)}</span>{status}</th>")


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n)


def _values_text(values: dict[str, int]) -> str:
    return "; ".join(f"{v} ({n})" for v, n in values.items()) or "\u2013"


def to_html(doc: dict[str, Any]) -> str:
    """The matrix page (``doc``: a matrix.json document)."""
    cols = doc["columns"]
    names = [c["name"] for c in cols]
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(doc.get("finished") or time.time()))
    parts = [
        page_start("vbproto conformance matrix", _MATRIX_CSS),
        "<h1>virtio-balloon conformance matrix</h1>",
        f"<p>{len(doc['cases'])} case(s) of corpus <code>{esc(doc['corpus'])}</code> against "
        f"{len(cols)} device(s); vbproto {esc(doc['tool']['version'])}, {when} UTC"
        f"{', strict' if doc['strict'] else ''}.  Each cell: the case's outcome (number of "
        "clause results when it passes) and the clauses it broke; hover for messages.</p>",
    ]
    if doc["partial"]:
        parts.append("<p class='banner'>Partial matrix: the run was interrupted.</p>")
    bad = [c for c in cols if c["status"] != "complete"]
    for c in bad:
        parts.append(f"<p class='banner'>Column <b>{esc(c['name'])}</b>: {esc(c['status'])}"
                     f"{': ' + esc(c['message']) if c['message'] else ''}</p>")
    parts.append("<h2>Cases &times; devices</h2><div class='matrix'><table class='mx'>"
                 "<colgroup><col class='case'>" + "<col>" * len(cols) + "</colgroup>"
                 "<thead><tr><th class='corner'>case \\ device</th>"
                 + "".join(_head_html(c) for c in cols) + "</tr></thead><tbody>")
    parts.append("<tr><th class='clause'>counts</th>" + "".join(
        f"<td>{esc(_counts_text(c['counts']))}</td>" for c in cols) + "</tr>")
    family = None
    for row in doc["cases"]:
        if row["family"] != family:
            family = row["family"]
            n = sum(1 for r in doc["cases"] if r["family"] == family)
            parts.append(f"<tr class='family' id='family-{esc(family)}'>"
                         f"<th colspan='{len(cols) + 1}'>{esc(family)} ({n} case(s))</th></tr>")
        parts.append(f"<tr><th class='clause' id='case-{esc(row['id'])}'>{esc(row['id'])}</th>"
                     + "".join(_cell_html(row["cells"][n]) for n in names) + "</tr>")
    parts.append("</tbody></table></div>")
    parts.extend(_counts_html(cols))
    parts.extend(_unsupported_html(doc))
    parts.extend(_behaviour_html(doc, names))
    parts.extend(_only_here_html(doc))
    parts.extend(_diff_html(doc))
    parts.append("</body></html>\n")
    return "".join(parts)


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], start: str = "<table class='plain'>"
           ) -> str:
    out = [start + "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    out.extend("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return "".join(out) + "</table>"


def _counts_html(cols: list[dict[str, Any]]) -> list[str]:
    shown = [o for o in OUTCOMES if any(c["counts"].get(o) for c in cols)]
    split = any(c.get("unsupported") for c in cols)  # (matrices before the split lack it)
    rows = [[f"<b>{esc(c['name'])}</b>", legend_html({o: c["counts"].get(o, 0) for o in shown}),
             *([esc("; ".join(f"{p}: {_split_text(v, v['cases'])}" for p, v in
                              (c.get("unsupported") or {}).get("profiles", {}).items()
                              if any(v.get(k) for k in _WHOSE)) or _NONE)] if split else []),
             f"{c['duration']:.1f} s"] for c in cols]
    head = ["device", "outcomes", *(["unsupported, per profile: whose limit"] if split else []),
            "run time"]
    return ["<h2>Per-device counts</h2>", _table(head, rows)]


def _never_run(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any], int, float]]:
    """(device kind, profile, entry, cases no column of that kind runs, their share in %) for
    every kind with two or more columns and at least one such case (html and markdown)."""
    for kind, per in (doc.get("unsupported_by_kind") or {}).items():
        for profile, e in per.items():
            n = len(e["device"]) + len(e["adapter"]) + len(e["unclassified"])
            if n and len(e["columns"]) >= 2:
                yield kind, profile, e, n, 100.0 * n / e["cases"] if e["cases"] else 0.0


def _unsupported_html(doc: dict[str, Any]) -> list[str]:
    """Per device kind with two or more columns: the cases none of them runs, whose limit."""
    rows = {r["id"]: r for r in doc["cases"]}
    out: list[str] = []
    for kind, profile, e, n, share in _never_run(doc):
        out.append(f"<p>Cases of profile <code>{esc(profile)}</code> that no "
                   f"<code>{esc(kind)}</code> column runs: {n} of {e['cases']} "
                   f"({share:.1f}%).</p>")
        out.append(_table(["case", "whose limit", "why (a column that says so)"], [
            [esc(ids), esc(_WHOSE[k]), esc(why)] for k, ids, why in _grouped(rows, e)]))
    if out:
        out.insert(0, "<h2>Unsupported: whose limit</h2>")
    return out


def _behaviour_html(doc: dict[str, Any], names: list[str]) -> list[str]:
    if not doc["behaviour"]:
        return []
    rows = [[f"<code>{esc(b['choice'])}</code>"]
            + [esc(_values_text(b["cells"].get(n, {}))) for n in names]
            for b in doc["behaviour"]]
    return ["<h2>Behaviour profile</h2><p>Which allowed choice each device makes where the "
            "spec leaves it open (value (number of cases)); never a failure.</p>",
            "<div class='matrix'>"
            + _table(["choice", *(esc(n) for n in names)], rows,
                     "<table class='mx'><colgroup><col class='case'>" + "<col>" * len(names)
                     + "</colgroup>") + "</div>"]


def _only_here_html(doc: dict[str, Any]) -> list[str]:
    items = doc["only_here"]
    head = ("<h2>Fails only here</h2><p>Cases broken on exactly one device and passed by "
            "another.</p>")
    if not items:
        return [head, "<p>None.</p>"]
    rows = [[esc(i["case"]), f"<b>{esc(i['column'])}</b>",
             "<br>".join(f"<code>{esc(c)}</code>" for c in i["clauses"]),
             esc(", ".join(i["passes_on"]))] for i in items]
    return [head, _table(["case", "broken on", "clauses", "passes on"], rows)]


def _diff_html(doc: dict[str, Any]) -> list[str]:
    d = doc["diff"]
    if d is None:
        return []
    a, b = esc(d["a"]), esc(d["b"])
    out = [f"<h2 id='diff'>{a} against {b}</h2>"]
    if not d["cases"] and not d["behaviour"]:
        return [*out, "<p>The two columns agree in every cell and every choice.</p>"]
    if d["cases"]:
        rows = [[esc(c["case"]), esc(c["family"])]
                + [f"<span class='{esc(c[s]['outcome'])}'>{esc(c[s]['outcome'])}</span> "
                   + esc(", ".join(c[s]["clauses"])) for s in ("a", "b")] for c in d["cases"]]
        out.append(_table(["case", "family", a, b], rows))
    else:
        out.append("<p>Same outcome and clauses in every case.</p>")
    if d["behaviour"]:
        out.append(_table(["choice", a, b], [[f"<code>{esc(x['choice'])}</code>",
                                              esc(_values_text(x["a"])),
                                              esc(_values_text(x["b"]))] for x in d["behaviour"]]))
    return out


# --------------------------------------------------------------------------- Markdown
def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_cell(cell: dict[str, Any]) -> str:
    o = cell["outcome"]
    clauses = sorted({_short_clause(b["clause"]) for b in cell["broken"]})
    return _md(f"{_SYMBOL.get(o, '?')} {o}" + (f" `{'`, `'.join(clauses)}`" if clauses else ""))


def to_markdown(doc: dict[str, Any], command: str) -> str:
    """docs/matrix.md: the devices, the matrix, behaviour, fails-only-here and the diff;
    ``command`` is the one command that regenerates it (shown at the top)."""
    cols = doc["columns"]
    names = [c["name"] for c in cols]
    out = [
        "# Conformance matrix", "",
        "<!-- generated by `vbproto conform matrix`; do not edit by hand -->", "",
        f"The corpus ({len(doc['cases'])} cases) against {len(cols)} devices, one column each "
        "(issue 15). Regenerate this page, `docs/matrix/matrix.json` and the self-contained "
        "`docs/matrix/matrix.html` with:", "",
        "```sh", command, "```", "",
        "CI re-runs the QEMU 7.2 columns (and the 10.0 ones when the backport is fetched) "
        "and fails when a verdict differs from "
        "`docs/matrix/matrix.json` (tests/test_matrix.py). Cells: the case's outcome and the "
        "clauses it broke (`docs/conformance.md` explains outcomes).", "",
        *(["**Partial matrix: the run was interrupted; columns not complete are marked.**",
            ""] if doc.get("partial") else []),
        "## Devices", "",
        "| column | device | build | transport | options | run | counts |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cols:
        opts = ", ".join(f"{k}={v}" for k, v in c["options"].items()) or "-"
        run = c["status"] + (f" ({c['message']})" if c["message"] else "")
        out.append(f"| {_md(c['name'])} | `{_md(c['device'])}` | {_md(c['build'])} | "
                   f"{_md(c['transport'])} | {_md(opts)} | {_md(run)} | "
                   f"{_md(_counts_text(c['counts']))} |")
    out += _unsupported_md(doc)
    out += ["", "## Cases x devices", "",
            "| case | " + " | ".join(_md(n) for n in names) + " |",
            "|---" * (len(names) + 1) + "|"]
    family = None
    for row in doc["cases"]:
        if row["family"] != family:
            family = row["family"]
            out.append(f"| **{_md(family)}** |" + " |" * len(names))
        out.append(f"| {_md(row['id'])} | "
                   + " | ".join(_md_cell(row["cells"][n]) for n in names) + " |")
    if doc["behaviour"]:
        out += ["", "## Behaviour profile", "",
                "Which allowed choice each device makes (value (number of cases)).", "",
                "| choice | " + " | ".join(_md(n) for n in names) + " |",
                "|---" * (len(names) + 1) + "|"]
        out += [f"| `{_md(b['choice'])}` | "
                + " | ".join(_md(_values_text(b["cells"].get(n, {}))) for n in names) + " |"
                for b in doc["behaviour"]]
    out += ["", "## Fails only here", ""]
    out += [f"- {_md(i['case'])}: broken on **{_md(i['column'])}** "
            f"({', '.join('`' + c + '`' for c in i['clauses'])}), passes on "
            f"{_md(', '.join(i['passes_on']))}" for i in doc["only_here"]] or ["None."]
    d = doc["diff"]
    if d is not None:
        out += ["", f"## {_md(d['a'])} against {_md(d['b'])}", ""]
        if not d["cases"] and not d["behaviour"]:
            out.append("The two columns agree in every cell and every choice.")
        if d["cases"]:
            out += [f"| case | {_md(d['a'])} | {_md(d['b'])} |", "|---|---|---|"]
            out += [f"| {_md(c['case'])} | {_md_cell_short(c['a'])} | {_md_cell_short(c['b'])} |"
                    for c in d["cases"]]
        if d["behaviour"]:
            out += ["", f"| choice | {_md(d['a'])} | {_md(d['b'])} |", "|---|---|---|"]
            out += [f"| `{_md(x['choice'])}` | {_md(_values_text(x['a']))} | "
                    f"{_md(_values_text(x['b']))} |" for x in d["behaviour"]]
    return clean_text("\n".join(out) + "\n")


#: how each side of an unsupported split is said (Unsupported.by)
_WHOSE = {"device": "the device does not offer it", "adapter": "the adapter cannot drive it",
          "unclassified": "not said"}


def _split_text(split: dict[str, int], total: int | None = None) -> str:
    n = sum(split.get(k, 0) for k in _WHOSE)
    head = f"{n}" + (f" of {total}" if total is not None else "")
    parts = [f"{split[k]} {_WHOSE[k]}" for k in _WHOSE if split.get(k)]
    return head + (f" ({'; '.join(parts)})" if parts else "")


def _why(row: dict[str, Any] | None, columns: list[str], whose: str) -> str:
    """The reason an unsupported case is counted ``whose``: a column that says so, preferring
    one past the byte-order check (its reason says more than "wrong endianness")."""
    if row is None:
        return ""
    said = [(c, str(row["cells"][c].get("reason", ""))) for c in columns
            if str(row["cells"][c].get("unsupported_by") or "unclassified") == whose]
    said.sort(key=lambda cr: "endian" in cr[1])
    return f"{said[0][0]}: {said[0][1]}" if said else ""


def _grouped(rows: dict[str, dict[str, Any]], entry: dict[str, Any]
             ) -> list[tuple[str, str, str]]:
    """(whose, cases, why) of an ``unsupported_by_kind`` entry, cases with the same whose and
    why on one line (all 24 v3 cases: one line, not 24)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for k in _WHOSE:
        for cid in entry[k]:
            groups.setdefault((k, _why(rows.get(cid), entry["columns"], k)), []).append(cid)
    return [(k, ", ".join(ids) if len(ids) <= 3 else f"{len(ids)} cases: {ids[0]} ... {ids[-1]}",
             why) for (k, why), ids in groups.items()]


def _unsupported_md(doc: dict[str, Any]) -> list[str]:
    """Unsupported cells by whose limit, per column and per profile; per device kind, the
    cases none of its columns runs, each with its reason."""
    cols = [c for c in doc["columns"] if c.get("unsupported")]
    if not cols:
        return []
    profiles = sorted({p for c in cols for p in c["unsupported"]["profiles"]})
    out = ["", "## Unsupported: whose limit", "",
           "A case is unsupported when the device does not offer what it needs (a profile, a "
           "feature, a byte order, a queue: the device's limit) or when the device has it but "
           "the adapter cannot make it happen (the adapter's limit). Per column and profile "
           "(unsupported of that profile's cases):", "",
           "| column | " + " | ".join(_md(p) for p in profiles) + " |",
           "|---" * (len(profiles) + 1) + "|"]
    for c in cols:
        per = c["unsupported"]["profiles"]
        out.append(f"| {_md(c['name'])} | " + " | ".join(
            _md(_split_text(per[p], per[p]["cases"])) if p in per else "-" for p in profiles)
            + " |")
    rows = {r["id"]: r for r in doc["cases"]}
    for kind, profile, e, n, share in _never_run(doc):
        out += ["", f"Cases of profile `{_md(profile)}` that no `{_md(kind)}` column runs: "
                f"{n} of {e['cases']} ({share:.1f}%): "
                + "; ".join(f"{len(e[k])} {_WHOSE[k]}" for k in _WHOSE if e[k]) + ".", "",
                "| case | whose limit | why (a column that says so) |", "|---|---|---|"]
        out += [f"| {_md(ids)} | {k} | {_md(why)} |" for k, ids, why in _grouped(rows, e)]
    return out


def _md_cell_short(s: dict[str, Any]) -> str:
    return _md(s["outcome"] + (f" `{'`, `'.join(s['clauses'])}`" if s["clauses"] else ""))


def write_html(path: str, doc: dict[str, Any]) -> None:
    atomic_write_text(path, clean_text(to_html(doc)))


def write_markdown(path: str, doc: dict[str, Any], command: str) -> None:
    atomic_write_text(path, to_markdown(doc, command))
