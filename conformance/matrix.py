"""A results matrix: the corpus against several devices (``vbproto conform matrix``, issue 15).

:func:`build_matrix` turns the ``conform run`` JSON reports of the columns
(:mod:`.matrix_columns`) into one ``matrix.json`` document (format ``vbproto-matrix/1``, schema
``virtio_balloon_proto/schemas/matrix-v1.schema.json``):

* ``columns``: per device its name, spec, build, transport, options, how its run ended, and
  its outcome counts;
* ``cases``: one row per case of the corpus, with its *clause family* and per column a cell
  (the case's outcome, the clauses it broke, how many it judged, why it was not judged);
* ``behaviour``: per choice the spec leaves to the device (``queues.numbering``, ...), which
  value each column showed in how many cases;
* ``only_here``: cases broken on exactly one column while another column passes them (WPT's
  "fails only here");
* ``unsupported`` (per column) and ``unsupported_by_kind``: unsupported cells by whose limit
  (``Unsupported.by``): the device does not offer what the case needs, or the adapter cannot
  drive it (or not said); per device kind (``qemu``), the cases none of its columns runs --
  what "at most N% of the spec cases unsupported against QEMU" is read from;
* ``diff``: every cell (and behaviour row) where two chosen columns differ.

The clause family of a case is the first word of its name (``spec/stats-linux-6.12-le`` ->
``stats``) that is a clause area of the catalog (clause ids are
``<profile>.<side>.<area>.<rule>``); for a case whose name holds none
(``spec/must-tell-host-le``), the area most of the clauses judged in it (over all columns)
belong to.

:func:`compare_verdicts` is CI's check: a fresh run of some columns against the committed
matrix, cell by cell (outcome and broken clauses); timings and messages are not compared.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from virtio_balloon_proto import __version__
from virtio_balloon_proto.errors import UsageError
from virtio_balloon_proto.limits import loads_json, read_bounded
from virtio_balloon_proto.schemas import ecma_validator, shipped_schema

from .catalog import Catalog
from .dut import UNSUPPORTED_BY
from .matrix_columns import ColumnRun

MATRIX_FORMAT = "vbproto-matrix/1"
SCHEMA_RESOURCE = "matrix-v1.schema.json"
#: outcomes in which the device broke a clause the case judged
BROKEN = frozenset({"fail", "non-strict", "expected-failure"})
#: a cell of a case a column never reached (crash, hang, interrupt, a column that did not start)
NOT_RUN = "not-run"
OUTCOMES = ("pass", "non-strict", "fail", "expected-failure", "unexpected-pass", "unsupported",
            "skipped", "error", NOT_RUN)
#: characters of a clause message / reason kept in a cell
TEXT_CHARS = 300


def schema() -> dict[str, Any]:
    """The shipped JSON Schema of matrix.json (checked to be a valid 2020-12 schema)."""
    return shipped_schema(SCHEMA_RESOURCE)


def validate(doc: Any, where: str = "matrix") -> None:
    """UsageError naming the first schema violation (with its JSON path) of ``doc``."""
    err = next(iter(ecma_validator(schema()).iter_errors(doc)), None)
    if err is not None:
        path = "/".join(str(p) for p in err.absolute_path) or "(document)"
        raise UsageError(f"not a vbproto matrix: {path}: {err.message[:200]}", where=where)


# --------------------------------------------------------------------------- cells
def _cell(case: dict[str, Any] | None) -> dict[str, Any]:
    if case is None:
        return {"outcome": NOT_RUN, "broken": [], "judged": 0}
    broken = [
        {"clause": str(r["clause"]), "verdict": str(r["verdict"]),
         "message": str(r.get("message", ""))[:TEXT_CHARS],
         **({"known_failure": str(r["known_failure"])[:TEXT_CHARS]}
            if r.get("known_failure") else {})}
        for r in case.get("clauses", []) if r.get("verdict") in ("fail", "non-strict", "error")
    ]
    out: dict[str, Any] = {"outcome": str(case.get("outcome", "error")), "broken": broken,
                           "judged": len(case.get("clauses", []))}
    if case.get("reason"):
        out["reason"] = str(case["reason"])[:TEXT_CHARS]
    if out["outcome"] == "unsupported" and case.get("unsupported_by") in UNSUPPORTED_BY:
        out["unsupported_by"] = str(case["unsupported_by"])
    return out


def _by(cell: dict[str, Any]) -> str:
    """Whose limit an unsupported cell is: device, adapter or unclassified."""
    return str(cell.get("unsupported_by") or "unclassified")


def _unsupported_split(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """A column's unsupported cells by whose limit, over all cases and per profile."""
    def empty() -> dict[str, int]:
        return {"device": 0, "adapter": 0, "unclassified": 0}

    total: dict[str, int] = empty()
    profiles: dict[str, dict[str, int]] = {}
    for row in rows:
        prof = profiles.setdefault(row["profile"], {"cases": 0, **empty()})
        prof["cases"] += 1
        cell = row["cells"][name]
        if cell["outcome"] == "unsupported":
            total[_by(cell)] += 1
            prof[_by(cell)] += 1
    return {"all": total, "profiles": dict(sorted(profiles.items()))}


def _unsupported_by_kind(rows: list[dict[str, Any]], names: list[str], devices: list[str]
                         ) -> dict[str, dict[str, Any]]:
    """Per device kind and profile, the cases no column of that kind runs (module doc)."""
    kinds: dict[str, list[str]] = {}
    for n, d in zip(names, devices, strict=True):
        kinds.setdefault(d.partition(":")[0], []).append(n)
    out: dict[str, dict[str, Any]] = {}
    for kind, cols in sorted(kinds.items()):
        per: dict[str, Any] = {}
        for row in rows:
            entry = per.setdefault(row["profile"], {"columns": cols, "cases": 0, "device": [],
                                                    "adapter": [], "unclassified": []})
            entry["cases"] += 1
            cells = [row["cells"][c] for c in cols]
            if all(c["outcome"] == "unsupported" for c in cells):
                whose = {_by(c) for c in cells}
                key = ("adapter" if "adapter" in whose
                       else "unclassified" if "unclassified" in whose else "device")
                entry[key].append(row["id"])
        out[kind] = dict(sorted(per.items()))
    return out


def clause_family(case_id: str, judged: Sequence[str], areas: set[str]) -> str:
    """The clause family of a case (module docstring): a word of its name that is a clause
    area, else the area most of ``judged`` (clause ids) belong to, else ``other``."""
    name = case_id.rsplit("/", 1)[-1]
    for word in re.split(r"[-_.]", name):
        if word in areas:
            return word
    counts = Counter(c.split(".")[2] for c in judged if c.count(".") >= 3)
    if not counts:
        return "other"
    return min(counts, key=lambda a: (-counts[a], a))


def _counts(cells: list[dict[str, Any]]) -> dict[str, int]:
    out = dict.fromkeys(OUTCOMES, 0)
    for c in cells:
        out[c["outcome"]] = out.get(c["outcome"], 0) + 1
    return out


# --------------------------------------------------------------------------- the matrix
def build_matrix(
    runs: Sequence[ColumnRun],
    case_ids: Sequence[tuple[str, str]],
    *,
    corpus: str,
    strict: bool,
    cat: Catalog,
    diff: tuple[str, str] | None = None,
    started: float | None = None,
    partial: bool = False,
) -> dict[str, Any]:
    """The matrix.json document.  ``case_ids``: (case id, profile) of every case planned,
    in order; ``diff``: two column names (UsageError if either is not a column)."""
    names = [r.column.name for r in runs]
    if diff is not None:
        for d in diff:
            if d not in names:
                raise UsageError(f"diff column {d!r} is not a column of this matrix "
                                 f"({', '.join(names)})", field="diff")
    by_col: list[dict[str, dict[str, Any]]] = []
    for r in runs:
        cases = (r.report or {}).get("cases", [])
        by_col.append({str(c.get("id")): c for c in cases if isinstance(c, dict)})
    areas = {c.id.split(".")[2] for c in cat if c.id.count(".") >= 3}
    rows: list[dict[str, Any]] = []
    for cid, profile in case_ids:
        judged = [str(x.get("clause")) for col in by_col for x in col.get(cid, {}).get(
            "clauses", [])]
        rows.append({
            "id": cid, "profile": profile, "family": clause_family(cid, judged, areas),
            "cells": {r.column.name: _cell(col.get(cid)) for r, col in zip(runs, by_col,
                                                                              strict=True)},
        })
    rows.sort(key=lambda row: (row["family"], row["id"]))
    columns = []
    for r in runs:
        cells = [row["cells"][r.column.name] for row in rows]
        columns.append({
            "name": r.column.name,
            "device": r.column.device,
            "build": str(r.info.get("build", "")),
            "transport": str(r.info.get("transport", "")),
            "options": {str(k): str(v) for k, v in (r.info.get("options") or {}).items()},
            "known_failures": r.column.known_failures,
            "status": r.status if r.status != "pending" else NOT_RUN,
            "exit_code": r.exit_code,
            "message": r.message,
            "duration": round(r.duration, 3),
            "counts": _counts(cells),
            "unsupported": _unsupported_split(rows, r.column.name),
        })
    behaviour = _behaviour(runs)
    doc: dict[str, Any] = {
        "format": MATRIX_FORMAT,
        "tool": {"name": "vbproto", "version": __version__},
        "corpus": corpus,
        "strict": strict,
        "partial": partial,
        "started": started,
        "finished": time.time(),
        "columns": columns,
        "families": sorted({row["family"] for row in rows}),
        "cases": rows,
        "behaviour": behaviour,
        "only_here": _only_here(rows, names),
        "unsupported_by_kind": _unsupported_by_kind(rows, names,
                                                    [r.column.device for r in runs]),
        "diff": _diff(rows, behaviour, diff) if diff is not None else None,
    }
    return doc


def _behaviour(runs: Sequence[ColumnRun]) -> list[dict[str, Any]]:
    """One row per choice: per column, value -> number of cases that showed it."""
    table: dict[str, dict[str, dict[str, int]]] = {}
    for r in runs:
        prof = (r.report or {}).get("behaviour_profile") or {}
        for key, values in prof.items():
            for value, ids in values.items():
                table.setdefault(str(key), {}).setdefault(r.column.name, {})[str(value)] = (
                    len(ids) if isinstance(ids, list) else 0)
    return [{"choice": k, "cells": {n: dict(sorted(v.items())) for n, v in cols.items()}}
            for k, cols in sorted(table.items())]


def _only_here(rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        broken = [n for n in names if row["cells"][n]["outcome"] in BROKEN]
        passed = [n for n in names if row["cells"][n]["outcome"] == "pass"]
        if len(broken) == 1 and passed:
            cell = row["cells"][broken[0]]
            out.append({"case": row["id"], "column": broken[0],
                        "clauses": sorted({b["clause"] for b in cell["broken"]}),
                        "passes_on": passed})
    return out


def _key(cell: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """What a verdict comparison compares: the outcome and the broken clauses."""
    return cell["outcome"], tuple(sorted({b["clause"] for b in cell["broken"]}))


def _diff(rows: list[dict[str, Any]], behaviour: list[dict[str, Any]],
          pair: tuple[str, str]) -> dict[str, Any]:
    a, b = pair
    cases = [{"case": row["id"], "family": row["family"],
              "a": {"outcome": row["cells"][a]["outcome"],
                    "clauses": list(_key(row["cells"][a])[1])},
              "b": {"outcome": row["cells"][b]["outcome"],
                    "clauses": list(_key(row["cells"][b])[1])}}
             for row in rows if _key(row["cells"][a]) != _key(row["cells"][b])]
    choices = [{"choice": beh["choice"], "a": beh["cells"].get(a, {}),
                "b": beh["cells"].get(b, {})}
               for beh in behaviour if beh["cells"].get(a, {}) != beh["cells"].get(b, {})]
    return {"a": a, "b": b, "cases": cases, "behaviour": choices}


# --------------------------------------------------------------------------- CI's check
def load_matrix(path: str | Path) -> dict[str, Any]:
    """A matrix.json, schema-checked (UsageError naming the file otherwise)."""
    try:
        # bounded and strict: a regular file of at most MAX_INPUT bytes, JSON depth capped
        doc = loads_json(read_bounded(path, what="matrix file"), what="matrix file",
                         where=str(path))
    except FileNotFoundError:
        raise UsageError("matrix file not found", where=str(path)) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"not a JSON file: {str(exc)[:200]}", where=str(path)) from None
    validate(doc, str(path))
    return doc  # type: ignore[no-any-return]


def compare_verdicts(committed: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Every difference in verdicts between two matrices, over the columns of ``current``:
    a column the committed matrix lacks, a column that did not complete, a case only one side
    has, a cell whose outcome or broken clauses differ.  Empty: the verdicts agree."""
    out: list[str] = []
    old_cols = {c["name"] for c in committed["columns"]}
    old_rows = {row["id"]: row for row in committed["cases"]}
    new_rows = {row["id"]: row for row in current["cases"]}
    for col in current["columns"]:
        name = col["name"]
        if name not in old_cols:
            out.append(f"column {name}: not in the committed matrix")
            continue
        if col["status"] != "complete":
            out.append(f"column {name}: {col['status']}: {col['message']}")
        for cid in sorted(set(old_rows) | set(new_rows)):
            if cid not in new_rows:
                out.append(f"{name} {cid}: in the committed matrix, not in this run")
                continue
            if cid not in old_rows:
                out.append(f"{name} {cid}: not in the committed matrix")
                continue
            old, new = _key(old_rows[cid]["cells"][name]), _key(new_rows[cid]["cells"][name])
            if old != new:
                out.append(f"{name} {cid}: committed {_show(old)}, now {_show(new)}")
    return out


def _show(key: tuple[str, tuple[str, ...]]) -> str:
    return key[0] + (f" [{', '.join(key[1])}]" if key[1] else "")
