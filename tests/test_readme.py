"""Every command README shows runs here, as typed, with the input files it names made first.

README's ``sh`` blocks are split into commands (backslash continuations joined, comments
dropped).  Each command must have an entry in ``COMMANDS`` below (and each entry must still be
in README), so a command added to README without a test, or a test left behind by an edited
README, fails.  A command runs under ``bash -euo pipefail`` in a scratch directory, with a
``PATH`` this test builds: a ``vbproto`` and a ``python3`` that run *this* interpreter (the venv
under test), then ``/usr/bin:/bin``.  Nothing is taken from the caller's ``PATH``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))


def readme_commands(text: str) -> list[str]:
    """The commands of every ```sh block of ``text``: continuations joined, comments dropped."""
    cmds: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        logical = ""
        for raw in block.splitlines():
            line = raw.rstrip()
            if not logical and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                logical += line[:-1].rstrip() + " "
                continue
            logical += line.strip()
            logical = re.split(r"\s+#\s", logical, maxsplit=1)[0].strip()
            cmds.append(" ".join(logical.split()))
            logical = ""
    return cmds


# ---- inputs the commands name ----
def _hdr_and_bitmap(work: Path) -> None:
    from test_cli_message import BE_BITMAP, BE_HDR

    (work / "hdr_and_bitmap.bin").write_bytes(BE_HDR + BE_BITMAP)


# README's split-ring example: a 128-entry modern ring at desc 0x1000 (0x800 bytes),
# avail 0x1800 (262 bytes), used 0x2000 (1030 bytes), in a 64 KiB dump mapped at GPA 0
RING_DESC, RING_AVAIL, RING_USED, RING_SIZE = 0x1000, 0x1800, 0x2000, 128
PFNS_DONE = (0x8000, 0x8001, 0x8002, 0x8003)
PFNS_PENDING = (0x9000, 0x9ABC)


def _dump(work: Path) -> None:
    """Two inflate chains published, the first one used: laid by hand from the C structs."""
    mem = bytearray(0x10000)

    def put(gpa: int, data: bytes) -> None:
        mem[gpa : gpa + len(data)] = data

    put(0x4000, struct.pack(f"<{len(PFNS_DONE)}I", *PFNS_DONE))
    put(0x4100, struct.pack(f"<{len(PFNS_PENDING)}I", *PFNS_PENDING))
    put(RING_DESC + 16 * 0, struct.pack("<QIHH", 0x4000, 4 * len(PFNS_DONE), 0, 0))
    put(RING_DESC + 16 * 1, struct.pack("<QIHH", 0x4100, 4 * len(PFNS_PENDING), 0, 0))
    put(RING_AVAIL, struct.pack("<HH2H", 0, 2, 0, 1))  # idx 2, ring = [0, 1]
    put(RING_USED, struct.pack("<HHII", 0, 1, 0, 0))  # idx 1, {id 0, len 0}
    (work / "dump.bin").write_bytes(bytes(mem))


def _qemu_core(work: Path) -> None:
    """A real QEMU balloon's RAM as an ELF core, and QMP's status of queues 0 and 1."""
    from virtio_balloon_proto.qemu.device import QemuBalloon

    with QemuBalloon(memory="64M", workdir=work / "qemu") as qb:
        qb.negotiate()
        qb.setup_queues()
        assert len(qb.exchange("inflate", [struct.pack("<2I", 0x2000, 0x2001)])) == 1
        qb.post("inflate", [struct.pack("<3I", 0x3000, 0x3001, 0x3ABC)], notify=False)
        for i in (0, 1):
            (work / f"q{i}.json").write_text(json.dumps(qb.queue_status(i)))
        qb.qmp("dump-guest-memory", {"paging": False, "protocol": f"file:{work / 'guest.core'}"})


def _trace_log(work: Path) -> None:
    from test_qemu_tracelog import LOG

    (work / "trace.log").write_text(LOG)


def _my_device(work: Path) -> None:
    """``./my-device --testee``: the example stdio testee (it ignores its arguments)."""
    _script(work / "my-device", f"exec {sys.executable} {ROOT / 'examples' / 'stdio_testee.py'}")


def _my_codec(work: Path) -> None:
    """``./my-codec``: a stdio codec answering with the reference handler."""
    code = ("import sys; from virtio_balloon_proto.vectorgen.reference import handle; "
            "from virtio_balloon_proto.vectorgen.stdio import serve; "
            "serve(handle, sys.stdin.buffer, sys.stdout.buffer)")
    _script(work / "my-codec", f"exec {sys.executable} -c '{code}'")


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _repo_links(work: Path) -> None:
    """conformance/, tools/, examples/ and guest/ of this checkout, as the commands name them."""
    for name in ("conformance", "tools", "examples"):
        (work / name).symlink_to(ROOT / name)
    (ROOT / "guest").mkdir(exist_ok=True)
    (work / "guest").symlink_to(ROOT / "guest")


@dataclass(frozen=True)
class Cmd:
    """How to run one README command: what to make first, what must exist after."""

    setup: tuple[Callable[[Path], None], ...] = ()
    needs: tuple[str, ...] = ()  # README commands to run first (their outputs are inputs)
    makes: tuple[str, ...] = ()  # files the command must have written
    stdout_has: tuple[str, ...] = ()
    marks: tuple[pytest.MarkDecorator, ...] = ()
    timeout: float = 120
    skip_reason: str | None = None  # run elsewhere (named), never silently
    extra: dict[str, str] = field(default_factory=dict)


SPLIT = ("vbproto trace import split-ring --memory dump.bin@0 --desc 0x1000 --avail 0x1800 "
         "--used 0x2000 --size 128 --role inflate --profile spec -o capture.jsonl")
QEMU = pytest.mark.qemu
SLOW = pytest.mark.slow

COMMANDS: dict[str, Cmd] = {
    "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/vbproto conform run "
    "--report-json out/conformance.json --junit out/conformance.xml --html out/conformance.html":
        Cmd(setup=(), makes=("out/conformance.json", "out/conformance.xml",
                             "out/conformance.html"),
            stdout_has=("CONFORMANCE PASSED",), marks=(SLOW,), timeout=600,
            extra={"copy_repo": "1"}),
    "bash .ci/run": Cmd(skip_reason="CI itself: this test suite is what it runs"),
    "source .venv/bin/activate": Cmd(),
    "vbproto message decode --profile v3 --kind bmap --endian be --word-size 64 --word-order be "
    "--json @hdr_and_bitmap.bin": Cmd(setup=(_hdr_and_bitmap,), stdout_has=('"pages"',)),
    "echo '{\"pages\": [[4096, 300]]}' | vbproto message encode --profile spec --kind pfns":
        Cmd(stdout_has=("00100000",)),
    SPLIT: Cmd(setup=(_dump,), makes=("capture.jsonl",), stdout_has=("wrote capture.jsonl",)),
    "vbproto trace import qemu-core guest.core --queue-status q0.json --queue-status q1.json "
    "--profile spec -o core.jsonl": Cmd(setup=(_qemu_core,), makes=("core.jsonl",),
                                        marks=(QEMU,)),
    "vbproto trace import qemu-log trace.log --profile spec -o log.jsonl":
        Cmd(setup=(_trace_log,), makes=("log.jsonl",)),
    "vbproto decode capture.jsonl": Cmd(setup=(_dump,), needs=(SPLIT,),
                                        stdout_has=("pfns[2]", "36864")),
    "vbproto trace synth --profile v3 --scenario unused-pages --exact -o seed.jsonl":
        Cmd(makes=("seed.jsonl",)),
    # a capture is a window (HELPERS.md standards): a used entry for a chain made available
    # before it, and a chain still pending at its end, are not judged
    "vbproto conform check capture.jsonl": Cmd(setup=(_dump,), needs=(SPLIT,)),
    "vbproto conform run --device stdio:'./my-device --testee'":
        Cmd(setup=(_my_device,), stdout_has=("CONFORMANCE PASSED",)),
    "vbproto conform run --device qemu:transport=modern --known-failures "
    "conformance/known-failures/qemu-7.2.toml": Cmd(setup=(_repo_links,), marks=(QEMU,),
                                                   stdout_has=("CONFORMANCE PASSED",)),
    "vbproto conform clauses": Cmd(stdout_has=("wire-observable",)),
    "vbproto vectors generate --out vectors/": Cmd(makes=("vectors/schema",)),
    "vbproto vectors verify --impl stdio:'./my-codec'": Cmd(setup=(_my_codec,)),
    "vbproto analyze --shape sparse --plot bytes.png": Cmd(makes=("bytes.png",)),
    "python3 tools/build_guest.py": Cmd(setup=(_repo_links,), marks=(QEMU, SLOW), timeout=900),
    "vbproto capture qemu-guest --memory 512M --balloon-to 384M -o real.jsonl":
        Cmd(setup=(_repo_links,), needs=("python3 tools/build_guest.py",), makes=("real.jsonl",),
            marks=(QEMU, SLOW), timeout=900),
}

# commands from docs/ that run as typed (the rest of docs/ shows synopses with placeholders)
DOC_COMMANDS: dict[str, tuple[str, Cmd]] = {
    "encodings": ("docs/encodings.md", Cmd(makes=("docs/img/bytes-vs-density.png",))),
    "stdio-testee": ("examples/stdio_testee.py",
                     Cmd(setup=(_repo_links,), stdout_has=("CONFORMANCE PASSED",))),
}
DOC_TEXT = {
    "encodings": "vbproto analyze --shape all --plot docs/img/bytes-vs-density.png",
    "stdio-testee": 'vbproto conform run --device "stdio:python3 examples/stdio_testee.py" '
                    "--profile spec",
}


def _bin(tmp: Path) -> Path:
    b = tmp / "bin"
    b.mkdir(exist_ok=True)
    _script(b / "vbproto", f'exec {sys.executable} -m virtio_balloon_proto "$@"')
    _script(b / "python3", f'exec {sys.executable} "$@"')
    # `source .venv/bin/activate`: the venv under test is this interpreter's; its stand-in
    # puts this interpreter's vbproto first on PATH, as the real activate script does
    return b


def _run_one(text: str, spec: Cmd, work: Path, bindir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{bindir}:/usr/bin:/bin"
    venv = work / ".venv" / "bin"
    if not venv.exists():
        venv.mkdir(parents=True)
        (venv / "activate").write_text(f'export PATH="{bindir}:$PATH"\n')
    return subprocess.run(["bash", "-c", f"set -euo pipefail\nsource .venv/bin/activate\n{text}"
                           if text != "source .venv/bin/activate" else
                           "set -euo pipefail\nsource .venv/bin/activate\ncommand -v vbproto"],
                          cwd=work, env=env, capture_output=True, text=True,
                          timeout=spec.timeout, check=False)


def _copy_repo(dst: Path) -> None:
    shutil.copytree(ROOT, dst, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "guest", "out", "__pycache__", "*.egg-info", ".mypy_cache",
        ".ruff_cache", ".pytest_cache", ".hypothesis"))


def _execute(text: str, spec: Cmd, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if spec.skip_reason:
        pytest.skip(spec.skip_reason)
    work = tmp_path / "work"
    bindir = _bin(tmp_path)
    if spec.extra.get("copy_repo"):
        _copy_repo(work)
        # the real thing: a fresh venv and `pip install .`, then .venv/bin/vbproto from it
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env["PATH"] = f"{bindir}:/usr/bin:/bin"
        r = subprocess.run(["bash", "-c", f"set -euo pipefail\n{text}"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=spec.timeout, check=False)
    else:
        work.mkdir()
        for f in spec.setup:
            f(work)
        for need in spec.needs:
            pre = _run_one(need, COMMANDS[need], work, bindir)
            assert pre.returncode == 0, (need, pre.stdout, pre.stderr)
        r = _run_one(text, spec, work, bindir)
    assert r.returncode == 0, f"{text}\nexit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr
    for m in spec.makes:
        assert (work / m).exists(), f"{text} did not write {m}"
    for s in spec.stdout_has:
        assert s in r.stdout, f"{text}: {s!r} not in\n{r.stdout}"
    return r


def test_every_readme_command_has_a_test() -> None:
    cmds = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert set(cmds) - set(COMMANDS) == set(), "README commands without an entry in COMMANDS"
    assert set(COMMANDS) - set(cmds) == set(), "COMMANDS entries no longer in README"


def test_doc_commands_are_in_the_docs() -> None:
    for key, (doc, _) in DOC_COMMANDS.items():
        assert DOC_TEXT[key] in " ".join((ROOT / doc).read_text(encoding="utf-8").split()), key


@pytest.mark.parametrize(
    "text", [pytest.param(t, marks=list(c.marks), id=t[:70]) for t, c in COMMANDS.items()])
def test_readme_command(text: str, tmp_path: Path) -> None:
    _execute(text, COMMANDS[text], tmp_path)


@pytest.mark.parametrize("key", list(DOC_COMMANDS))
def test_doc_command(key: str, tmp_path: Path) -> None:
    _execute(DOC_TEXT[key], DOC_COMMANDS[key][1], tmp_path)


def test_a_wrong_flag_fails_the_command_test(tmp_path: Path) -> None:
    """The harness itself: README's qemu-core example once had --status (the option is
    --queue-status); the same mistake on a command that runs here must fail its test."""
    wrong = "vbproto trace import qemu-log trace.log --status q0.json --profile spec -o log.jsonl"
    with pytest.raises(AssertionError, match="exit 2"):
        _execute(wrong, Cmd(setup=(_trace_log,)), tmp_path)


def test_readme_split_ring_example_does_not_overlap() -> None:
    desc_end = RING_DESC + 16 * RING_SIZE
    avail_end = RING_AVAIL + 4 + 2 * RING_SIZE + 2
    assert desc_end <= RING_AVAIL and avail_end <= RING_USED
    assert SPLIT in readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
