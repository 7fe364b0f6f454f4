"""``vbproto trace``: validate recorded traces, import captures (virtio_balloon_proto/trace),
and synthesise traces from the reference models (``trace synth``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from virtio_balloon_proto.cliframe import (
    Group,
    emit_json,
    json_mode,
    json_option,
)
from virtio_balloon_proto.commands.common import (
    PROFILES,
    ROLES,
    check_out,
    group,
    is_stream,
)


def _trace_source(ctx: click.Context, provenance: str | None) -> Any:
    from virtio_balloon_proto.trace.header import TraceSource

    return TraceSource(command="vbproto " + " ".join(sys.argv[1:]), provenance=provenance)


def _hex_int(text: str | None, what: str) -> int | None:
    from virtio_balloon_proto.trace.import_common import parse_int

    return None if text is None else parse_int(text, what)


_MODELS = click.Choice(["negotiated", "offered", "fixed", "cloud-hypervisor"])


def _feature_kwargs(offered: str | None, negotiated: str | None, index_model: str | None,
                    default_model: str) -> dict[str, Any]:
    """The feature words and queue index model an importer takes, parsed from the options.

    Every importer calls this before reading its input, so the output is checked here too."""
    check_out(click.get_current_context().params["out"])
    return {"offered": _hex_int(offered, "offered"),
            "negotiated": _hex_int(negotiated, "negotiated"),
            "index_model": index_model or default_model}


def _feature_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--negotiated", help="negotiated feature word (hex); default per importer")(f)
    f = click.option("--offered", help="offered feature word (hex); default: = negotiated")(f)
    f = click.option("--index-model", type=_MODELS, default=None, help="queue index model")(f)
    f = click.option("--profile", type=PROFILES, required=True, help="protocol profile")(f)
    f = click.option(
        "-o",
        "--out",
        required=True,
        type=click.Path(dir_okay=False),
        help="trace file to write (atomically; - for stdout)",
    )(f)
    f = json_option('print {"wrote": FILE, "events": N}', expose=False)(f)
    return f


@group("trace", "Recorded virtqueue traffic: validate traces, import captures.")
def trace() -> None:
    pass


@trace.command("validate", exit_codes="0 valid; 1 invalid (every problem listed with its "
               "line); 2 not readable as a trace at all (empty, not JSON), bad usage; 130 "
               "interrupted.")
@click.argument("trace_file", metavar="TRACE", type=click.Path(dir_okay=False))
@json_option('print {"file", "valid", "problems": [{"line", "message"}]}')
def trace_validate(trace_file: str, as_json: bool) -> None:
    """Check TRACE against the vbproto-trace/1 schema; print every problem with its line."""
    from virtio_balloon_proto.trace.reader import iter_problems

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


@trace.group("import", cls=Group)
def trace_import() -> None:
    """Write a trace from a ring dump, a QEMU core or a QEMU trace log."""


def _done(out: str, n: int) -> None:
    if json_mode():
        emit_json({"wrote": out, "events": n})
    else:
        click.echo(f"wrote {out}: {n} event(s)", err=is_stream(out))


def _ring_dump_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options every ring-in-a-memory-dump importer takes."""
    for o in reversed([
        click.option("--memory", "memory", multiple=True, required=True, metavar="FILE[@GPA]",
                     help="raw guest memory dump mapped at GPA (repeatable)"),
        click.option("--size", required=True, type=int, help="queue size"),
        click.option("--role", required=True, type=ROLES, help="queue role"),
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
    from virtio_balloon_proto.trace.import_common import load_memory, parse_int, write_import
    from virtio_balloon_proto.trace.import_ring import import_split_ring

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
    from virtio_balloon_proto.trace.import_common import load_memory, parse_int, write_import
    from virtio_balloon_proto.trace.import_ring import import_packed_ring

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
@click.option("--virtio-status", "virtio_status", type=click.Path(dir_okay=False),
              help="JSON from x-query-virtio-status: the offered and negotiated features as "
                   "QEMU reports them (--offered/--negotiated override)")
@click.option("--endian", type=click.Choice(["le", "be"]), default="le", show_default=True,
              help="guest byte order (legacy rings)")
@_feature_options
def trace_import_qemu_core(
    core: str,
    status: tuple[str, ...],
    virtio_status: str | None,
    endian: str,
    out: str,
    profile: str,
    index_model: str | None,
    offered: str | None,
    negotiated: str | None,
) -> None:
    """Import the balloon queues of a QEMU dump-guest-memory ELF CORE."""
    from virtio_balloon_proto.trace.import_common import write_import
    from virtio_balloon_proto.trace.import_core import (
        import_qemu_core,
        load_queue_status,
        load_virtio_status,
    )

    header, events, mem = import_qemu_core(
        core,
        load_queue_status(status),
        profile=profile,
        **_feature_kwargs(offered, negotiated, index_model, "offered"),
        endian=endian,
        source=_trace_source(click.get_current_context(), f"QEMU core {core}"),
        virtio_status=None if virtio_status is None else load_virtio_status(virtio_status),
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
    from virtio_balloon_proto.trace.import_common import write_import
    from virtio_balloon_proto.trace.import_log import import_qemu_log

    header, events = import_qemu_log(
        log,
        profile=profile,
        **_feature_kwargs(offered, negotiated, index_model, "offered"),
        endian=endian,
        source=_trace_source(click.get_current_context(), f"QEMU trace log {log}"),
    )
    _done(out, write_import(out, header, events))


class _Scenarios(click.Choice):  # type: ignore[type-arg]
    """models.synth's scenario names, imported when first needed: importing the synthesiser
    at start-up cost every command ~0.3 s (issue 13: start-up counts in each ratio)."""

    def __init__(self) -> None:
        super().__init__([])

    @property  # type: ignore[override]
    def choices(self) -> list[str]:
        from virtio_balloon_proto.models.synth import SCENARIOS

        return list(SCENARIOS)

    @choices.setter
    def choices(self, _value: object) -> None:
        pass


@trace.command("synth")
@click.option("--profile", type=PROFILES, default="spec", show_default=True,
              help="protocol profile (dialect)")
@click.option("--scenario", type=_Scenarios(), default="inflate",
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
    from virtio_balloon_proto.models.synth import SynthOptions, synthesize_to, write_corpus

    if corpus is not None:
        n = write_corpus(corpus)
        if json_mode():
            emit_json({"wrote": corpus, "traces": n})
        else:
            click.echo(f"wrote {n} traces to {corpus}")
        return
    if out is None:
        raise UsageError("give -o TRACE (or --corpus DIR)", field="out")
    check_out(out)
    opts = SynthOptions(profile, scenario, endian, int(word_size), int(page_size), pages, seed,
                        exact, memory << 20)
    n = synthesize_to(out, opts)  # streamed: bounded memory at any --pages
    if json_mode():
        emit_json({"wrote": out, "events": n})
    else:
        click.echo(f"wrote {out}: {n} events", err=is_stream(out))
