"""qa's small defects of issue 12 (/work/wt/qa.md items 3, 9/12, 17, 19, 20): a float where the
trace format has an integer, a doubled word in JSON errors, OSError texts that did not say
which option's path failed, a symlink output that created directories where it pointed, and
qemu device options given twice or empty."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from virtio_balloon_proto.conformance.qemu_options import parse_options
from virtio_balloon_proto.errors import TraceError, UsageError
from virtio_balloon_proto.io import Output, check_writable
from virtio_balloon_proto.limits import loads_json
from virtio_balloon_proto.trace import TraceReader
from virtio_balloon_proto.trace.reader import validate_trace

ROOT = Path(__file__).resolve().parents[1]
VBPROTO = [sys.executable, "-m", "virtio_balloon_proto"]
TRACE = ROOT / "conformance" / "traces" / "fuzz" / "inflate-zero-length-le.jsonl"


def _run(*args: str, cwd: Path = ROOT) -> tuple[int, dict[str, object]]:
    p = subprocess.run([*VBPROTO, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, p.stdout
    return p.returncode, json.loads(lines[0])


def _header_12(window: str) -> bytes:
    lines = TRACE.read_bytes().splitlines(keepends=True)
    head = json.loads(lines[0])
    head["format"] = "vbproto-trace/1.2"
    text = json.dumps(head)[:-1] + f', "window": {window}}}\n'
    return text.encode() + b"".join(lines[1:])


@pytest.mark.parametrize(("edit", "path"), [
    ("window", "window/host_page_size"),
    ("page_size", "page_size"),
    ("event", "value"),
])
def test_a_float_where_the_trace_has_an_integer_is_refused(tmp_path: Path, edit: str,
                                                           path: str) -> None:
    """JSON Schema 2020-12 counts 4096.0 as the integer 4096, so the schema let
    ``host_page_size: 4096.0`` through; the reader refuses any float but ``ts``."""
    t = tmp_path / "t.jsonl"
    good = '{"start": "reset", "end": "quiesced", "host_page_size": 4096}'
    if edit == "window":
        t.write_bytes(_header_12(good.replace("4096", "4096.0")))
    elif edit == "page_size":
        t.write_bytes(TRACE.read_bytes().replace(b'"page_size":4096', b'"page_size":4096.0',
                                                 1))
    else:
        t.write_bytes(TRACE.read_bytes().replace(b'"value":0', b'"value":0e0', 1))
    problems = validate_trace(t) if edit == "event" else None
    if problems is not None:
        assert [p.message.split(":")[0] for p in problems] == [path]
    else:
        with pytest.raises(TraceError, match=f"not a trace: line 1: {path}: 4096.0 is not an "
                                             "integer"):
            validate_trace(t)
    code, out = _run("trace", "validate", "--json", str(t))
    assert code in (1, 2) and path in json.dumps(out)
    # the same trace with integers, and a float ts, is valid
    ok = tmp_path / "ok.jsonl"
    ok.write_bytes(_header_12(good).replace(b'"value":0', b'"value":0,"ts":1.5', 1))
    assert validate_trace(ok) == []
    with TraceReader(ok) as r:
        assert r.header.window is not None and r.header.window.host_page_size == 4096
        assert next(e.ts for e in r.events()) == 1.5


def test_a_json_error_says_at_once() -> None:
    with pytest.raises(UsageError) as exc:
        loads_json(b'{"a": "abc', what="record")
    assert exc.value.message == "record is not JSON: Unterminated string starting at char 6"


def test_output_path_errors_name_the_option(tmp_path: Path) -> None:
    """A raw "Not a directory" / "File exists" did not say which of the paths failed."""
    code, out = _run("conform", "matrix", "--json", "-o", os.devnull, "--device", "reference",
                     "--case", "spec/inflate-le")
    assert code == 2 and out["field"] == "--out"
    assert str(out["error"]).startswith(f"--out {os.devnull}/matrix.json: Not a directory")
    dangling = tmp_path / "dang"
    dangling.symlink_to(tmp_path / "missing" / "x")
    code, out = _run("fuzz", "--json", "--out", str(dangling), "--device", "reference",
                     "--sequences", "1")
    # (fuzz checks --out itself before the run: field "out"; the generic handler says "--out")
    assert code == 2 and out["field"] in ("out", "--out") and str(out["error"]).startswith(
        "--out ")
    code, out = _run("message", "decode", "--json", "--kind", "pfns", f"@{tmp_path}/none")
    assert code == 2 and "No such file" in str(out["error"])


def test_an_output_symlink_into_a_missing_directory_is_refused(tmp_path: Path) -> None:
    """``-o LINK`` whose target lies in a missing directory created that directory wherever
    the link pointed; now it is refused and nothing is created.  A link to a missing file in
    an existing directory is still written through."""
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nodir" / "sub" / "out.jsonl")
    with pytest.raises(OSError, match=r"symlink .* directory that does not exist"):
        check_writable(link)
    with pytest.raises(OSError, match="symlink"):
        Output(link)
    assert not (tmp_path / "nodir").exists()
    code, out = _run("capture", "attach", "--json", "--qmp", str(tmp_path / "nosock"),
                     "-o", str(link))
    assert code == 2 and out["field"] == "--out" and "symlink" in str(out["error"])
    assert not (tmp_path / "nodir").exists()
    ok = tmp_path / "ok"
    ok.symlink_to(tmp_path / "target.txt")
    with Output(ok) as o:
        o.write(b"hello")
    assert (tmp_path / "target.txt").read_bytes() == b"hello" and ok.is_symlink()
    # a missing directory of a plain path is still created, as before
    with Output(tmp_path / "new" / "dir" / "f") as o:
        o.write(b"x")
    assert (tmp_path / "new" / "dir" / "f").read_bytes() == b"x"


@pytest.mark.parametrize(("spec", "says"), [
    ("qemu:transport=modern,transport=legacy", "'transport' is given twice"),
    ("qemu:build=", "build= has no value"),
    ("qemu:transport= ", "transport= has no value"),
])
def test_qemu_options_refuse_a_key_twice_and_an_empty_value(spec: str, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        parse_options(spec)
    code, out = _run("conform", "run", "--json", "--case", "spec/inflate-le", "--device", spec)
    assert code == 2 and says in str(out["error"]) and out["field"] == "device"
    assert parse_options("qemu:transport=legacy,deflate-on-oom=on") == {
        "transport": "legacy", "deflate-on-oom": "on"}
