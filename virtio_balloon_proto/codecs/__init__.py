"""Codecs: page sets <-> the buffers each dialect's driver sends, and buffer decoding by role.

``encode_*`` turn a :class:`~virtio_balloon_proto.pageset.PageSet` into the chains a driver
posts; :func:`decode_buffer` turns one posted chain (plus, for device-writable buffers, what the
device wrote) back into a decoded message, the pages it names, and findings.
"""

from .buffers import Chain, Segment
from .decode import DecodedBuffer, decode_buffer, decode_pages
from .encode import encode_pages

__all__ = ["Chain", "DecodedBuffer", "Segment", "decode_buffer", "decode_pages", "encode_pages"]
