"""What the zoo's devices share: the reference device with a few helpers to reproduce a bug.

A zoo device is the reference device (models/device.py, one allowed behaviour) changed in
exactly the way a published bug changed a real device; its twin is the same device with the
published fix.  The helpers here read a chain the way a device implementation does (whole
``__virtio32`` PFNs per descriptor, in order) so the bug can be reproduced word for word.
"""

from __future__ import annotations

from typing import Any, Literal

from virtio_balloon_proto.codecs import Segment
from virtio_balloon_proto.models.device import ReferenceDevice
from virtio_balloon_proto.models.interface import Negotiated, Setup, Used

__all__ = ["DeadDevice", "ReferenceDevice", "Segment", "ZooDevice", "chain_pfns", "pfn_segment",
           "pfns_of"]


def pfns_of(seg: Segment, little_endian: bool) -> list[int]:
    """The whole 32-bit PFNs of one device-readable descriptor, in order (a trailing partial
    word is not a PFN)."""
    order: Literal["little", "big"] = "little" if little_endian else "big"
    n = len(seg.data) // 4
    return [int.from_bytes(seg.data[4 * i : 4 * i + 4], order) for i in range(n)]


def chain_pfns(segments: list[Segment], little_endian: bool) -> list[int]:
    """The whole 32-bit PFNs of a chain's device-readable bytes taken as one buffer, as QEMU
    reads them (``iov_to_buf(elem->out_sg, elem->out_num, offset, &pfn, 4)``: a PFN may
    straddle two descriptors; a trailing partial word is not a PFN)."""
    data = b"".join(s.data for s in segments if not s.writable)
    order: Literal["little", "big"] = "little" if little_endian else "big"
    return [int.from_bytes(data[4 * i : 4 * i + 4], order) for i in range(len(data) // 4)]


def pfn_segment(template: Segment, pfns: list[int], little_endian: bool) -> Segment:
    """A device-readable descriptor holding exactly ``pfns`` (at ``template``'s address)."""
    order: Literal["little", "big"] = "little" if little_endian else "big"
    data = b"".join(p.to_bytes(4, order) for p in pfns)
    return Segment(template.addr, len(data), False, data)


class ZooDevice(ReferenceDevice):
    """The reference device, as a base for one bug (or its fix)."""

    name = "zoo"

    def start(self, setup: Setup) -> Negotiated:
        self._ram_bytes = setup.memory_size
        return super().start(setup)

    def in_ram(self, first_byte: int, length: int) -> bool:
        """Does [first_byte, first_byte + length) lie in guest RAM (the case's memory size)?"""
        return 0 <= first_byte and first_byte + length <= self._ram_bytes


class DeadDevice(ZooDevice):
    """A device whose worker can die: after :meth:`die` it never uses another buffer (the
    adapter still answers, as a VMM whose balloon thread exited still runs the guest)."""

    name = "dead-able"

    def start(self, setup: Setup) -> Negotiated:
        self.dead = False
        return super().start(setup)

    def die(self) -> list[Used]:
        self.dead = True
        return []

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if self.dead:
            return []
        return super().avail(role, head, segments)

    def host_request(self, kind: str, params: dict[str, Any]) -> list[Used]:
        if self.dead and kind != "set-target":  # config still works: it is not the worker
            return []
        return super().host_request(kind, params)
