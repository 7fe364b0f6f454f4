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
