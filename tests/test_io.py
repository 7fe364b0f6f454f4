"""The output contract: atomic writes, stdout, devices and FIFOs in place, symlinks written
through, the umask, errors naming the user's path, outputs checked before long work."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from virtio_balloon_proto.io import check_writable, write_atomic


def test_creates_parent_directories_and_ordinary_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out" / "reports" / "r.json"
    write_atomic(target, "{}\n")
    assert target.read_text() == "{}\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "r.bin"
    write_atomic(target, b"old")

    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.bin"]


# ---- the output contract (virtio_balloon_proto.io), through the library and the CLI ----
VBPROTO = [sys.executable, "-m", "virtio_balloon_proto"]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VBPROTO, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, check=False)


def test_dash_is_stdout(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    write_atomic("-", b"to stdout\n")
    assert capfdbinary.readouterr().out == b"to stdout\n"
    assert not Path("-").exists()


def test_device_is_written_not_replaced() -> None:
    write_atomic("/dev/null", b"x" * 100)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(OSError, match="/dev/full") as err:
        write_atomic("/dev/full", b"x" * 100)
    assert err.value.filename == "/dev/full" and stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_fifo_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_atomic(fifo, b"through the fifo")
    reader.join(10)
    assert got == [b"through the fifo"] and stat.S_ISFIFO(fifo.lstat().st_mode)


def test_symlink_is_written_through_next_to_its_target(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "r.json"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["r.json"]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "real" / "new.json")
    write_atomic(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "real" / "new.json").read_text() == "made"


def test_new_files_follow_the_umask(tmp_path: Path) -> None:
    from virtio_balloon_proto.trace import TraceHeader, TraceWriter

    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "r.json", "{}")
        header = TraceHeader(profile="spec", features_offered=0, features_negotiated=0)
        with TraceWriter(tmp_path / "t.jsonl", header):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "t.jsonl").stat().st_mode & 0o777 == 0o640  # traces were 0600


def test_errors_name_the_users_path_not_a_temporary(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    bad = tmp_path / "file" / "r.json"  # a parent that is not a directory
    with pytest.raises(OSError) as err:
        write_atomic(bad, "x")
    assert err.value.filename == str(bad) and ".tmp" not in str(err.value)
    with pytest.raises(OSError) as err:
        check_writable(bad)
    assert err.value.filename == str(bad)
    with pytest.raises(OSError, match="is a directory"):
        check_writable(tmp_path)


def test_cli_report_json_dash_prints_the_json(tmp_path: Path) -> None:
    r = _cli("conform", "run", "--case", "spec/inflate*", "--report-json", "-", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)  # the whole of stdout is the report; the summary is on stderr
    assert data["partial"] is False and data["exit_code"] == 0 and data["counts"]["pass"] >= 1
    assert "CONFORMANCE PASSED" in r.stderr and not (tmp_path / "-").exists()


def test_cli_outputs_to_dev_null_leave_it_a_device(tmp_path: Path) -> None:
    r = _cli("trace", "synth", "-o", "/dev/null")
    assert r.returncode == 0, r.stderr
    r = _cli("conform", "run", "--case", "spec/inflate*", "--report-json", "/dev/null",
             "--junit", "/dev/null")
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    r = _cli("conform", "run", "--case", "spec/inflate*", "--report-json", "/dev/full")
    assert r.returncode == 2 and r.stderr.strip() == (
        "vbproto: error: --report-json /dev/full: No space left on device")  # names the option


def test_cli_symlinked_report_updates_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_text("old")
    (tmp_path / "link.json").symlink_to("target.json")
    r = _cli("conform", "run", "--case", "spec/inflate*", "--report-json", "link.json",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "link.json").is_symlink()
    assert json.loads(target.read_text())["format"] == "vbproto-conformance-report/1"


def test_cli_output_is_checked_before_long_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    bad = str(tmp_path / "file" / "out.jsonl")
    # capture: the output is checked before the kernel is even looked at (no guest boots)
    r = _cli("capture", "qemu-guest", "--kernel", str(tmp_path / "no-kernel"), "-o", bad)
    assert r.returncode == 2 and r.stderr.startswith(f"vbproto: error: --out {bad}:"), r.stderr
    for args in (["trace", "synth", "--pages", "1024", "-o", bad],
                 ["conform", "run", "--report-json", bad],
                 ["analyze", "--shape", "sparse", "--plot", bad]):
        r = _cli(*args)
        option = {"-o": "--out"}.get(args[-2], args[-2])  # the error names the option
        assert r.returncode == 2 and r.stderr.startswith(f"vbproto: error: {option} {bad}:"), (
            args, r)


def test_cli_report_json_dev_stdout_is_written_through_not_replaced() -> None:
    # as root this once replaced the machine's /dev/stdout symlink with a regular file
    r = _cli("conform", "run", "--case", "spec/inflate*", "--report-json", "/dev/stdout")
    assert r.returncode == 0, r.stderr
    assert os.path.islink("/dev/stdout")
    start = r.stdout.index("{")
    data, _ = json.JSONDecoder().raw_decode(r.stdout[start:])
    assert data["format"] == "vbproto-conformance-report/1" and data["exit_code"] == 0
