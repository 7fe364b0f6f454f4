"""vbproto conform CLI (exit codes, reports, SIGTERM) and the pytest plugin."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import conform_doubles as d

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = f"stdio:{sys.executable} {ROOT / 'examples' / 'stdio_testee.py'}"
# the CLI as the interpreter running the tests sees it: never a console script from PATH
VBPROTO = [sys.executable, "-m", "virtio_balloon_proto"]
FAULTY = f"stdio:{sys.executable} {Path(__file__).parent / 'conform_testees' / 'faulty_testee.py'}"


def vbproto(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VBPROTO, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    c = tmp_path / "corpus"
    (c / "spec").mkdir(parents=True)
    d.spec_trace(c / "spec" / "basic.jsonl")
    d.spec_trace(c / "spec" / "be.jsonl", endian="be")
    return c


def test_clauses_json() -> None:
    r = vbproto("conform", "clauses", "--json")
    assert r.returncode == 0
    data = json.loads(r.stdout)
    by_id = {c["id"]: c for c in data["clauses"]}
    assert by_id["spec.device.inflate.acks-buffer"]["checks"] >= 1
    assert data["errata"][0]["id"] == "E1"


def test_run_pass_and_reports(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    r = vbproto(
        "conform",
        "run",
        "--device",
        EXAMPLE,
        "--corpus",
        str(corpus),
        "--junit",
        f"{out}.xml",
        "--html",
        f"{out}.html",
        "--report-json",
        f"{out}.json",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "CONFORMANCE PASSED: 2 case(s)" in r.stdout
    data = json.loads(Path(f"{out}.json").read_text())
    assert data["partial"] is False and set(data["index"]) == {"spec/basic", "spec/be"}


def test_run_failure_prints_update_command(corpus: Path, tmp_path: Path) -> None:
    kf = tmp_path / "kf.toml"
    kf.write_text("")  # an empty list (a missing file is a usage error)
    r = vbproto(
        "conform",
        "run",
        "--device",
        f"{FAULTY} wrong-id",
        "--corpus",
        str(corpus),
        "--known-failures",
        str(kf),
    )
    assert r.returncode == 1
    assert "spec.device.used.id-is-head" in r.stdout
    cmd = r.stdout.strip().splitlines()[-1].strip()
    assert cmd.startswith("vbproto conform run") and cmd.endswith("--update-known-failures")
    # the hint is for a shell where vbproto is installed; run its arguments through this Python
    argv = shlex.split(cmd)
    assert argv[0] == "vbproto"
    upd = subprocess.run([*VBPROTO, *argv[1:]], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert upd.returncode == 0 and "id-is-head" in kf.read_text()
    again = vbproto(
        "conform",
        "run",
        "--device",
        f"{FAULTY} wrong-id",
        "--corpus",
        str(corpus),
        "--known-failures",
        str(kf),
    )
    assert again.returncode == 0, again.stdout
    assert "2 expected-failure" in again.stdout
    # the example device passes what is listed: unexpected pass fails the run
    fixed = vbproto(
        "conform", "run", "--device", EXAMPLE, "--corpus", str(corpus), "--known-failures", str(kf)
    )
    assert fixed.returncode == 1 and "unexpected-pass" in fixed.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--device", "bogus"],
        ["--corpus", "/nonexistent"],
        ["--timeout", "0"],
        ["--profile", "v9"],
        ["--update-known-failures"],
    ],
)
def test_bad_usage_exit_2(args: list[str], corpus: Path) -> None:
    r = vbproto("conform", "run", "--corpus", str(corpus), *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_bad_trace_exit_2(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text("not json\n")
    r = vbproto("conform", "check", str(tmp_path / "x.jsonl"))
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_sigterm_leaves_partial_reports(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(3):
        d.spec_trace(corpus / f"c{i}.jsonl")
    report = tmp_path / "r.json"
    # the hang testee blocks on the first deflate of each case (timeout 30 s), so the run is
    # mid-case when SIGTERM arrives
    proc = subprocess.Popen(
        [
            *VBPROTO,
            "conform",
            "run",
            "--device",
            f"{FAULTY} hang",
            "--corpus",
            str(corpus),
            "--timeout",
            "30",
            "--report-json",
            str(report),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the report exists from the run's first moment; once it does, the run is past start-up
    # (a fixed sleep raced the interpreter's start-up on a loaded machine)
    deadline = time.monotonic() + 60
    while not report.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert report.exists(), "the run never wrote its first report"
    time.sleep(1)  # into the first case, where the hang testee blocks
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    data = json.loads(report.read_text())
    assert data["partial"] is True and data["planned"] == 3
    assert len(data["cases"]) < 3
    assert data["exit_code"] == 130  # what the process returned


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_at_once_leaves_a_valid_empty_partial_report(tmp_path: Path,
                                                               sig: signal.Signals) -> None:
    """The report exists from the first moment: a signal before any case ends still finds
    a valid (empty, partial) report, and the report carries the process's exit status."""
    corpus = tmp_path / "c"
    corpus.mkdir()
    d.spec_trace(corpus / "c0.jsonl")
    report = tmp_path / "r.json"
    proc = subprocess.Popen(
        [*VBPROTO, "conform", "run", "--device", f"{FAULTY} hang", "--corpus", str(corpus),
         "--timeout", "30", "--report-json", str(report)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert report.exists(), "no report before the first case ended"
    assert json.loads(report.read_text())["cases"] == []  # the empty partial report is valid
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    data = json.loads(report.read_text())
    assert (data["partial"], data["exit_code"], data["cases"]) == (True, 130, [])


def test_nothing_matched_is_exit_1_nothing_tested() -> None:
    r = vbproto("conform", "run", "--case", "nothing*")
    assert r.returncode == 1, r.stderr
    assert "nothing tested: no case matched" in r.stdout


def test_every_case_unsupported_is_exit_1_and_names_what_is_lacking() -> None:
    r = vbproto("conform", "run", "--device", EXAMPLE, "--profile", "v3")
    assert r.returncode == 1, r.stderr
    assert "nothing tested: every case is unsupported by the device; it lacks:" in r.stdout
    assert "profile v3" in r.stdout


def test_missing_known_failures_file_is_exit_2(tmp_path: Path) -> None:
    r = vbproto("conform", "run", "--known-failures", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "nope.toml" in r.stderr and len(r.stderr.splitlines()) == 1


def test_pytest_plugin_inactive_without_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    assert True\n")
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)


def test_pytest_plugin_one_test_per_case(pytester: pytest.Pytester, corpus: Path) -> None:
    res = pytester.runpytest_subprocess(
        "--vbproto-device", EXAMPLE, "--vbproto-corpus", str(corpus), "-v", "-p", "no:cacheprovider"
    )
    res.assert_outcomes(passed=2)
    res.stdout.fnmatch_lines(["*vbproto?spec/basic?*PASSED*"])
    bad = pytester.runpytest_subprocess(
        "--vbproto-device",
        f"{FAULTY} wrong-id",
        "--vbproto-corpus",
        str(corpus),
        "-p",
        "no:cacheprovider",
    )
    bad.assert_outcomes(failed=2)
    bad.stdout.fnmatch_lines(["*spec.device.used.id-is-head*"])


#: a child that runs ``python -m virtio_balloon_proto conform clauses`` and signals itself the
#: moment the CLI module starts importing: deterministic, where a timed signal from outside lands
#: in the interpreter's own start-up under load (that moment no program can handle)
_SIGNAL_WHILE_IMPORTING = """
import importlib.abc, os, runpy, sys
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "virtio_balloon_proto.cli":
            os.kill(os.getpid(), {sig})
        return None
sys.meta_path.insert(0, Hook())
sys.argv = ["vbproto", "conform", "clauses"]
runpy.run_module("virtio_balloon_proto", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_while_starting_up_is_one_line_and_130(sig: signal.Signals) -> None:
    """A signal while the CLI is still importing (before its handlers exist) was a
    KeyboardInterrupt traceback (SIGINT) or status -15 (SIGTERM)."""
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_WHILE_IMPORTING.format(sig=int(sig))],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    err = proc.stderr
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip() == "vbproto: interrupted", err


def test_save_traces_into_an_unwritable_place_is_bad_usage_before_the_run(tmp_path: Path
                                                                          ) -> None:
    """It was the device's fault: every case failed suite.device.transport (PermissionError)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = vbproto("conform", "run", "--case", "spec/inflate-le", "--save-traces",
                str(blocker / "traces"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("vbproto: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "suite.device.transport" not in r.stdout
