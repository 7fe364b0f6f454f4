"""What a QEMU balloon session posts on a virtqueue (VIRTIO 1.2 5.5.6).

* :func:`pfn_array` -- an inflate/deflate buffer: PFNs as a ``__virtio32`` array (5.5.6.1);
* :func:`stats_buffer` -- ``struct virtio_balloon_stat`` entries (5.5.6.3);
* ``RawSegment`` and :class:`Posted` -- a chain as :meth:`~.device.QemuBalloon.post` laid it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError

#: a raw segment: (guest address, length, device-writable)
RawSegment = tuple[int, int, bool]


def pfn_array(pfns: Sequence[int] | range | np.ndarray[Any, Any]) -> bytes:
    """PFNs as the ``__virtio32`` little-endian array of an inflate/deflate buffer."""
    arr = np.asarray(pfns, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= 1 << 32):
        raise UsageError("a PFN does not fit in 32 bits", field="pfns")
    return arr.astype("<u4").tobytes()


def stats_buffer(stats: dict[int, int]) -> bytes:
    """``struct virtio_balloon_stat`` entries (``le16 tag | le64 val``, packed, 10 bytes)."""
    return b"".join(struct.pack("<HQ", tag, val) for tag, val in stats.items())


@dataclass(frozen=True)
class Posted:
    queue: int
    head: int
    segments: tuple[RawSegment, ...]
