"""What every vbproto command promises a script: --json (errors too), one-line usage errors,
help text on every option, click.Choice for every fixed set, exit codes in --help, and exit
statuses that mean evidence."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from virtio_balloon_proto.cli import main

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
VBPROTO = [sys.executable, "-m", "virtio_balloon_proto"]
sys.path.insert(0, str(TESTS))


def _cli(*args: str, cwd: Path | None = None, timeout: float = 120,
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VBPROTO, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, check=False)


def _commands(cmd: click.Command = main, path: tuple[str, ...] = ("vbproto",),
              ) -> Iterator[tuple[str, click.Command]]:
    yield " ".join(path), cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))


LEAVES = [(p, c) for p, c in _commands() if not isinstance(c, click.Group)]


@pytest.mark.parametrize("path,cmd", LEAVES, ids=[p for p, _ in LEAVES])
def test_every_command_has_json_help_text_and_exit_codes(path: str, cmd: click.Command) -> None:
    opts = [p for p in cmd.params if isinstance(p, click.Option)]
    assert any("--json" in o.opts for o in opts), f"{path} has no --json"
    assert [o.opts for o in opts if not o.help] == [], f"{path}: options without help text"
    for o in opts:
        if "--profile" in o.opts:
            assert isinstance(o.type, click.Choice), f"{path} --profile is free text"
            assert list(o.type.choices) == ["spec", "v3", "hybrid"]
    ctx = click.Context(cmd, info_name=path)
    assert "Exit status" in cmd.get_help(ctx) and "130" in cmd.get_help(ctx)


def test_synth_help_lists_every_scenario() -> None:
    from virtio_balloon_proto.models.synth import SCENARIOS

    r = _cli("trace", "synth", "--help")
    flat = "".join(r.stdout.split())
    assert r.returncode == 0 and all(name in flat for name in SCENARIOS), r.stdout


@pytest.mark.parametrize("args", [
    ["conform", "run", "--nope"],
    ["conform", "clauses", "--profile", "v4"],
    ["trace", "synth", "--scenario", "nope", "-o", "x"],
    ["message", "decode"],
])
def test_usage_errors_are_one_line_exit_2(args: list[str]) -> None:
    r = _cli(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("vbproto: error: ") and "--help" in r.stderr
    j = _cli(*args, "--json")
    assert j.returncode == 2 and j.stderr == ""
    assert json.loads(j.stdout)["error"], j.stdout


def test_a_bare_group_shows_its_help() -> None:
    r = _cli("conform")
    assert r.returncode == 2 and r.stderr.startswith("Usage: vbproto conform")
    assert "Commands:" in r.stderr and "vbproto: error" not in r.stderr


def test_json_errors_carry_field_and_offset(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    for args in (["trace", "validate", str(empty)], ["decode", str(empty)]):
        r = _cli(*args)
        assert r.returncode == 2 and "empty file: no header record" in r.stderr  # not "valid"
        j = _cli(*args, "--json")
        err = json.loads(j.stdout)
        assert j.returncode == 2 and set(err) >= {"error", "field", "offset"}
        assert err["error"] == "empty file: no header record"
    j = _cli("message", "decode", "--kind", "pfns", "--json", "zz")
    assert json.loads(j.stdout)["field"] == "input" and j.returncode == 2
    (tmp_path / "file").write_text("")
    bad = str(tmp_path / "file" / "x.jsonl")
    j = _cli("capture", "qemu-guest", "--json", "-o", bad)  # checked before any guest boots
    assert j.returncode == 2 and json.loads(j.stdout)["path"] == bad


def test_json_outputs(tmp_path: Path) -> None:
    from test_qemu_tracelog import LOG

    r = _cli("trace", "synth", "--json", "-o", str(tmp_path / "t.jsonl"))
    assert json.loads(r.stdout) == {"wrote": str(tmp_path / "t.jsonl"), "events": 19}
    r = _cli("trace", "validate", "--json", str(tmp_path / "t.jsonl"))
    assert json.loads(r.stdout)["valid"] is True and r.returncode == 0
    (tmp_path / "trace.log").write_text(LOG)
    r = _cli("trace", "import", "qemu-log", str(tmp_path / "trace.log"), "--profile", "spec",
             "-o", str(tmp_path / "log.jsonl"), "--json")
    assert json.loads(r.stdout)["events"] > 0 and r.returncode == 0, r.stderr
    r = _cli("message", "encode", "--kind", "pfns", "--json", '{"pages": [[1, 2]]}')
    assert json.loads(r.stdout) == {"hex": "0100000002000000", "bytes": 8}
    r = _cli("vectors", "verify", "--json")
    data = json.loads(r.stdout)
    assert r.returncode == 0 and data["counts"]["failed"] == 0 and data["exit_code"] == 0
    r = _cli("conform", "run", "--json", "--case", "spec/inflate*")
    report = json.loads(r.stdout)  # the whole of stdout: the summary went to stderr
    assert report["format"] == "vbproto-conformance-report/1" and report["exit_code"] == 0
    assert "CONFORMANCE PASSED" in r.stderr
    r = _cli("conform", "check", "--json", str(tmp_path / "t.jsonl"))
    assert json.loads(r.stdout)["exit_code"] == r.returncode == 0


def test_trace_validate_invalid_is_exit_1_json(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    assert _cli("trace", "synth", "-o", str(p)).returncode == 0
    p.write_text(p.read_text() + '{"type":"status","value":999}\n')
    r = _cli("trace", "validate", "--json", str(p))
    data = json.loads(r.stdout)
    assert r.returncode == 1 and data["valid"] is False and data["problems"][0]["line"] == 21


def test_vectors_verify_that_skips_everything_tested_nothing() -> None:
    codec = f"stdio:{sys.executable} {TESTS / 'vectors_broken_codec.py'} exit-127"
    r = _cli("vectors", "verify", "--impl", codec)
    assert r.returncode == 1 and "nothing tested" in r.stdout


def test_conform_check_of_a_trace_no_clause_applies_to_is_nothing_tested(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    assert _cli("trace", "synth", "-o", str(p)).returncode == 0
    p.write_text(p.read_text().splitlines()[0] + "\n")  # the header alone
    r = _cli("conform", "check", str(p))
    assert r.returncode == 1 and "nothing tested: no clause applied" in r.stdout


def test_synth_memory_is_bounded() -> None:
    r = _cli("trace", "synth", "--memory", "99999999999", "-o", "/dev/null")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "--memory" in r.stderr
    # a 1,024-page scenario in a 1,000,000 MiB guest: memory follows the work (was 2 GB RSS)
    probe = ("import resource, subprocess, sys; "
             "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *VBPROTO, "trace", "synth", "--memory",
                          "1000000", "-o", "/dev/null"], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    code, maxrss_kib = int(out[0]), int(out[1])
    assert code == 0 and maxrss_kib < 400 * 1024, maxrss_kib


@pytest.mark.parametrize("value", ["nan", "inf", "1e300", "0", "-1", "x"])
@pytest.mark.parametrize("cmd", [("conform", "run", "--device", "stdio:sleep 100"),
                                 ("vectors", "verify", "--impl", "stdio:sleep 100")])
def test_a_timeout_that_is_not_a_finite_positive_number_is_bad_usage(
        cmd: tuple[str, ...], value: str) -> None:
    """nan reached select() as a ValueError traceback, 1e300/inf as an OverflowError."""
    r = _cli(*cmd, "--timeout", value, timeout=30)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--timeout" in r.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [("conform", "clauses", "--json"),
                                  ("vectors", "verify", "--json")])
def test_json_to_a_full_stdout_is_one_line_on_stderr(args: tuple[str, ...]) -> None:
    """Under --json the error went to the same broken stdout: an OSError traceback, exit 1."""
    with open("/dev/full", "w") as full:
        r = subprocess.run([*VBPROTO, *args], stdout=full, stderr=subprocess.PIPE, text=True,
                           timeout=120, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr == "vbproto: error: No space left on device\n", r.stderr


def test_a_choice_error_is_one_line_without_tabs() -> None:
    r = _cli("trace", "synth", "--json", "--profile", "v4", "-o", "x.jsonl")
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert "\t" not in doc["error"] and "\n" not in doc["error"], doc
