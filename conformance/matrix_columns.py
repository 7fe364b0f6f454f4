"""The columns of a results matrix: which devices, how each is described, how each is run.

A *column* is one device under test (an adapter spec, ``docs/conformance.md``) with a name and
optionally its known-failures file.  Columns come from ``--device`` (repeatable; the name is the
spec) or from a TOML file (``conformance/matrix.toml``)::

    diff = ["qemu-7.2-modern", "qemu-10.0-msix"]      # optional: the two-column diff
    [[column]]
    name = "qemu-7.2-modern"                          # unique, shown as the column head
    device = "qemu:transport=modern"                  # any --device spec
    known_failures = "known-failures/qemu-7.2.toml"   # optional, relative to the TOML file

Each column runs as its own process -- ``vbproto conform run`` with ``--report-json`` -- in a
new process group: the runner, its reports (written atomically after every case, through
:mod:`virtio_balloon_proto.io`) and its adapters are the ones ``conform run`` uses.  A column
that crashes or hangs (``column_timeout``) is killed with its whole group (QEMU included; QEMU
also dies with its parent: ``PR_SET_PDEATHSIG``) and costs that column only: its partial
report still gives the cases it finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtio_balloon_proto import __version__
from virtio_balloon_proto.errors import PeerError, UsageError, VBProtoError
from virtio_balloon_proto.limits import read_bounded

#: seconds a column gets to finish after SIGTERM before its group gets SIGKILL
KILL_GRACE = 5.0
#: characters of a column's stderr kept as its message when it ends badly
MESSAGE_CHARS = 400


@dataclass(frozen=True)
class Column:
    """One device of the matrix: ``name`` (unique), ``device`` (adapter spec), and the
    known-failures file its verdicts are read with (None: none)."""

    name: str
    device: str
    known_failures: str | None = None


def columns_from_devices(specs: Sequence[str]) -> list[Column]:
    """``--device`` values -> columns named by their spec (a repeated spec is bad usage)."""
    cols = [Column(spec, spec) for spec in specs]
    _check_unique(cols, "--device")
    return cols


def _check_unique(cols: Sequence[Column], where: str) -> None:
    seen: set[str] = set()
    for c in cols:
        if c.name in seen:
            raise UsageError(f"column {c.name!r} is given twice", where=where)
        seen.add(c.name)


def load_columns(path: str | Path) -> tuple[list[Column], tuple[str, str] | None]:
    """Read a matrix TOML file -> (columns, the diff pair or None).

    Raises UsageError naming the file and the entry for anything malformed (exit 2).
    """
    p = Path(path)
    where = str(p)
    try:
        # a regular file of at most MAX_INPUT bytes: /dev/zero or a FIFO is refused, not read
        raw = tomllib.loads(read_bounded(p, what="matrix columns file").decode("utf-8"))
    except FileNotFoundError:
        raise UsageError("matrix columns file not found", where=where) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise UsageError(f"not a valid TOML file: {str(exc)[:200]}", where=where) from None
    unknown = set(raw) - {"column", "diff"}
    if unknown:
        raise UsageError(f"unknown key(s) {', '.join(sorted(unknown))} (column, diff)",
                         where=where)
    entries = raw.get("column")
    if not isinstance(entries, list) or not entries:
        raise UsageError("no [[column]] entry", where=where)
    cols: list[Column] = []
    for i, e in enumerate(entries):
        at = f"{where}: column {i + 1}"
        if not isinstance(e, dict):
            raise UsageError("a column must be a table", where=at)
        extra = set(e) - {"name", "device", "known_failures"}
        if extra:
            raise UsageError(f"unknown key(s) {', '.join(sorted(extra))} (name, device, "
                             "known_failures)", where=at)
        name, device = e.get("name"), e.get("device")
        if not isinstance(name, str) or not name.strip():
            raise UsageError("'name' must be a non-empty string", where=at)
        if not isinstance(device, str) or not device.strip():
            raise UsageError("'device' must be a non-empty string", where=at)
        kf = e.get("known_failures")
        if kf is not None and not isinstance(kf, str):
            raise UsageError("'known_failures' must be a path string", where=at)
        cols.append(Column(name.strip(), device.strip(),
                           str(p.parent / kf) if kf is not None else None))
    _check_unique(cols, where)
    diff = raw.get("diff")
    pair: tuple[str, str] | None = None
    if diff is not None:
        if (not isinstance(diff, list) or len(diff) != 2
                or not all(isinstance(d, str) for d in diff)):
            raise UsageError("'diff' must be a list of two column names", where=where)
        pair = (diff[0], diff[1])
    return cols, pair


# --------------------------------------------------------------------------- description
def describe(device: str) -> dict[str, Any]:
    """What a column head shows: ``{"build": str, "transport": str, "options": {k: v}}``.

    An adapter may describe itself (a ``describe()`` method returning those keys, called
    before any device starts); otherwise: the reference device is vbproto's own build, a QEMU
    spec's build is its binary's ``--version`` line and its transport the ``transport``
    option.  Bad options raise UsageError here, before any column runs; a QEMU build that is
    not here (PeerError) is described as unavailable, and its column ends ``error``.
    """
    kind, _, rest = device.partition(":")
    if kind == "reference":
        return {"build": f"vbproto {__version__}", "transport": "in-process", "options": {}}
    if kind == "qemu":
        from .qemu_adapter import QemuDevice
        from .qemu_options import parse_options

        try:
            dev = QemuDevice(device)
        except PeerError as exc:  # a build not fetched here: that column errors, not the run
            opts = parse_options(device)
            return {"build": f"unavailable: {str(exc)[:200]}",
                    "transport": opts.get("transport", "modern"), "options": opts}
        own = getattr(dev, "describe", None)
        if callable(own):
            info: dict[str, Any] = dict(own())
            info.setdefault("options", parse_options(device))
            return info
        opts = parse_options(str(getattr(dev, "name", device)))  # with the defaults it took
        return {"build": _qemu_version(str(getattr(dev, "binary", "") or "")),
                "transport": str(getattr(dev, "transport", opts.get("transport", "modern"))),
                "options": opts}
    if kind in ("python", "stdio"):
        return {"build": rest, "transport": kind, "options": {}}
    return {"build": "", "transport": kind, "options": {}}


def _qemu_version(binary: str) -> str:
    """``QEMU emulator version 7.2.22 (Debian ...)`` of ``binary`` (default: the x86 one)."""
    from virtio_balloon_proto.qemu.process import find_qemu

    try:
        path = binary or find_qemu()
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20,
                             check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired, VBProtoError) as exc:
        return f"unknown ({str(exc)[:120]})"
    first = (out.stdout.strip().splitlines() or ["unknown"])[0]
    return first.removeprefix("QEMU emulator version ").strip()


# --------------------------------------------------------------------------- running
@dataclass
class ColumnRun:
    """What became of one column: ``status`` is ``complete`` (the run reached its end),
    ``timeout`` (killed after ``column_timeout``), ``crashed`` (ended without a complete
    report), ``interrupted`` or ``error`` (the column could not start: bad spec, missing
    known-failures file, a device that never started in any case -- ``message`` says).
    ``report`` is the ``conform run`` JSON report (partial when the column did not complete),
    None when there is none."""

    column: Column
    info: dict[str, Any]
    status: str = "pending"
    exit_code: int | None = None
    message: str = ""
    duration: float = 0.0
    report: dict[str, Any] | None = None
    report_path: str = ""


@dataclass
class RunOptions:
    """What every column runs with (``vbproto conform run`` options)."""

    corpus: str
    profiles: tuple[str, ...] = ()
    case_globs: tuple[str, ...] = ()
    strict: bool = False
    timeout: float = 5.0
    column_timeout: float = 900.0
    jobs: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)


def selection_argv(profiles: Sequence[str], case_globs: Sequence[str], strict: bool
                   ) -> list[str]:
    """The ``--profile``/``--case``/``--strict`` options that select and judge the cases of a
    run (``conform run`` and ``conform matrix`` take the same)."""
    argv: list[str] = []
    for p in profiles:
        argv += ["--profile", p]
    for g in case_globs:
        argv += ["--case", g]
    return argv + (["--strict"] if strict else [])


def column_command(col: Column, opts: RunOptions, report: Path) -> list[str]:
    """The ``conform run`` command line of one column (never relies on PATH)."""
    argv = [sys.executable, "-m", "virtio_balloon_proto", "conform", "run",
            "--device", col.device, "--corpus", opts.corpus, "--report-json", str(report),
            "--timeout", repr(opts.timeout),
            # after every case: a column that dies outright keeps every case it finished
            "--report-every", "0",
            *selection_argv(opts.profiles, opts.case_globs, opts.strict)]
    if col.known_failures:
        argv += ["--known-failures", col.known_failures]
    return argv


class _Live:
    def __init__(self, run: ColumnRun, proc: subprocess.Popen[bytes], err: Path,
                 t0: float) -> None:
        self.run, self.proc, self.err, self.t0 = run, proc, err, t0


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the column's process group (its CLI writes a partial report and stops its
    device), SIGKILL what is left after KILL_GRACE."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(KILL_GRACE)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _read_report(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("cases"), list) else None


def _not_started(report: dict[str, Any] | None) -> str:
    """The first reason, when no case of ``report`` was judged and some could not be run
    (outcome ``error``); else ""."""
    cases = [c for c in (report or {}).get("cases", []) if isinstance(c, dict)]
    errors = [c for c in cases if c.get("outcome") == "error"]
    if not errors or any(c.get("outcome") not in ("error", "unsupported", "skipped")
                         for c in cases):
        return ""
    first = str(errors[0].get("reason", "")) or "no reason given"
    return f"{len(errors)} case(s) could not be run: {first}"[:MESSAGE_CHARS]


def _tail(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("\r")]
    return "\n".join(lines[-3:])[-MESSAGE_CHARS:]


def _finish(live: _Live, *, timed_out: bool = False, interrupted: bool = False) -> None:
    run, proc = live.run, live.proc
    run.duration = time.monotonic() - live.t0
    run.exit_code = proc.returncode
    run.report = _read_report(Path(run.report_path))
    done = run.report is not None and run.report.get("partial") is False
    if timed_out:
        run.status = "timeout"
        run.message = "no end within the column timeout: killed with its device"
    elif interrupted:
        run.status = "interrupted"
        run.message = "the matrix run was interrupted"
    elif done and proc.returncode == 2 and _not_started(run.report):
        # every case it reached could not be run (its device never started: no such binary,
        # a property this build lacks): the column is an error, not a row of failures
        run.status = "error"
        run.message = _not_started(run.report)
    elif done and proc.returncode in (0, 1, 2):
        run.status = "complete"
    elif proc.returncode == 2 and not (run.report and run.report["cases"]):
        run.status = "error"
        run.message = _tail(live.err) or "exit status 2"
    else:
        run.status = "crashed"
        rc = proc.returncode
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
        run.message = f"{how}: {_tail(live.err)}".rstrip(": ")
    if run.status != "complete":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its group is left


def run_columns(
    runs: Sequence[ColumnRun],
    opts: RunOptions,
    workdir: Path,
    *,
    on_event: Callable[[str, ColumnRun], None] | None = None,
) -> None:
    """Run every column of ``runs`` (updated in place), at most ``opts.jobs`` at a time, each
    in its own process group; reports go to ``workdir/<n>.json``.

    Interrupted (KeyboardInterrupt, SIGTERM turned into an exception): every running column is
    killed with its group and marked ``interrupted``, then the exception propagates; columns
    not started stay ``pending``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    pending = list(range(len(runs)))
    live: dict[int, _Live] = {}
    jobs = max(1, opts.jobs)
    env = {**os.environ, **opts.extra_env}
    try:
        while pending or live:
            while pending and len(live) < jobs:
                i = pending.pop(0)
                run = runs[i]
                report = workdir / f"{i:02d}.json"
                err = workdir / f"{i:02d}.stderr"
                with contextlib.suppress(FileNotFoundError):
                    report.unlink()
                run.report_path = str(report)
                with open(err, "wb") as ferr:
                    proc = subprocess.Popen(column_command(run.column, opts, report),
                                            stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=ferr,
                                            start_new_session=True, env=env)
                run.status = "running"
                live[i] = _Live(run, proc, err, time.monotonic())
                if on_event:
                    on_event("start", run)
            for i, lv in list(live.items()):
                if lv.proc.poll() is not None:
                    _finish(lv)
                elif time.monotonic() - lv.t0 > opts.column_timeout:
                    _kill_group(lv.proc)
                    _finish(lv, timed_out=True)
                else:
                    continue
                del live[i]
                if on_event:
                    on_event("end", lv.run)
            if live:
                time.sleep(0.05)
    except BaseException:
        for lv in live.values():
            _kill_group(lv.proc)
            _finish(lv, interrupted=True)
        raise
