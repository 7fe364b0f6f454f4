"""``python -m virtio_balloon_proto`` is ``vbproto``."""

from virtio_balloon_proto.cli import main

main(prog_name="vbproto")
