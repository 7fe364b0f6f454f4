"""`vbproto conform matrix` (issue 15): columns in their own processes, matrix.json against its
shipped schema, fails-only-here and the diff, a crashed or hung column costing only itself,
CI's check of the committed matrix (QEMU 7.2 columns), and matrix.html at 1400 px in headless
Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from virtio_balloon_proto.conformance.catalog import catalog
from virtio_balloon_proto.conformance.matrix import (
    clause_family,
    compare_verdicts,
    load_matrix,
    schema,
)
from virtio_balloon_proto.conformance.matrix_report import to_html, to_markdown

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
COMMITTED = ROOT / "docs" / "matrix" / "matrix.json"
COLUMNS = ROOT / "conformance" / "matrix.toml"
#: the one command docs/matrix.md says regenerates it (run from the repository's top)
REGENERATE = ("vbproto conform matrix --columns conformance/matrix.toml -j 4 -o docs/matrix "
              "--markdown docs/matrix.md")
FAULTY = f"python:{TESTS / 'faulty_devices.py'}:IgnoresDeflate"
DIES = f"python:{TESTS / 'matrix_devices.py'}:DiesOnThirdCase"


def _cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "virtio_balloon_proto", "conform", "matrix",
                           *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env, check=False, stdin=subprocess.DEVNULL)


def _cells(doc: dict[str, Any], column: str) -> dict[str, str]:
    return {row["id"]: row["cells"][column]["outcome"] for row in doc["cases"]}


@pytest.fixture(scope="module")
def three_devices(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The reference, a device that ignores deflate, and one whose process dies at its third
    case, over the deflate cases and spec/inflate-le, two columns at a time."""
    out = tmp_path_factory.mktemp("matrix")
    r = _cli("--device", "reference", "--device", FAULTY, "--device", DIES,
             "--case", "spec/deflate-*", "--case", "spec/inflate-le", "-j", "2",
             "--diff", "reference", FAULTY,
             "-o", str(out), "--markdown", str(out / "matrix.md"), "--json")
    assert r.returncode == 1, r.stderr  # a column crashed (broken clauses alone would be 0)
    summary = json.loads(r.stdout)
    assert [c["status"] for c in summary["columns"]] == ["complete", "complete", "crashed"]
    return out, json.loads((out / "matrix.json").read_text())


def test_matrix_names_the_device_that_breaks_deflate(
        three_devices: tuple[Path, dict[str, Any]]) -> None:
    out, doc = three_devices
    Draft202012Validator(schema()).validate(doc)
    ids = {"spec/deflate-be", "spec/deflate-le", "spec/deflate-on-oom-be",
           "spec/deflate-on-oom-le", "spec/inflate-le"}
    assert {row["id"] for row in doc["cases"]} == ids
    assert {row["id"]: row["family"] for row in doc["cases"]} == {
        i: i.split("/")[1].split("-")[0] for i in ids}
    assert set(_cells(doc, "reference").values()) == {"pass"}
    faulty = _cells(doc, FAULTY)
    broken = {i for i, o in faulty.items() if o == "fail"}
    assert broken == ids - {"spec/inflate-le"} and faulty["spec/inflate-le"] == "pass"
    # each broken cell names the clause: pages a deflate gave back are still in the balloon
    row = next(r for r in doc["cases"] if r["id"] == "spec/deflate-le")
    clauses = {b["clause"] for b in row["cells"][FAULTY]["broken"]}
    assert clauses and all(c.startswith("spec.device.") for c in clauses), clauses
    # fails only here: exactly the deflate cases, on the faulty column, passing on reference
    assert {(i["case"], i["column"]) for i in doc["only_here"]} == {(c, FAULTY) for c in broken}
    assert all("reference" in i["passes_on"] for i in doc["only_here"])
    # the diff lists every cell that differs, and only those
    assert doc["diff"]["a"] == "reference" and doc["diff"]["b"] == FAULTY
    assert {c["case"] for c in doc["diff"]["cases"]} == broken
    # counts per column; build/transport per column head
    cols = {c["name"]: c for c in doc["columns"]}
    assert cols["reference"]["counts"]["pass"] == 5
    assert cols[FAULTY]["counts"]["fail"] == 4 and cols[FAULTY]["counts"]["pass"] == 1
    assert cols["reference"]["build"].startswith("vbproto ")
    assert cols[FAULTY]["transport"] == "python"
    # behaviour rows per column (the reference's choices)
    assert any(b["choice"] == "queues.numbering" and b["cells"]["reference"]
               for b in doc["behaviour"])
    page = (out / "matrix.html").read_text()
    assert page.count("<tr class='family'") == 2 and "Fails only here" in page
    md = (out / "matrix.md").read_text()
    assert "| spec/deflate-le | \u2713 pass | \u2717 fail `device." in md


def test_compare_fails_on_a_changed_verdict(three_devices: tuple[Path, dict[str, Any]],
                                            tmp_path: Path) -> None:
    _, doc = three_devices
    # a column that did not complete is a difference even against itself
    assert compare_verdicts(doc, doc) == [f"column {DIES}: crashed: killed by signal 9"]
    changed = json.loads(json.dumps(doc))
    cell = next(r for r in changed["cases"] if r["id"] == "spec/inflate-le")["cells"]
    cell["reference"]["outcome"] = "fail"
    committed = tmp_path / "committed.json"
    committed.write_text(json.dumps(changed))
    r = _cli("--device", "reference", "--case", "spec/inflate-le", "--case", "spec/deflate-*",
             "-o", str(tmp_path / "out"), "--compare", str(committed))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "reference spec/inflate-le: committed fail, now pass" in r.stdout
    assert "1 difference(s)" in r.stdout
    # a column the committed matrix does not have is a difference too
    assert compare_verdicts(doc, {**doc, "columns": [{**doc["columns"][0], "name": "x"}]}) == [
        "column x: not in the committed matrix"]


def test_a_crashing_column_costs_only_that_column(
        three_devices: tuple[Path, dict[str, Any]]) -> None:
    out, doc = three_devices
    cols = {c["name"]: c for c in doc["columns"]}
    assert cols["reference"]["status"] == cols[FAULTY]["status"] == "complete"
    assert cols[DIES]["status"] == "crashed" and "signal 9" in cols[DIES]["message"]
    outcomes = list(_cells(doc, DIES).values())
    assert outcomes.count("pass") == 2  # what its partial report holds
    assert outcomes.count("not-run") == len(outcomes) - 2
    assert cols[DIES]["counts"]["not-run"] == len(outcomes) - 2
    assert set(_cells(doc, "reference").values()) == {"pass"}
    assert "crashed" in (out / "matrix.html").read_text()


def _processes_with(token: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if token.encode() in (d / "environ").read_bytes():
                    found.append(int(d.name))
            except OSError:
                continue
    return found


@pytest.mark.qemu
def test_a_hung_qemu_column_is_killed_with_its_qemu(tmp_path: Path) -> None:
    """A column past --column-timeout is killed with its whole process group, QEMU included
    (every process of the run carries a token in its environment: none is left)."""
    token = uuid.uuid4().hex
    env = {**os.environ, "VBPROTO_MATRIX_TEST": token}
    hangs = f"python:{TESTS / 'matrix_devices.py'}:HangsHoldingQemu"
    r = _cli("--device", hangs, "--case", "spec/inflate-*le", "--timeout", "86400",
             "--column-timeout", "3", "-o", str(tmp_path), env=env)
    assert r.returncode == 1, r.stderr
    doc = load_matrix(tmp_path / "matrix.json")
    col = doc["columns"][0]
    assert col["status"] == "timeout" and 3 <= col["duration"] < 3 + 10, col
    assert set(_cells(doc, hangs).values()) == {"not-run"}  # it hung in its first case
    assert _processes_with(f"VBPROTO_MATRIX_TEST={token}") == []


@pytest.mark.parametrize(("text", "message"), [
    ("[[column]]\nname = 'a'\n", "'device' must be a non-empty string"),
    ("[[column]]\nname = 'a'\ndevice = 'reference'\n[[column]]\nname = 'a'\n"
     "device = 'reference'\n", "column 'a' is given twice"),
    ("[[column]]\nname = 'a'\ndevice = 'reference'\ncolour = 1\n", "unknown key(s) colour"),
    ("diff = ['a']\n[[column]]\nname = 'a'\ndevice = 'reference'\n", "'diff' must be"),
    ("[[column]]\nname = 'a'\ndevice = 'reference'\nknown_failures = 'nope.toml'\n",
     "known-failures file not found"),
    ("[[column]\n", "not a valid TOML file"),
    ("[[column]]\nname = 'a'\ndevice = 'qemu:colour=red'\n", "unknown qemu option"),
])
def test_bad_columns_file_is_exit_2_one_line(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "cols.toml"
    f.write_text(text)
    r = _cli("--columns", str(f), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "matrix.json").exists()  # nothing ran


def test_clause_family_is_a_word_of_the_name_or_the_most_judged_area() -> None:
    areas = {c.id.split(".")[2] for c in catalog()}
    assert clause_family("spec/stats-linux-6.12-le", [], areas) == "stats"
    assert clause_family("spec/deflate-on-oom-be", [], areas) == "deflate"
    assert clause_family("spec/must-tell-host-le", ["spec.device.config.a",
                                                    "spec.device.config.b",
                                                    "spec.device.pfns.c"], areas) == "config"
    assert clause_family("v3/linux-v3-exact-le", [], areas) == "other"


# --------------------------------------------------------------------------- the published one
def test_docs_matrix_is_generated_from_the_committed_json() -> None:
    """docs/matrix.md and docs/matrix/matrix.html are what the committed matrix.json gives,
    the documented command included, and the matrix has the columns issue 15 asks for."""
    doc = load_matrix(COMMITTED)
    stale = f"docs/matrix* are stale: run `{REGENERATE}`"
    assert (ROOT / "docs" / "matrix.md").read_text() == to_markdown(doc, REGENERATE), stale
    assert (ROOT / "docs" / "matrix" / "matrix.html").read_text() == to_html(doc), stale
    cols = {c["name"]: c for c in doc["columns"]}
    names = [c["name"] for c in tomllib.loads(COLUMNS.read_text())["column"]]
    assert list(cols) == names
    assert all(c["status"] == "complete" for c in cols.values()), cols


def _compare_columns(prefix: str, tmp_path: Path) -> None:
    names = [c["name"] for c in tomllib.loads(COLUMNS.read_text())["column"]
             if c["name"].startswith(prefix)]
    assert len(names) >= 2
    only = [a for n in names for a in ("--only", n)]
    r = _cli("--columns", str(COLUMNS), *only, "-j", "4", "-o", str(tmp_path),
             "--compare", str(COMMITTED), "--json")
    summary = json.loads(r.stdout)
    assert summary["differences"] == [] and r.returncode == 0, (summary, r.stderr)
    assert [c["name"] for c in summary["columns"]] == names


@pytest.mark.qemu
def test_committed_matrix_verdicts_hold_for_qemu_7_2(tmp_path: Path) -> None:
    """CI's check: the QEMU 7.2 columns of conformance/matrix.toml, run now, give the verdicts
    of docs/matrix/matrix.json (outcome and broken clauses of every cell)."""
    _compare_columns("qemu-7.2", tmp_path)


@pytest.mark.qemu
def test_committed_matrix_verdicts_hold_for_qemu_10_0(tmp_path: Path) -> None:
    """The same for the QEMU 10.0.2 columns, when the backport is fetched (.ci/run fetches it;
    offline this skips with the fetch's own reason)."""
    from virtio_balloon_proto.errors import PeerError
    from virtio_balloon_proto.qemu import builds

    try:
        builds.find_build("10.0")
    except PeerError as e:
        pytest.skip(f"QEMU 10.0 backport not available: {e}")
    _compare_columns("qemu-10.0", tmp_path)


# --------------------------------------------------------------------------- 1400 px
PROBE = """<script>
(function(){
  var se = document.scrollingElement, boxes = document.querySelectorAll('.matrix');
  var over = [];
  boxes.forEach(function(b){ if (b.scrollWidth > b.clientWidth) over.push(b.scrollWidth); });
  var heads = document.querySelectorAll('table.mx thead th').length;
  var cell = document.querySelector('table.mx tbody td');
  document.body.setAttribute('data-probe', JSON.stringify({
    scrollWidth: se.scrollWidth, clientWidth: se.clientWidth, innerWidth: window.innerWidth,
    matrices: boxes.length, matricesTooWide: over, heads: heads,
    cellWidth: cell.getBoundingClientRect().width,
    stickyTop: getComputedStyle(document.querySelector('.matrix thead th')).position}));
})();
</script>"""


@pytest.mark.chromium
def test_matrix_html_reads_at_1400px_in_headless_chromium(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "headless Chromium is needed: apt-get install chromium (.ci/run does)"
    doc = load_matrix(COMMITTED)
    page = to_html(doc)
    (tmp_path / "probe.html").write_text(page.replace("</body>", PROBE + "</body>"))
    base = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000"]
    dom = subprocess.run([*base, "--dump-dom", (tmp_path / "probe.html").as_uri()],
                         capture_output=True, text=True, timeout=120, check=False,
                         stdin=subprocess.DEVNULL)
    m = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert m, dom.stderr[-2000:]
    probe: dict[str, Any] = json.loads(m.group(1).replace("&quot;", '"'))
    assert probe["innerWidth"] == 1400, probe
    # the page never scrolls sideways, nor does any table box; one head per device + corner
    assert probe["scrollWidth"] <= probe["clientWidth"], probe
    assert probe["matricesTooWide"] == [], probe
    assert probe["heads"] == len(doc["columns"]) + 1, probe
    assert probe["cellWidth"] >= 100, probe  # a cell is wide enough to read its verdict
    assert probe["stickyTop"] == "sticky", probe
