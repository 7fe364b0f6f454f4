"""``python -m virtio_balloon_proto`` is ``vbproto``."""

import signal
import sys


def _interrupted_early(signum: int, frame: object) -> None:
    # SIGINT/SIGTERM while the CLI is still importing (before its own handlers exist): the
    # same one line and status 130 as later, not a KeyboardInterrupt traceback or 143
    sys.stderr.write("vbproto: interrupted\n")
    raise SystemExit(130)


for _sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_sig, _interrupted_early)

from virtio_balloon_proto.cli import main  # noqa: E402  (after the handlers, on purpose)

main(prog_name="vbproto")
