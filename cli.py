"""The ``vbproto`` command.

Thin by design: every command parses its options, calls the library, and prints.  Any
:class:`~virtio_balloon_proto.errors.VBProtoError` (and any user-path ``OSError``) becomes one
readable line on stderr and exit status 2 -- never a traceback.  Exit status 1 is reserved for
"the check ran and found failures" (conformance, vectors).

The file is split into one section per command group; each section says which part of the
library it drives.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from virtio_balloon_proto import __version__
from virtio_balloon_proto.errors import VBProtoError


class _Group(click.Group):
    """A click group that turns our errors into one line + exit 2 for every subcommand."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VBProtoError as exc:
            click.echo(f"vbproto: error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:
            # a path the user gave could not be read or written
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            click.echo(f"vbproto: error:{where}: {exc.strerror or exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("vbproto: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vbproto")
def main() -> None:
    """Reference toolkit for the virtio memory-balloon wire protocol."""


def _group(name: str, help_text: str) -> Callable[[Callable[..., Any]], click.Group]:
    def deco(f: Callable[..., Any]) -> click.Group:
        return main.group(name=name, cls=_Group, help=help_text)(f)

    return deco


# ---- message (wire layer) ----
def _read_input(source: str) -> bytes:
    """HEX on the command line, @FILE for raw bytes, - for hex (or raw) on stdin."""
    from virtio_balloon_proto.errors import UsageError

    if source == "-":
        raw = sys.stdin.buffer.read()
        try:
            return bytes.fromhex(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return raw
    if source.startswith("@"):
        with open(source[1:], "rb") as fh:
            return fh.read()
    text = "".join(source.split()).removeprefix("0x")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise UsageError(
            "input is not hex (give HEX, @FILE for raw bytes, or - for stdin)", field="input"
        ) from None


def _layout_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--profile", "profile", default="spec", show_default=True,
                     help="spec | v3 | hybrid"),
        click.option("--kind", "kind", required=True,
                     help="pfns | bmap | req | hybrid | stats | config | hint-cmd"),
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
@click.option("--json", "as_json", is_flag=True, help="print JSON (kind, fields, pages, findings)")
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
        click.echo(f"  pages        {ps.to_text() or '(none)'} ({len(ps)} frames)")
    for f in d.findings:
        click.echo(f"  finding      {f}")
    if not d.findings:
        click.echo("  findings     none")


@message.command("encode")
@_layout_options
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="write raw bytes to FILE instead of printing hex")
@click.argument("source", default="-")
def message_encode(profile: str, kind: str, endian: str, word_size: str, word_order: str | None,
                   page_size: int, role: str, out: str | None, source: str) -> None:
    """Encode the JSON in SOURCE (@FILE, - or inline) -- 'fields' or 'pages' -- to bytes."""
    import json

    from virtio_balloon_proto.errors import UsageError
    from virtio_balloon_proto.io import write_atomic
    from virtio_balloon_proto.wire import encode, message_from_json
    from virtio_balloon_proto.wire.messages import check_kind

    check_kind(kind, profile)
    if source == "-":
        text = sys.stdin.read()
    elif source.startswith("@"):
        with open(source[1:], encoding="utf-8") as fh:
            text = fh.read()
    else:
        text = source
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"input is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                         field="input") from None
    layout = _layout(endian, word_size, word_order, page_size)
    data = encode(message_from_json(kind, obj, layout, role=role), layout)
    if out:
        write_atomic(out, data)
    else:
        click.echo(data.hex())
# ---- end message ----
