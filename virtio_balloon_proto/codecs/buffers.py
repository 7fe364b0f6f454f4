"""Buffers as drivers post them: chains of segments (descriptors), transport-neutral.

A :class:`Segment` is one descriptor: its guest address and length, whether the device may
write it (``VIRTQ_DESC_F_WRITE``), and for device-readable segments the bytes the driver put
there.  Encoders produce ``list[Chain]``; decoders take one ``Chain``.  The conformance layer's
device-under-test interface speaks the same type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

PAGE_SHIFT_4K = 12


class Segment(NamedTuple):
    """One descriptor of a chain the driver makes available.

    A NamedTuple rather than a frozen dataclass: a 7 GiB inflate is 7,168 of them, and
    building frozen dataclasses was the largest cost of encoding it (bench target (c)).
    """

    addr: int  # guest-physical address (meaningful for hint/report ranges)
    length: int
    writable: bool  # VIRTQ_DESC_F_WRITE
    data: bytes = b""  # driver-written bytes (device-readable segments only)

    @classmethod
    def out(cls, data: bytes, addr: int = 0) -> Segment:
        return cls(addr, len(data), False, bytes(data))

    @classmethod
    def into(cls, addr: int, length: int) -> Segment:
        return cls(addr, length, True)


Chain = list[Segment]


def out_data(chain: Sequence[Segment]) -> list[bytes]:
    """The device-readable bytes of a chain, one entry per readable descriptor, in order."""
    return [s.data for s in chain if not s.writable]


def chain_bytes(chains: Sequence[Sequence[Segment]]) -> int:
    """Bytes the driver wrote for these chains (what crosses the ring as payload)."""
    return sum(len(s.data) for c in chains for s in c if not s.writable)


def chain_descriptors(chains: Sequence[Sequence[Segment]]) -> int:
    return sum(len(c) for c in chains)
