"""``vbproto message``: decode and encode single balloon messages (the wire layer,
virtio_balloon_proto/wire)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from virtio_balloon_proto.cliframe import (
    emit_json,
    json_mode,
    json_option,
)
from virtio_balloon_proto.commands.common import (
    KINDS,
    PROFILES,
    group,
    wire_layout,
)


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
        click.option("--profile", "profile", type=PROFILES, default="spec", show_default=True,
                     help="protocol profile (dialect)"),
        click.option("--kind", "kind", type=KINDS, required=True,
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


@group("message", "Decode and encode single balloon messages (the wire layer).")
def message() -> None:
    pass


@message.command("decode")
@_layout_options
@json_option("print JSON (kind, fields, pages, findings)")
@click.argument("source")
def message_decode(profile: str, kind: str, endian: str, word_size: str, word_order: str | None,
                   page_size: int, role: str, as_json: bool, source: str) -> None:
    """Decode SOURCE (HEX, @FILE or -) as one message of --kind."""

    from virtio_balloon_proto.wire import decode

    data = _read_input(source)
    # a v3 file holds the chain [balloon_bmap_hdr][bitmap]: split it where the driver does
    segments = [data[:32], data[32:]] if kind == "bmap" and len(data) > 32 else [data]
    d = decode(kind, segments, wire_layout(endian, word_size, word_order, page_size),
               profile=profile, role=role)
    if as_json:
        # streamed: millions of runs (or hybrid records) are never one object or one string
        for piece in d.iter_json():
            click.echo(piece, nl=False)
        click.echo()
        return
    click.echo(f"{kind} ({profile}, {endian}):")
    for piece in d.iter_brief_text(max_items=16):  # a bitmap's hex streamed, not held
        click.echo(piece, nl=False)
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
    layout = wire_layout(endian, word_size, word_order, page_size)
    data = encode(message_from_json(kind, obj, layout, role=role), layout)
    if out:
        write_atomic(out, data)
    if json_mode():
        emit_json({"wrote": out, "bytes": len(data)} if out else
                  {"hex": data.hex(), "bytes": len(data)})
    elif not out:
        click.echo(data.hex())
