"""The ``vbproto`` command.

Thin by design: every command parses its options, calls the library, and prints.  The frame
they run in (virtio_balloon_proto/cliframe.py) turns any
:class:`~virtio_balloon_proto.errors.VBProtoError`, user-path ``OSError`` or usage error into
one readable line on stderr (JSON on stdout under --json) and exit status 2 -- never a
traceback.  Exit status 1 means "the check ran and found failures, or tested nothing"
(conformance, vectors, trace validate); 0 a check that judged something and found no failure.

Each command group lives in its own module under virtio_balloon_proto/commands/ (named for the
group, saying which part of the library it drives); this file is the root group and the list
of what hangs on it.
"""

from __future__ import annotations

import click

import virtio_balloon_proto._startup  # noqa: F401  (before numpy is imported: its settings)
from virtio_balloon_proto import __version__
from virtio_balloon_proto.cliframe import Group, install_signal_handlers
from virtio_balloon_proto.commands import (
    capture,
    conform,
    decode,
    fuzz,
    matrix,
    message,
    trace,
    vectors,
)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vbproto")
def main() -> None:
    """Reference toolkit for the virtio memory-balloon wire protocol.

    Every command takes --json (one JSON document on stdout, JSON Lines for streams; errors
    are JSON too) and -h/--help (options, and what each exit status means)."""
    install_signal_handlers()


for _command in (
    message.message,
    trace.trace,
    conform.conform,
    decode.decode_cmd,
    decode.analyze_cmd,
    capture.capture,
    vectors.vectors,
    fuzz.fuzz_cmd,
):
    main.add_command(_command)
conform.conform.add_command(matrix.matrix)  # vbproto conform matrix
