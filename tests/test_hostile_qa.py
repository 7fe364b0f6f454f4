"""Hostile inputs qa found at the end of the session: matrix files that are not regular files,
and a QMP peer that nests JSON without end. Each gets one clear error (exit 2 for the CLI, the
project's PeerError for the QMP client), never a traceback or unbounded memory."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from virtio_balloon_proto.errors import PeerError
from virtio_balloon_proto.qemu.channel import LineChannel
from virtio_balloon_proto.qemu.qmp import QmpClient

ROOT = Path(__file__).resolve().parents[1]
VBPROTO = [sys.executable, "-m", "virtio_balloon_proto"]


@pytest.mark.parametrize("flag", ["--columns", "--compare"])
def test_matrix_refuses_dev_zero_with_one_json_line(tmp_path: Path, flag: str) -> None:
    args = [*VBPROTO, "conform", "matrix", "--json", "-o", str(tmp_path / "m")]
    args += ["--columns", "/dev/zero"] if flag == "--columns" else [
        "--device", "reference", "--compare", "/dev/zero"]
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and "error" in json.loads(lines[0])
    assert "Traceback" not in p.stderr


def test_qmp_client_refuses_endless_nesting() -> None:
    ours, theirs = socket.socketpair()

    def peer() -> None:
        with theirs:
            theirs.sendall(b"[" * 10_000_000 + b"\n")

    t = threading.Thread(target=peer)
    t.start()
    client = QmpClient(LineChannel(ours, "qmp", timeout=30, diagnose=lambda: ""))
    with pytest.raises(PeerError) as e:
        client.handshake()
    t.join()
    ours.close()
    assert "invalid JSON" in str(e.value)


@pytest.mark.parametrize("args", [
    ["capture", "attach", "--qmp", "/nonexistent", "-o", "x.jsonl", "--record", "nan"],
    ["conform", "run", "--report-every", "nan"],
    ["analyze", "--density", "nan"],
])
def test_a_range_option_refuses_nan(tmp_path: Path, args: list[str]) -> None:
    """qa: `capture attach --record nan` passed the range check (nan compares false) and died
    in time.sleep(nan) with QEMU's trace events already on."""
    p = subprocess.run([*VBPROTO, *args, "--json"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "not a number" in json.loads(p.stdout.strip().splitlines()[-1])["error"]
    assert "Traceback" not in p.stderr
