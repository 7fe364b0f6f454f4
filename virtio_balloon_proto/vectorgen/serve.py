"""``python -m virtio_balloon_proto.vectorgen.serve``: the reference codec over the vector
stdio protocol (a working peer for ``vbproto vectors verify --impl stdio:...``)."""

from __future__ import annotations

import sys

from ..errors import PeerError
from .reference import handle
from .stdio import serve


def main() -> int:
    try:
        serve(handle, sys.stdin.buffer, sys.stdout.buffer)
    except PeerError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
