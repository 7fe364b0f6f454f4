"""`vbproto conform matrix` at its edges (QA 7, 8, 18 of issue 15): a column whose device cannot
start is a column error (not a row of MUST failures), an interrupted run still prints its one
JSON summary and writes every file partial, a selection that matches no case is "nothing
tested"; and the unsupported cells counted by whose limit they are."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from virtio_balloon_proto.conformance.catalog import catalog
from virtio_balloon_proto.conformance.matrix import build_matrix, schema
from virtio_balloon_proto.conformance.matrix_columns import Column, ColumnRun
from virtio_balloon_proto.conformance.matrix_report import to_html, to_markdown

TESTS = Path(__file__).resolve().parent
HANGS = f"python:{TESTS / 'matrix_devices.py'}:HangsForever"
ARGV = [sys.executable, "-m", "virtio_balloon_proto", "conform", "matrix"]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ARGV, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)


def test_a_column_whose_qemu_cannot_start_is_a_column_error(tmp_path: Path) -> None:
    r = _cli("--device", "reference", "--device", "qemu:binary=/bin/false",
             "--device", "qemu:binary=/nonexistent/qemu",
             "--case", "spec/inflate-le", "--case", "spec/deflate-le",
             "-o", str(tmp_path), "--json")
    assert r.returncode == 1, r.stderr
    cols = {c["name"]: c for c in json.loads(r.stdout)["columns"]}
    assert cols["reference"]["status"] == "complete"
    false = cols["qemu:binary=/bin/false"]
    assert false["status"] == "error", false
    assert "2 case(s) could not be run" in false["message"], false
    assert false["counts"]["error"] == 2 and false["counts"]["fail"] == 0, false
    missing = cols["qemu:binary=/nonexistent/qemu"]
    assert missing["status"] == "error" and "does not exist" in missing["message"], missing
    doc = json.loads((tmp_path / "matrix.json").read_text())
    for row in doc["cases"]:
        cell = row["cells"]["qemu:binary=/bin/false"]
        assert cell["outcome"] == "error" and cell["broken"] == [], cell
        assert "could not be started" in cell["reason"], cell


def test_nothing_matched_is_nothing_tested_exit_1_nothing_written(tmp_path: Path) -> None:
    md = tmp_path / "m.md"
    r = _cli("--device", "reference", "--case", "zzz", "-o", str(tmp_path / "out"),
             "--markdown", str(md))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "nothing tested: no case matched (--case zzz)" in r.stderr, r.stderr
    assert not (tmp_path / "out" / "matrix.json").exists() and not md.exists()
    r = _cli("--device", "reference", "--case", "zzz", "-o", str(tmp_path / "out"), "--json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["exit_code"] == 1 and "no case matched" in out["nothing_tested"], out
    help_text = _cli("--help").stdout
    assert "nothing tested" in help_text and "no case matched" in help_text, help_text


def test_sigterm_still_prints_the_json_summary_and_writes_partial_files(
        tmp_path: Path) -> None:
    out, md = tmp_path / "out", tmp_path / "matrix.md"
    proc = subprocess.Popen([*ARGV, "--device", "reference", "--device", HANGS,
                             "--case", "spec/inflate-le", "-j", "2", "-o", str(out),
                             "--markdown", str(md), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        # the matrix file exists (partial) once the columns are about to start; then let the
        # hanging column get going
        while not (out / "matrix.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    summary = json.loads(stdout)  # exactly one JSON document on stdout
    assert summary["partial"] is True and summary["exit_code"] == 130, summary
    hangs = next(c for c in summary["columns"] if c["name"] == HANGS)
    assert hangs["status"] == "interrupted", summary
    doc = json.loads((out / "matrix.json").read_text())
    assert doc["partial"] is True
    assert md.exists() and "Partial matrix" in md.read_text()
    assert "Partial matrix" in (out / "matrix.html").read_text()


# --------------------------------------------------------------------------- whose limit
def _report(cases: list[dict[str, Any]]) -> dict[str, Any]:
    return {"cases": cases, "partial": False}


def _unsup(cid: str, by: str | None, reason: str) -> dict[str, Any]:
    return {"id": cid, "outcome": "unsupported", "clauses": [], "reason": reason,
            **({"unsupported_by": by} if by else {})}


def test_unsupported_cells_are_counted_by_whose_limit() -> None:
    ids = [("spec/a-le", "spec"), ("spec/a-be", "spec"), ("spec/b-le", "spec"),
           ("spec/c-le", "spec"), ("v3/d", "v3")]
    x86 = ColumnRun(Column("q-x86", "qemu:transport=modern"), {}, status="complete",
                    report=_report([
                        _unsup("spec/a-le", "device", "no option 'must-tell-host'"),
                        _unsup("spec/a-be", "device", "x86 runs little-endian guests only"),
                        {"id": "spec/b-le", "outcome": "pass", "clauses": []},
                        _unsup("spec/c-le", "adapter", "STOP is transient"),
                        _unsup("v3/d", "device", "spec profile only")]))
    ppc = ColumnRun(Column("q-ppc", "qemu:arch=ppc64"), {}, status="complete",
                    report=_report([
                        _unsup("spec/a-le", "device", "big-endian pseries: endian=le asked"),
                        _unsup("spec/a-be", "device", "no option 'must-tell-host'"),
                        _unsup("spec/b-le", None, "something unsaid"),
                        _unsup("spec/c-le", "device", "endian=le asked"),
                        _unsup("v3/d", "device", "spec profile only")]))
    ref = ColumnRun(Column("ref", "reference"), {}, status="complete",
                    report=_report([{"id": i, "outcome": "pass", "clauses": []}
                                    for i, _ in ids]))
    doc = build_matrix([ref, x86, ppc], ids, corpus="c", strict=False, cat=catalog())
    Draft202012Validator(schema()).validate(doc)
    cols = {c["name"]: c["unsupported"] for c in doc["columns"]}
    assert cols["q-x86"]["profiles"]["spec"] == {"cases": 4, "device": 2, "adapter": 1,
                                                 "unclassified": 0}
    assert cols["q-ppc"]["all"] == {"device": 4, "adapter": 0, "unclassified": 1}
    assert cols["ref"]["all"] == {"device": 0, "adapter": 0, "unclassified": 0}
    qemu = doc["unsupported_by_kind"]["qemu"]["spec"]
    # b-le runs on x86; c-le: one column blames the adapter, so the adapter's it is
    assert qemu == {"columns": ["q-x86", "q-ppc"], "cases": 4,
                    "device": ["spec/a-be", "spec/a-le"], "adapter": ["spec/c-le"],
                    "unclassified": []}
    assert doc["unsupported_by_kind"]["qemu"]["v3"]["device"] == ["v3/d"]
    cell = next(r for r in doc["cases"] if r["id"] == "spec/c-le")["cells"]
    assert cell["q-x86"]["unsupported_by"] == "adapter" and "unsupported_by" not in cell["ref"]
    md = to_markdown(doc, "cmd")
    assert "Cases of profile `spec` that no `qemu` column runs: 3 of 4 (75.0%)" in md, md
    assert "| spec/a-le | device | q-x86: no option 'must-tell-host' |" in md, md
    assert "| q-x86 | 3 of 4 (2 the device does not offer it; 1 the adapter cannot drive" in md
    assert "Unsupported: whose limit" in to_html(doc)
