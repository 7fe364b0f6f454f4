"""The ``vbproto`` command.

Thin by design: every command parses its options, calls the library, and prints.  The frame
they run in (virtio_balloon_proto/cliframe.py) turns any
:class:`~virtio_balloon_proto.errors.VBProtoError`, user-path ``OSError`` or usage error into
one readable line on stderr (JSON on stdout under --json) and exit status 2 -- never a
traceback.  Exit status 1 means "the check ran and found failures, or tested nothing"
(conformance, vectors, trace validate); 0 a check that judged something and found no failure.

The file is split into one section per command group; each section says which part of the
library it drives.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from virtio_balloon_proto import __version__
from virtio_balloon_proto.cliframe import (
    Group,
    Interrupted,
    emit_json,
    install_signal_handlers,
    json_mode,
    json_option,
    seconds,
)

_Group = Group  # the frame (virtio_balloon_proto/cliframe.py): errors, signals, exit codes


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vbproto")
def main() -> None:
    """Reference toolkit for the virtio memory-balloon wire protocol.

    Every command takes --json (one JSON document on stdout, JSON Lines for streams; errors
    are JSON too) and -h/--help (options, and what each exit status means)."""
    install_signal_handlers()


def _group(name: str, help_text: str) -> Callable[[Callable[..., Any]], click.Group]:
    def deco(f: Callable[..., Any]) -> click.Group:
        return main.group(name=name, cls=_Group, help=help_text)(f)

    return deco


_PROFILES = click.Choice(["spec", "v3", "hybrid"])
_KINDS = click.Choice(["pfns", "bmap", "req", "hybrid", "stats", "config", "hint-cmd"])
_ROLES = click.Choice(["inflate", "deflate", "stats", "free_page", "misc", "reporting"])


# ---- message (wire layer) ----
def _read_input(source: str) -> bytes:
    """HEX on the command line, @FILE for raw bytes, - for hex on stdin."""
    from virtio_balloon_proto.errors import UsageError
    from virtio_balloon_proto.limits import MAX_INPUT, read_bounded, read_stream

    if source == "-":
        # stdin is hex text (raw bytes: @/dev/stdin); guessing would misread raw bytes that
        # happen to be ASCII hex digits
        raw = read_stream(sys.stdin.buffer, what="stdin", limit=2 * MAX_INPUT + 4096)
        try:
            return bytes.fromhex("".join(raw.decode("ascii").split()).removeprefix("0x"))
        except (UnicodeDecodeError, ValueError):
            raise UsageError("stdin is not hex text (for raw bytes use @/dev/stdin)",
                             field="input") from None
    if source.startswith("@"):  # a regular file, a pipe or /dev/stdin; at most MAX_INPUT
        return read_bounded(source[1:], what="input", allow_stream=True)
    text = "".join(source.split()).removeprefix("0x")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise UsageError(
            "input is not hex (give HEX, @FILE for raw bytes, or - for stdin)", field="input"
        ) from None


def _layout_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--profile", "profile", type=_PROFILES, default="spec", show_default=True,
                     help="protocol profile (dialect)"),
        click.option("--kind", "kind", type=_KINDS, required=True,
                     help="message kind (wire name)"),
        click.option("--endian", type=click.Choice(["le", "be"]), default="le", show_default=True,
                     help="byte order of __virtio fields (le with VERSION_1)"),
        click.option("--word-size", type=click.Choice(["32", "64"]), default="64",
                     show_default=True, help="v3 bitmap BITS_PER_LONG"),
        click.option("--word-order", type=click.Choice(["le", "be"]), default=None,
                     help="v3 bitmap word byte order [default: --endian]"),
        click.option("--page-size", type=int, default=4096, show_default=True,
                     help="guest PAGE_SIZE in bytes"),
        click.option("--role", type=click.Choice(["inflate", "deflate", "misc"]),
                     default="inflate", show_default=True,
                     help="queue the message was on (decides how v3 bits map to pages)"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _layout(endian: str, word_size: str, word_order: str | None, page_size: int) -> Any:
    from virtio_balloon_proto.wire import WireLayout

    return WireLayout(endian, int(word_size), word_order or endian, page_size)


@_group("message", "Decode and encode single balloon messages (the wire layer).")
def message() -> None:
    pass


@message.command("decode")
@_layout_options
@json_option("print JSON (kind, fields, pages, findings)")
@click.argument("source")
def message_decode(profile: str, kind: str, endian: str, word_size: str, word_order: str | None,
                   page_size: int, role: str, as_json: bool, source: str) -> None:
    """Decode SOURCE (HEX, @FILE or -) as one message of --kind."""
    import json

    from virtio_balloon_proto.wire import decode

    data = _read_input(source)
    # a v3 file holds the chain [balloon_bmap_hdr][bitmap]: split it where the driver does
    segments = [data[:32], data[32:]] if kind == "bmap" and len(data) > 32 else [data]
    d = decode(kind, segments, _layout(endian, word_size, word_order, page_size),
               profile=profile, role=role)
    if as_json:
        click.echo(json.dumps(d.to_json()))
        return
    click.echo(f"{kind} ({profile}, {endian}):")
    for k, v in d.fields().items():
        if isinstance(v, list) and len(v) > 16:
            v = f"[{len(v)} items]"
        click.echo(f"  {k:12} {v}")
    if d.carries_pages:
        ps = d.pages()
        click.echo("  pages        ", nl=False)
        for piece in ps.iter_text():  # streamed: millions of runs are never one string
            click.echo(piece, nl=False)
        click.echo(f"{'' if ps else '(none)'} ({ps.page_count()} frames)")
    for f in d.findings:
        click.echo(f"  finding      {f}")
    if not d.findings:
        click.echo("  findings     none")


@message.command("encode")
@_layout_options
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="write raw bytes to FILE (- for stdout) instead of printing hex")
@json_option('print {"hex": ..., "bytes": N} (or {"wrote": FILE, "bytes": N})', expose=False)
@click.argument("source", default="-")
def message_encode(profile: str, kind: str, endian: str, word_size: str, word_order: str | None,
                   page_size: int, role: str, out: str | None, source: str) -> None:
    """Encode the JSON in SOURCE (@FILE, - or inline) -- 'fields' or 'pages' -- to bytes."""

    from virtio_balloon_proto.errors import UsageError
    from virtio_balloon_proto.io import write_atomic
    from virtio_balloon_proto.limits import loads_json, read_bounded, read_stream
    from virtio_balloon_proto.wire import encode, message_from_json
    from virtio_balloon_proto.wire.messages import check_kind

    check_kind(kind, profile)
    if source == "-":
        text: str | bytes = read_stream(sys.stdin.buffer, what="stdin")
    elif source.startswith("@"):
        text = read_bounded(source[1:], what="input", allow_stream=True)
    else:
        text = source
    obj = loads_json(text, what="input", error=UsageError)
    layout = _layout(endian, word_size, word_order, page_size)
    data = encode(message_from_json(kind, obj, layout, role=role), layout)
    if out:
        write_atomic(out, data)
    if json_mode():
        emit_json({"wrote": out, "bytes": len(data)} if out else
                  {"hex": data.hex(), "bytes": len(data)})
    elif not out:
        click.echo(data.hex())
# ---- end message ----


# ---- trace (virtqueue/trace layer) ----
def _trace_source(ctx: click.Context, provenance: str | None) -> Any:
    from virtio_balloon_proto.trace.model import TraceSource

    return TraceSource(command="vbproto " + " ".join(sys.argv[1:]), provenance=provenance)


def _hex_int(text: str | None, what: str) -> int | None:
    from virtio_balloon_proto.trace.importers import parse_int

    return None if text is None else parse_int(text, what)


_MODELS = click.Choice(["negotiated", "offered", "fixed", "cloud-hypervisor"])


def _is_stream(out: str) -> bool:
    """stdout, a device, a FIFO: the "wrote" line goes to stderr, out of the data's way."""
    from virtio_balloon_proto.io import is_stream

    return is_stream(out)


def _check_out(out: str) -> None:
    """The output can be written, and --json and the trace do not both claim stdout."""
    from virtio_balloon_proto.errors import UsageError
    from virtio_balloon_proto.io import STDOUT, check_writable

    if out == STDOUT and json_mode():
        raise UsageError("--json prints on stdout: give -o FILE, not -o -", field="out")
    check_writable(out)


def _feature_kwargs(offered: str | None, negotiated: str | None, index_model: str | None,
                    default_model: str) -> dict[str, Any]:
    """The feature words and queue index model an importer takes, parsed from the options.

    Every importer calls this before reading its input, so the output is checked here too."""
    _check_out(click.get_current_context().params["out"])
    return {"offered": _hex_int(offered, "offered"),
            "negotiated": _hex_int(negotiated, "negotiated"),
            "index_model": index_model or default_model}


def _feature_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--negotiated", help="negotiated feature word (hex); default per importer")(f)
    f = click.option("--offered", help="offered feature word (hex); default: = negotiated")(f)
    f = click.option("--index-model", type=_MODELS, default=None, help="queue index model")(f)
    f = click.option("--profile", type=_PROFILES, required=True, help="protocol profile")(f)
    f = click.option(
        "-o",
        "--out",
        required=True,
        type=click.Path(dir_okay=False),
        help="trace file to write (atomically; - for stdout)",
    )(f)
    f = json_option('print {"wrote": FILE, "events": N}', expose=False)(f)
    return f


@_group("trace", "Recorded virtqueue traffic: validate traces, import captures.")
def trace() -> None:
    pass


@trace.command("validate", exit_codes="0 valid; 1 invalid (every problem listed with its "
               "line); 2 not readable as a trace at all (empty, not JSON), bad usage; 130 "
               "interrupted.")
@click.argument("trace_file", metavar="TRACE", type=click.Path(dir_okay=False))
@json_option('print {"file", "valid", "problems": [{"line", "message"}]}')
def trace_validate(trace_file: str, as_json: bool) -> None:
    """Check TRACE against the vbproto-trace/1 schema; print every problem with its line."""
    from virtio_balloon_proto.trace.io import iter_problems

    problems = []
    for p in iter_problems(trace_file):
        if not as_json:
            click.echo(f"{trace_file}:{p.line}: {p.message}")
        problems.append({"line": p.line, "message": p.message})
    if as_json:
        emit_json({"file": trace_file, "format": "vbproto-trace/1", "valid": not problems,
                   "problems": problems})
    elif problems:
        click.echo(f"{trace_file}: {len(problems)} problem(s)", err=True)
    else:
        click.echo(f"{trace_file}: valid vbproto-trace/1")
    sys.exit(1 if problems else 0)


@trace.group("import", cls=_Group)
def trace_import() -> None:
    """Write a trace from a ring dump, a QEMU core or a QEMU trace log."""


def _done(out: str, n: int) -> None:
    if json_mode():
        emit_json({"wrote": out, "events": n})
    else:
        click.echo(f"wrote {out}: {n} event(s)", err=_is_stream(out))


def _ring_dump_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options every ring-in-a-memory-dump importer takes."""
    for o in reversed([
        click.option("--memory", "memory", multiple=True, required=True, metavar="FILE[@GPA]",
                     help="raw guest memory dump mapped at GPA (repeatable)"),
        click.option("--size", required=True, type=int, help="queue size"),
        click.option("--role", required=True, type=_ROLES, help="queue role"),
        click.option("--queue", type=int, default=None,
                     help="queue index (default: from the model)"),
    ]):
        f = o(f)
    return f


@trace_import.command("split-ring")
@_ring_dump_options
@click.option("--desc", required=True, help="descriptor table address")
@click.option("--avail", required=True, help="avail ring address")
@click.option("--used", required=True, help="used ring address")
@click.option(
    "--endian",
    type=click.Choice(["le", "be"]),
    default="le",
    help="ring byte order (legacy rings: the guest's)",
)
@click.option("--last-avail", default=None, help="device's next avail index (default used.idx)")
@_feature_options
def trace_import_split(
    memory: tuple[str, ...],
    desc: str,
    avail: str,
    used: str,
    size: int,
    role: str,
    queue: int | None,
    endian: str,
    last_avail: str | None,
    out: str,
    profile: str,
    index_model: str | None,
    offered: str | None,
    negotiated: str | None,
) -> None:
    """Import a split ring from raw guest memory dumps."""
    from virtio_balloon_proto.trace.importers import (
        import_split_ring,
        load_memory,
        parse_int,
        write_import,
    )

    with load_memory(memory) as mem:
        header, events = import_split_ring(
            mem,
            desc=parse_int(desc, "desc"),
            avail=parse_int(avail, "avail"),
            used=parse_int(used, "used"),
            size=size,
            role=role,
            profile=profile,
            endian=endian,
            last_avail=_hex_int(last_avail, "last-avail"),
            queue=queue,
            **_feature_kwargs(offered, negotiated, index_model, "negotiated"),
            source=_trace_source(click.get_current_context(), "split ring in a memory dump"),
        )
        _done(out, write_import(out, header, events))


@trace_import.command("packed-ring")
@_ring_dump_options
@click.option("--desc", required=True, help="descriptor ring address")
@click.option("--position", default="0", help="device's next avail position")
@click.option("--wrap", type=click.IntRange(0, 1), default=1, help="driver wrap counter there")
@click.option("--used-position", default=None, help="read used descriptors from here")
@click.option("--used-wrap", type=click.IntRange(0, 1), default=1, help="device wrap counter")
@_feature_options
def trace_import_packed(
    memory: tuple[str, ...],
    desc: str,
    size: int,
    role: str,
    queue: int | None,
    position: str,
    wrap: int,
    used_position: str | None,
    used_wrap: int,
    out: str,
    profile: str,
    index_model: str | None,
    offered: str | None,
    negotiated: str | None,
) -> None:
    """Import a packed ring from raw guest memory dumps."""
    from virtio_balloon_proto.trace.importers import (
        import_packed_ring,
        load_memory,
        parse_int,
        write_import,
    )

    with load_memory(memory) as mem:
        header, events = import_packed_ring(
            mem,
            desc=parse_int(desc, "desc"),
            size=size,
            role=role,
            profile=profile,
            position=parse_int(position, "position"),
            wrap=wrap,
            used_position=_hex_int(used_position, "used-position"),
            used_wrap=used_wrap,
            queue=queue,
            **_feature_kwargs(offered, negotiated, index_model, "negotiated"),
            source=_trace_source(click.get_current_context(), "packed ring in a memory dump"),
        )
        _done(out, write_import(out, header, events))


@trace_import.command("qemu-core")
@click.argument("core", type=click.Path(dir_okay=False))
@click.option(
    "--queue-status",
    "status",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False),
    help="JSON from x-query-virtio-queue-status (repeatable; a list is fine)",
)
@click.option("--endian", type=click.Choice(["le", "be"]), default="le", show_default=True,
              help="guest byte order (legacy rings)")
@_feature_options
def trace_import_qemu_core(
    core: str,
    status: tuple[str, ...],
    endian: str,
    out: str,
    profile: str,
    index_model: str | None,
    offered: str | None,
    negotiated: str | None,
) -> None:
    """Import the balloon queues of a QEMU dump-guest-memory ELF CORE."""
    from virtio_balloon_proto.trace.importers import (
        import_qemu_core,
        load_queue_status,
        write_import,
    )

    header, events, mem = import_qemu_core(
        core,
        load_queue_status(status),
        profile=profile,
        **_feature_kwargs(offered, negotiated, index_model, "offered"),
        endian=endian,
        source=_trace_source(click.get_current_context(), f"QEMU core {core}"),
    )
    with mem:
        _done(out, write_import(out, header, events))


@trace_import.command("qemu-log")
@click.argument("log", type=click.Path(dir_okay=False))
@click.option("--endian", type=click.Choice(["le", "be"]), default="le", show_default=True,
              help="guest byte order (legacy rings)")
@_feature_options
def trace_import_qemu_log(
    log: str,
    endian: str,
    out: str,
    profile: str,
    index_model: str | None,
    offered: str | None,
    negotiated: str | None,
) -> None:
    """Import a QEMU -trace 'virtio_balloon_*' -trace 'virtqueue_*' LOG."""
    from virtio_balloon_proto.trace.importers import import_qemu_log, write_import

    header, events = import_qemu_log(
        log,
        profile=profile,
        **_feature_kwargs(offered, negotiated, index_model, "offered"),
        endian=endian,
        source=_trace_source(click.get_current_context(), f"QEMU trace log {log}"),
    )
    _done(out, write_import(out, header, events))
# ---- end trace ----


# ---- conform (conformance runner) ----
# Drives virtio_balloon_proto.conformance: the clause catalog, the offline trace check and the
# replay runner with its reports.  Exit status: 0 all pass (known failures allowed), 1 failures
# or unexpected passes, 2 bad usage or input.
@_group("conform", "Conformance: clause catalog, offline trace check, replay against a device.")
def conform() -> None:
    pass


@conform.command("clauses")
@json_option("machine-readable catalog with check counts")
@click.option("--profile", type=_PROFILES, default=None, help="only clauses of this profile")
def conform_clauses(as_json: bool, profile: str | None) -> None:
    """List the clause catalog with how many checks each clause has."""
    import json as _json

    from virtio_balloon_proto.conformance import runner as _runner  # registers the checks
    from virtio_balloon_proto.conformance.catalog import catalog

    del _runner
    cat = catalog()
    counts = cat.check_counts()
    if as_json:
        data = cat.to_json()
        if profile:
            data["clauses"] = [c for c in data["clauses"] if profile in c["profiles"]]
        click.echo(_json.dumps(data, indent=1))
        return
    shown = [c for c in cat if profile is None or profile in c.profiles]
    for c in shown:
        obs = "" if c.observable else " (not observable)"
        err = f" [erratum {c.errata}]" if c.errata else ""
        click.echo(f"{c.id:55} {c.level:6} {c.side:6} checks={counts[c.id]}{obs}{err}")
    checked = sum(1 for c in shown if counts[c.id])
    observable = sum(1 for c in shown if c.observable)
    click.echo(
        f"{len(shown)} clauses, {observable} wire-observable, {checked} with at least one check; "
        f"{len(cat.errata)} erratum/errata"
    )


@conform.command("check", exit_codes="0 at least one clause judged and none broken; 1 a "
                 "clause broken, or nothing tested (no clause applied to the trace); 2 bad "
                 "usage or input, or the trace cannot be checked; 130 interrupted.")
@click.argument("trace_file", type=click.Path(dir_okay=False))
@json_option("print the verdicts as JSON (with exit_code and nothing_tested)")
@click.option("--strict", is_flag=True, help="a broken SHOULD fails")
def conform_check(trace_file: str, as_json: bool, strict: bool) -> None:
    """Validate both sides of a recorded trace against the clauses (offline)."""
    import json as _json

    from virtio_balloon_proto.conformance.runner import check_trace

    res = check_trace(trace_file, strict=strict)
    outcome = res.outcome(strict)
    nothing = None
    if not res.results and outcome not in ("fail", "error"):
        nothing = ("no clause applied to this trace"
                   + (f" ({res.status.value}: {res.reason})" if res.status is not None else ""))
    code = 2 if outcome == "error" else 1 if outcome == "fail" or nothing else 0
    if as_json:
        data = res.to_json(strict)
        data["exit_code"] = code
        data["nothing_tested"] = nothing
        click.echo(_json.dumps(data, indent=1, default=str))
    else:
        click.echo(res.details_text())
        checked = len(res.results)
        click.echo(f"{checked} clause(s) checked, {len(res.failures())} broken")
        if nothing:
            click.echo(f"nothing tested: {nothing}")
    sys.exit(code)


def _progress(enabled: bool) -> Callable[[Any, Any], None]:
    def show(run: Any, case: Any) -> None:
        if not enabled:
            return
        n, total = len(run.cases), max(run.planned, 1)
        width = 30
        fill = width * n // total
        line = f"\r[{'#' * fill}{'.' * (width - fill)}] {n}/{total} {case.case_id[:40]:40}"
        click.echo(line, err=True, nl=n == total)

    return show


@conform.command("run", exit_codes="0 at least one case judged and no failure (known "
                 "failures allowed); 1 a failure or unexpected pass, or nothing tested (no "
                 "case matched, or every case unsupported: the summary lists what the "
                 "device lacks); 2 bad usage or input (a missing --known-failures file, an "
                 "unwritable report path), or a case could not be run; 130 interrupted "
                 "(SIGINT, SIGTERM): the reports are valid, partial, and say exit_code 130.")
@click.option("--device", "device", default="reference", show_default=True,
              help="reference | python:module:Class | stdio:'CMD ...' | qemu[:OPTS]")
@click.option("--corpus", default=None, type=click.Path(),
              help="trace directory (default: shipped)")
@click.option("--profile", "profiles", multiple=True, type=_PROFILES,
              help="only cases of this profile (repeatable)")
@click.option("--case", "case_globs", multiple=True,
              help="only case ids matching this glob (repeatable)")
@click.option("--known-failures", "known_path", default=None, type=click.Path(dir_okay=False),
              help="TOML list of accepted failures (docs/conformance.md); must exist unless "
                   "--update-known-failures")
@click.option("--update-known-failures", is_flag=True,
              help="rewrite the --known-failures file to list exactly the current failures")
@click.option("--strict", is_flag=True, help="a broken SHOULD fails the case")
@click.option("--report-json", default=None, type=click.Path(dir_okay=False),
              help="write the JSON report to FILE (- for stdout); rewritten after each case")
@click.option("--junit", default=None, type=click.Path(dir_okay=False),
              help="write a JUnit XML report to FILE (- for stdout)")
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False),
              help="write a self-contained HTML report to FILE (- for stdout)")
@click.option("--timeout", default=5.0, show_default=True, type=float,
              callback=seconds, help="per-step timeout in seconds (0 < T <= 86400)")
@click.option("--save-traces", "save_traces", default=None, type=click.Path(file_okay=False),
              help="write what the device did in each case as a trace (DIR/<case>.jsonl), "
              "for `conform check` to re-judge")
@click.option("-v", "--verbose", is_flag=True, help="list passing cases too")
@json_option("print the JSON report on stdout (as --report-json -); the summary goes to stderr")
def conform_run(device: str, corpus: str | None, profiles: tuple[str, ...],
                case_globs: tuple[str, ...], known_path: str | None, update_known_failures: bool,
                strict: bool, report_json: str | None, junit: str | None, html_path: str | None,
                timeout: float, save_traces: str | None, verbose: bool, as_json: bool) -> None:
    """Replay the corpus into a device and judge what it did, clause by clause (the same
    checks as `conform check`)."""
    import os
    import shlex
    import time

    from virtio_balloon_proto.conformance.catalog import catalog
    from virtio_balloon_proto.conformance.known_failures import KnownFailures
    from virtio_balloon_proto.conformance.report import ReportWriter, text_summary
    from virtio_balloon_proto.conformance.runner import Runner, default_corpus, discover_cases
    from virtio_balloon_proto.conformance.verdicts import RunResult
    from virtio_balloon_proto.errors import UsageError

    if update_known_failures and not known_path:
        raise UsageError("--update-known-failures needs --known-failures FILE")
    from virtio_balloon_proto.io import STDOUT, check_writable

    if as_json:
        if STDOUT in (junit, html_path) or report_json not in (None, STDOUT):
            raise UsageError("--json prints the JSON report on stdout: give --report-json FILE "
                             "without --json, or no other report on stdout", field="json")
        report_json = STDOUT
    outputs = [p for p in (report_json, junit, html_path) if p]
    if outputs.count(STDOUT) > 1:
        raise UsageError("only one report can go to stdout (-)", field="report")
    for p in outputs:
        check_writable(p)  # before the run, not after it
    if save_traces:  # our own output: a directory we cannot write is bad usage, not the device's
        check_writable(os.path.join(save_traces, "case.jsonl"))
    to_stdout = STDOUT in outputs  # then the text summary goes to stderr
    corpus_path = corpus or str(default_corpus())
    cases = discover_cases(corpus_path, profiles=profiles or None, case_globs=case_globs or None)
    if known_path and not update_known_failures and not os.path.exists(known_path):
        # a mistyped name is not an empty list (--update-known-failures creates the file)
        raise UsageError("known-failures file not found (--update-known-failures creates it)",
                         where=known_path)
    known = KnownFailures.load(known_path) if known_path else KnownFailures([])
    cat = catalog()
    reports = ReportWriter(cat, report_json, junit, html_path)
    progress = _progress(sys.stderr.isatty())
    partial = RunResult(device=device, corpus=corpus_path, strict=strict, planned=len(cases),
                        known_failures=known_path, started=time.time())

    def on_case(run: Any, case: Any) -> None:
        partial.cases = run.cases
        partial.started = run.started
        reports(run, case)
        progress(run, case)

    runner = None
    try:
        # the reports exist from the first moment (before a device starts): an empty partial
        # report is a valid one
        reports.write(partial, skip_streams=True)
        runner = Runner(device, timeout=timeout, strict=strict, known_failures=known,
                        save_traces=save_traces)
        partial.device = runner.device_spec
        run = runner.run(cases, corpus=corpus_path, on_case=on_case)
    except (KeyboardInterrupt, Interrupted):  # SIGINT, SIGTERM (see _install_signal_handlers)
        partial.partial = True
        partial.unmatched_known = []
        partial.exit_status = 130  # what the process returns, in the reports too
        reports.write(partial)  # the reports say partial=true
        click.echo(text_summary(partial), err=True)
        sys.exit(130)
    finally:
        if runner is not None:
            runner.close()
    code = 0 if update_known_failures else run.exit_code()
    run.exit_status = code
    reports.write(run)
    argv = ["vbproto", "conform", "run", "--device", device, "--corpus", corpus_path]
    for p in profiles:
        argv += ["--profile", p]
    for g in case_globs:
        argv += ["--case", g]
    if strict:
        argv.append("--strict")
    argv += ["--known-failures", known_path or "known-failures.toml", "--update-known-failures"]
    click.echo(text_summary(run, verbose=verbose, command_hint=shlex.join(argv)), err=to_stdout)
    if update_known_failures and known_path:
        n = known.write_updated(run.cases, known_path)
        click.echo(f"wrote {n} known failure(s) to {known_path}", err=to_stdout)
    sys.exit(code)
# ---- end conform ----


# ---- synth (reference models) ----
def _scenarios() -> list[str]:
    from virtio_balloon_proto.models.synth import SCENARIOS

    return list(SCENARIOS)


@trace.command("synth")
@click.option("--profile", type=_PROFILES, default="spec", show_default=True,
              help="protocol profile (dialect)")
@click.option("--scenario", type=click.Choice(_scenarios()), default="inflate",
              show_default=True, help="what the driver does (docs/trace-format.md)")
@click.option("--endian", type=click.Choice(["le", "be"]), default="le", show_default=True,
              help="le: VERSION_1; be: a legacy big-endian guest")
@click.option("--word-size", type=click.Choice(["32", "64"]), default="64", show_default=True,
              help="v3 BITS_PER_LONG")
@click.option("--page-size", type=click.Choice(["4096", "16384", "65536"]), default="4096",
              show_default=True, help="guest PAGE_SIZE in bytes")
@click.option("--pages", type=click.IntRange(1, 1 << 26), default=1024, show_default=True,
              help="4 KiB frames the scenario moves")
@click.option("--seed", type=int, default=0, show_default=True,
              help="random seed (which pages the driver picks)")
@click.option("--exact", is_flag=True,
              help="v3: reproduce the seed driver message for message, bugs included")
@click.option("--memory", type=click.IntRange(1, 1 << 24), default=256, show_default=True,
              help="guest RAM in MiB (at most 16 TiB: spec PFNs are 32-bit 4 KiB frames)")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), default=None,
              help="trace file to write (- for stdout)")
@click.option("--corpus", type=click.Path(file_okay=False), default=None,
              help="instead: (re)generate the whole conformance corpus into DIR")
@json_option('print {"wrote": FILE, "events": N} (or {"wrote": DIR, "traces": N})',
             expose=False)
def trace_synth(profile: str, scenario: str, endian: str, word_size: str, page_size: str,
                pages: int, seed: int, exact: bool, memory: int, out: str | None,
                corpus: str | None) -> None:
    """Synthesise traffic: the reference driver against the reference device, as a trace."""
    from virtio_balloon_proto.errors import UsageError
    from virtio_balloon_proto.models.synth import SynthOptions, synthesize, write_corpus
    from virtio_balloon_proto.trace import write_trace

    if corpus is not None:
        n = write_corpus(corpus)
        if json_mode():
            emit_json({"wrote": corpus, "traces": n})
        else:
            click.echo(f"wrote {n} traces to {corpus}")
        return
    if out is None:
        raise UsageError("give -o TRACE (or --corpus DIR)", field="out")
    _check_out(out)
    opts = SynthOptions(profile, scenario, endian, int(word_size), int(page_size), pages, seed,
                        exact, memory << 20)
    header, events = synthesize(opts)
    n = write_trace(out, header, events)
    if json_mode():
        emit_json({"wrote": out, "events": n})
    else:
        click.echo(f"wrote {out}: {n} events", err=_is_stream(out))
# ---- end synth ----


# ---- decode (capture decoder) ----
def _pages_text(pages: Any, most: int = 8) -> str:
    """Compact ranges, the first ``most`` of them, then how many more."""
    ext = pages.extents()
    parts = [f"{a}" if n == 1 else f"{a}-{a + n - 1}" for a, n in ext[:most]]
    more = f",... (+{len(ext) - most} ranges)" if len(ext) > most else ""
    return ",".join(parts) + more


def _describe(d: Any) -> str:
    """One line for a decoded message: what it is and which pages it names."""
    b = d.buffer
    head = f"line {d.line} {d.role} q{d.queue}" + (f" head {d.head}" if d.head is not None else "")
    if d.direction == "used":
        head += f" used len {d.used_len}"
    if b is None:
        return head + (f": ERROR {d.error}" if d.error else "")
    fields = b.decoded.fields() if b.decoded is not None else {}
    if b.kind == "pfns":
        what = f"pfns[{len(fields.get('pfns', []))}]"
    elif b.kind == "bmap":
        what = ("bmap " + " ".join(f"{k}={fields[k]}" for k in
                ("cmd", "page_shift", "flag", "req_id", "start_pfn", "bmap_len") if k in fields)
                + f" buffers={len(fields.get('bitmap', []))}")
    elif b.kind == "hybrid":
        what = (f"hybrid cmd={fields.get('cmd')} flag={fields.get('flag')} id={fields.get('id')} "
                f"data_len={fields.get('data_len')} records={len(fields.get('records', []))}")
    elif b.kind == "stats":
        what = "stats " + " ".join(f"{e['name'] or e['tag']}={e['val']}"
                                   for e in fields.get("entries", []))
    elif b.kind == "req":
        what = f"req cmd={fields.get('cmd')} param={fields.get('param'):#x}"
    elif b.kind == "hint-cmd":
        what = f"hint cmd_id={fields.get('cmd_id'):#x}"
    else:
        what = b.kind
    text = f"{head}: {what}"
    if len(b.pages):
        text += f" pages {_pages_text(b.pages)} ({len(b.pages)} frames)"
    for f in b.findings:
        text += f"\n    ! {f}"
    return text


@main.command("decode")
@click.argument("trace_file", type=click.Path(dir_okay=False))
@json_option("one JSON object per message (JSON Lines), then the summary with --summary")
@click.option("--queue", "queues", multiple=True,
              type=click.Choice(["inflate", "deflate", "stats", "free_page", "misc", "reporting"]),
              help="only messages of this queue role (repeatable)")
@click.option("--summary", is_flag=True, help="print only the summary")
def decode_cmd(trace_file: str, as_json: bool, queues: tuple[str, ...], summary: bool) -> None:
    """Decode every message of a recorded trace (docs/trace-format.md)."""
    import json
    import os

    from virtio_balloon_proto.trace import TraceReader
    from virtio_balloon_proto.tracedecode import Summary, decode_trace

    total = os.path.getsize(trace_file)
    show_bar = sys.stderr.isatty() and total > 8 << 20
    summ = Summary()
    with TraceReader(trace_file) as reader:
        stream = decode_trace(reader, set(queues) or None, summ)
        with click.progressbar(length=total, label="decoding", file=sys.stderr,
                               hidden=not show_bar) as bar:
            for d in stream:
                if show_bar:
                    bar.update(reader._f.tell() - bar.pos)
                if summary:
                    continue
                click.echo(json.dumps(d.to_json()) if as_json else _describe(d))
    if as_json:
        if summary:
            click.echo(json.dumps({"summary": summ.to_json()}))
        return
    s = summ.to_json()
    click.echo("summary:" if not summary else f"summary of {trace_file}:")
    click.echo(f"  messages       {s['messages']}")
    click.echo(f"  pages/queue    {s['pages_per_queue']}")
    click.echo(f"  net balloon    {s['net_balloon']['frames']} frames "
               f"({_pages_text(summ.balloon) or 'none'})")
    for req, u in s["unused_reports"].items():
        click.echo(f"  unused {req:>8} {u['frames']} frames")
    if summ.reported:
        click.echo(f"  reported       {s['reported']['frames']} frames")
    if summ.hinted:
        click.echo(f"  hinted         {s['hinted']['frames']} frames")
    if s["stats"]["buffers"]:
        click.echo(f"  stats          {s['stats']['buffers']} buffers, last {s['stats']['last']}")
    click.echo(f"  findings       {s['findings'] or 'none'}")
    if s["errors"]:
        click.echo(f"  undecodable    {s['errors']} buffer(s)")
# ---- end decode ----


# ---- capture (real peers) ----
@_group("capture", "Capture real balloon traffic from a real peer.")
def capture() -> None:
    pass


@capture.command("qemu-guest")
@click.option("--kernel", type=click.Path(dir_okay=False), default="guest/vmlinuz",
              show_default=True, help="guest kernel (build with tools/build_guest.py)")
@click.option("--initrd", type=click.Path(dir_okay=False), default="guest/initrd.gz",
              show_default=True, help="initramfs loading virtio_balloon")
@click.option("--memory", default="512M", show_default=True, help="guest RAM")
@click.option("--balloon-to", default="384M", show_default=True,
              help="balloon target (QMP 'balloon'); deflated back afterwards")
@click.option("--transport", type=click.Choice(["modern", "legacy"]), default="modern",
              show_default=True, help="virtio-pci transport (modern: VERSION_1)")
@click.option("--device-option", "device_options", multiple=True,
              help="virtio-balloon-pci property to switch on (deflate-on-oom, "
                   "free-page-reporting, ...); repeatable")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), required=True,
              help="trace file to write (atomically; checked before the guest boots)")
@json_option('print {"wrote", "events", "buffers", "inflated", "deflated", "timings"}',
             expose=False)
def capture_qemu_guest(kernel: str, initrd: str, memory: str, balloon_to: str, transport: str,
                       device_options: tuple[str, ...], out: str) -> None:
    """Boot a Linux guest under QEMU/TCG, move its balloon through QMP, record the traffic."""
    import json
    import subprocess
    from pathlib import Path

    from virtio_balloon_proto.io import check_writable
    from virtio_balloon_proto.qemu.capture import capture_guest

    check_writable(out)  # before a guest boots, not after
    # provenance: the guest pieces' package versions (tools/build_guest.py's manifest) + QEMU's
    guest = "guest: unknown kernel"
    manifest = Path(kernel).parent / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        guest = "guest: Linux " + m.get("kernel_release", "?") + " (" + ", ".join(
            f"{k} {v}" for k, v in sorted(m.get("packages", {}).items())) + ")"
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                          check=False).stdout.splitlines()[:1]
    provenance = "; ".join([*qemu, guest, f"vbproto capture qemu-guest --memory {memory} "
                            f"--balloon-to {balloon_to} --transport {transport}"])
    cap = capture_guest(Path(kernel), Path(initrd), memory=memory, balloon_to=balloon_to,
                        transport=transport, device={o: True for o in device_options},
                        output=Path(out), provenance=provenance)
    pfns = cap.pfn_lists()
    moved = {r: sum(len(b["pfns"]) for b in pfns if b["role"] == r) for r in ("inflate", "deflate")}
    if json_mode():
        emit_json({"wrote": out, "events": len(cap.events), "buffers": len(pfns),
                   "inflated": moved["inflate"], "deflated": moved["deflate"],
                   "timings": cap.timings})
        return
    click.echo(f"wrote {out}: {len(cap.events)} events; {len(pfns)} buffers, "
               f"{moved['inflate']} PFNs inflated, {moved['deflate']} deflated")
    for k, v in cap.timings.items():
        click.echo(f"  {k:24} {v:.2f} s")
# ---- end capture ----


# ---- analyze (encoding analysis) ----
@main.command("analyze")
@click.option("--pages", "pages_text", default=None,
              help="page set: compact text '0-1023,4096' or @FILE (JSON extents or text)")
@click.option("--shape", type=click.Choice(["dense", "sparse", "fragmented", "hugepage", "all"]),
              default=None, help="synthetic shape instead of --pages (default: sparse)")
@click.option("--frames", type=click.IntRange(1, 1 << 28), default=2_097_152, show_default=True,
              help="guest size in 4 KiB frames (8 GiB by default)")
@click.option("--density", type=click.FloatRange(0.0, 1.0), default=0.1, show_default=True,
              help="fraction of the guest in the shape")
@click.option("--seed", type=int, default=0, show_default=True,
              help="random seed of the synthetic shape")
@click.option("--endian", type=click.Choice(["le", "be"]), default="le", show_default=True,
              help="byte order of __virtio fields (le with VERSION_1)")
@click.option("--word-size", type=click.Choice(["32", "64"]), default="64", show_default=True,
              help="v3 bitmap BITS_PER_LONG")
@click.option("--word-order", type=click.Choice(["le", "be"]), default=None,
              help="v3 bitmap word byte order [default: --endian]")
@click.option("--page-size", type=click.Choice(["4096", "16384", "65536"]), default="4096",
              show_default=True, help="guest PAGE_SIZE")
@click.option("--repeats", type=click.IntRange(1, 50), default=3, show_default=True,
              help="timing repeats (median)")
@json_option("print JSON (one object, or a list with --shape all)")
@click.option("--plot", "plot", type=click.Path(dir_okay=False), default=None,
              help="draw bytes on the wire against density (needs the 'plot' extra)")
def analyze_cmd(pages_text: str | None, shape: str | None, frames: int, density: float,
                seed: int, endian: str, word_size: str, word_order: str | None, page_size: str,
                repeats: int, as_json: bool, plot: str | None) -> None:
    """Bytes, buffers, descriptors and codec time of each encoding for a page set."""
    import json

    from virtio_balloon_proto import analysis as an
    from virtio_balloon_proto.errors import UsageError

    layout = _layout(endian, word_size, word_order, int(page_size))
    if pages_text is not None and shape is not None:
        raise UsageError("give --pages or --shape, not both", field="pages")
    if pages_text is not None and plot:
        raise UsageError("--plot sweeps the density of a --shape; it cannot use --pages",
                         field="plot")
    if plot:
        from virtio_balloon_proto.io import check_writable

        an.check_plot_available()
        check_writable(plot)  # before the sweep, not after it
    cases: list[tuple[str, Any]] = []
    if pages_text is not None:
        ps = an.load_pages(pages_text)
        cases.append(("pages", an.analyze(ps, layout, repeats=repeats)))
    else:
        for name in (an.SHAPES if shape == "all" else (shape or "sparse",)):
            ps = an.shape(name, frames, density, seed=seed, layout=layout)
            cases.append((f"{name} d={density:g}",
                          an.analyze(ps, layout, guest_frames=frames, repeats=repeats)))
    if as_json:
        out = [dict(case=c, **a.to_json()) for c, a in cases]
        click.echo(json.dumps(out[0] if len(out) == 1 else out))
    else:
        for c, a in cases:
            click.echo(an.render_table(c, a))
    if plot:
        names = an.SHAPES if shape == "all" else (shape or "sparse",)
        an.plot_sweeps({n: an.sweep(n, frames, layout=layout, seed=seed) for n in names}, plot)
        if not as_json:
            click.echo(f"wrote {plot}")
# ---- end analyze ----


# ---- vectors (golden vectors) ----
@_group("vectors", "Golden test vectors: generate the corpus, verify a codec against it.")
def vectors() -> None:
    pass


@vectors.command("generate")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="directory to write the vector files and schema/ into")
@json_option('print {"wrote": DIR, "files": [...]}', expose=False)
def vectors_generate(out: str) -> None:
    """Write every vector file and JSON Schema (deterministic: byte-identical each run)."""
    from virtio_balloon_proto.vectorgen import generate

    paths = generate(out)
    if json_mode():
        emit_json({"wrote": out, "files": [str(p) for p in paths]})
    else:
        click.echo(f"wrote {len(paths)} file(s) to {out}")


@vectors.command("verify", exit_codes="0 at least one vector checked and none failed "
                 "(unsupported ones are skipped); 1 a vector failed, or nothing tested (every "
                 "vector skipped); 2 bad usage or input; 130 interrupted.")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--impl", default=None, metavar="SPEC",
              help="codec to check: reference (default) or stdio:'CMD' (docs/vectors.md)")
@click.option("--junit", "junit", type=click.Path(dir_okay=False), default=None,
              help="write a JUnit XML report to FILE (atomically)")
@click.option("--timeout", type=float, callback=seconds, default=5.0, show_default=True,
              help="seconds per stdio request (0 < T <= 86400)")
@click.option("--max-failures", type=int, default=20, show_default=True,
              help="failures listed in the summary")
@json_option('print {"codec", "counts", "files": {FILE: counts}, "failures": [...], '
             '"exit_code"}')
def vectors_verify(directory: str | None, impl: str | None, junit: str | None, timeout: float,
                   max_failures: int, as_json: bool) -> None:
    """Check a codec against every vector in DIRECTORY (default: the packaged corpus)."""
    from virtio_balloon_proto.io import check_writable
    from virtio_balloon_proto.vectorgen.verify import open_codec, verify, write_junit

    if junit:
        check_writable(junit)
    report = verify(directory, open_codec(impl, timeout))
    counts = report.counts()
    nothing = counts["passed"] + counts["failed"] == 0
    code = 1 if not report.ok or nothing else 0
    if junit:
        write_junit(junit, report)
    if as_json:
        emit_json({"codec": report.codec, "counts": counts,
                   "files": {f: report.counts(f) for f in report.files},
                   "failures": [{"file": o.file, "id": o.id, "message": o.message}
                                for o in report.outcomes if o.status == "failed"],
                   "nothing_tested": nothing, "exit_code": code})
    else:
        for line in report.summary_lines(max_failures):
            click.echo(line)
        if nothing:
            click.echo("nothing tested: every vector was skipped as unsupported by the codec")
    sys.exit(code)
# ---- end vectors ----
