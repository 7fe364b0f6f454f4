"""The wire layer: every balloon message, byte for byte, in every dialect and byte order.

* :mod:`.layout`   -- the parameters a decoder needs (byte order, bitmap word size/order, page size)
* :mod:`.structs`  -- construct definitions mirroring the C headers, one factory per byte order
* :mod:`.bulk`     -- the vectorised (numpy) paths for PFN arrays, bitmaps, records, stats
* :mod:`.messages` -- typed values, ``decode``/``encode`` and the findings of each kind
"""

from .layout import WireLayout
from .messages import KINDS, Decoded, decode, encode, encode_segments, message_from_json

__all__ = [
    "KINDS",
    "Decoded",
    "WireLayout",
    "decode",
    "encode",
    "encode_segments",
    "message_from_json",
]
