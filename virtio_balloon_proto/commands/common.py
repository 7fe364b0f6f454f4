"""What the command modules share: the option vocabularies, the layout a wire option set
names, the output checks, and the group factory (every group runs in the CLI frame,
virtio_balloon_proto/cliframe.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from virtio_balloon_proto.cliframe import Group, json_mode

PROFILES = click.Choice(["spec", "v3", "hybrid"])
KINDS = click.Choice(["pfns", "bmap", "req", "hybrid", "stats", "config", "hint-cmd"])
ROLES = click.Choice(["inflate", "deflate", "stats", "free_page", "misc", "reporting"])


def group(name: str, help_text: str) -> Callable[[Callable[..., Any]], Group]:
    """A command group named NAME in the CLI frame; cli.py registers it on ``vbproto``."""

    def deco(f: Callable[..., Any]) -> Group:
        g = click.group(name=name, cls=Group, help=help_text)(f)
        assert isinstance(g, Group)
        return g

    return deco


def wire_layout(endian: str, word_size: str, word_order: str | None, page_size: int) -> Any:
    from virtio_balloon_proto.wire import WireLayout

    return WireLayout(endian, int(word_size), word_order or endian, page_size)




def is_stream(out: str) -> bool:
    """stdout, a device, a FIFO: the "wrote" line goes to stderr, out of the data's way."""
    from virtio_balloon_proto.io import is_stream

    return is_stream(out)




def check_out(out: str) -> None:
    """The output can be written, and --json and the trace do not both claim stdout."""
    from virtio_balloon_proto.errors import UsageError
    from virtio_balloon_proto.io import STDOUT, check_writable

    if out == STDOUT and json_mode():
        raise UsageError("--json prints on stdout: give -o FILE, not -o -", field="out")
    check_writable(out)


