"""What a campaign hands back: each finding as a corpus-ready trace with the exact command
that replays it, the run's summary (``--json``) and its progress line (stderr).

A finding ``F`` is written to ``OUT/<clause>--<shape hash>.jsonl`` (the driver side of the
minimal sequence: ``vbproto conform run`` replays it, ``conform check`` of what a run saves
re-judges it) and ``OUT/<same>.txt`` (the replay command, the clause, its level and the
oracle's message).  ``OUT/findings.json`` is the summary.  Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

from virtio_balloon_proto import __version__

from .campaign import Campaign, Finding
from .program import to_trace


def finding_name(f: Finding) -> str:
    digest = hashlib.sha256("\n".join(f.shape).encode()).hexdigest()[:8]
    return f"{f.clause}--{digest}"


def replay_command(device: str, path: str | Path, level: str) -> str:
    """The command that replays a written finding (exit status 1, the clause failed)."""
    strict = " --strict" if level == "SHOULD" else ""
    return (f"vbproto conform run --device {shlex.quote(device)} "
            f"--corpus {shlex.quote(str(path))}{strict}")


def write_finding(out: str | Path, f: Finding, device: str) -> None:
    """Write ``f`` under ``out`` and set its ``path`` and ``replay``."""
    from virtio_balloon_proto.io import write_atomic
    from virtio_balloon_proto.trace import write_trace

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    name = finding_name(f)
    path = root / f"{name}.jsonl"
    f.path = str(path)
    f.replay = replay_command(device, path, f.level)
    header, events = to_trace(f.program, command=f.replay,
                              provenance=f"vbproto fuzz {__version__}: minimal sequence from "
                                         f"{f.program.origin}; breaks {f.clause} ({f.level})")
    write_trace(path, header, events)
    write_atomic(root / f"{name}.txt",
                 f"{f.replay}\n\n# expected: exit status 1, {f.clause} ({f.level}) fails:\n"
                 f"# {f.message}\n# bring-up: {f.program.env.describe()}\n"
                 f"# operations: {len(f.program.ops)} (shrunk from {f.original_ops}); "
                 f"shape: {', '.join(f.shape)}\n")


def summary(c: Campaign) -> dict[str, Any]:
    st = c.stats
    return {
        "device": c.device_spec,
        "seed": c.seed,
        "sequences": st.sequences,
        "steps": st.steps,
        "seconds": round(st.seconds, 3),
        "steps_per_second": round(st.steps_per_second, 1),
        "sequences_per_second": round(st.sequences / st.seconds, 2) if st.seconds else 0.0,
        "unsupported": st.unsupported,
        "errors": st.errors,
        "flaky": st.flaky,
        "error_messages": st.error_messages,
        "narrowed": st.narrowed,
        "shrink_replays": st.shrink_replays,
        "prefix_replays": st.prefix_replays,
        "findings": [f.to_json() for f in sorted(c.findings.values(),
                                                 key=lambda f: f.first_sequence)],
    }


def write_summary(out: str | Path, c: Campaign, extra: dict[str, Any] | None = None) -> None:
    """``OUT/findings.json``: :func:`summary` plus ``extra`` (the CLI's ``partial``: true
    while the run goes on and after an interrupt, and ``exit_code``)."""
    from virtio_balloon_proto.io import write_atomic

    Path(out).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(out) / "findings.json",
                 json.dumps({**summary(c), **(extra or {})}, indent=2) + "\n")


def progress_line(c: Campaign) -> str:
    st = c.stats
    return (f"fuzz: {st.sequences} sequences, {st.steps} steps in {st.seconds:.0f} s "
            f"({st.steps_per_second:.0f} steps/s), {len(c.findings)} finding(s)"
            + (f", {st.unsupported} unsupported" if st.unsupported else "")
            + (f", {st.errors} error(s)" if st.errors else ""))


def text_report(c: Campaign) -> str:
    lines = [progress_line(c)]
    for f in sorted(c.findings.values(), key=lambda f: f.first_sequence):
        lines.append(f"  {f.level:6s} {f.clause}: {f.message}")
        lines.append(f"         shape {', '.join(f.shape)}; {len(f.program.ops)} op(s) "
                     f"(from {f.original_ops}); first at sequence {f.first_sequence} "
                     f"({f.first_seconds:.1f} s); hits {f.hits}")
        if f.stops_answering:
            lines.append("         the device stops answering after it (a plain inflate "
                         "posted next is never used); what stopped it:")
            trig = sorted(f.triggers.items(), key=lambda kv: kv[1][0])
            for (clause, op), (first, hits, _) in trig[:10]:
                lines.append(f"           {op} ({clause}): first at sequence {first:.0f}, "
                             f"hits {hits:.0f}")
            if len(trig) > 10:
                lines.append(f"           ... and {len(trig) - 10} more (findings.json)")
        if f.consequences:
            lines.append("         then, in the same sequences (consequences, not findings): "
                         + ", ".join(f"{c} x{n}" for c, n in sorted(
                             f.consequences.items(), key=lambda kv: (-kv[1], kv[0]))))
        if f.replay:
            lines.append(f"         replay: {f.replay}")
    for n in c.stats.narrowed:
        lines.append(f"  narrowed: {n}")
    for e in c.stats.error_messages:
        lines.append(f"  error: {e}")
    return "\n".join(lines)
