"""Lengths a buffer cannot have: findings from a chain's descriptor lengths alone.

A capture may record a descriptor's address and length but not its bytes (a ring snapshot of a
buffer outside the dump, a QEMU log of a stats buffer).  Some lengths are wrong whatever the
bytes are, and saying so must not wait for bytes that will never come:

* a stats buffer longer than 65,536 entries (655,360 bytes): ``struct virtio_balloon_stat``
  has a ``le16 tag`` (VIRTIO 1.2 5.5.6.3), so such a buffer names some tag twice, and
  5.5.6.3.1 asks for "one struct virtio_balloon_stat entry for each statistic that it
  supports" -- ``spec.driver.stats.duplicate-tag``, a SHOULD of the catalog (derived);
* a descriptor whose bytes ``[addr, addr + len)`` are not inside the guest RAM the header
  lists (format 1.1 ``memory``): 2.7.5 "addr: Address (guest-physical)" -- a buffer outside
  guest memory cannot be read or written (``spec.driver.ring.addr-in-memory``).  Without
  ``memory`` in the header the RAM is unknown and nothing is said; nor when the device offers
  VIRTIO_F_ACCESS_PLATFORM: then ``addr`` is a bus address the platform translates (an IOVA may
  lie anywhere), and the only rule is 6.1 "If VIRTIO_F_ACCESS_PLATFORM is not offered, then a
  driver MUST pass only physical addresses to the device".

The codec judges the bytes when they were captured; these findings are for when they were not
(a captured stats buffer that long is judged entry by entry by the stats decoder instead).
"""

from __future__ import annotations

from ..findings import Finding
from ..profiles import QueueRole
from .events import AvailEvent
from .header import TraceHeader

VIRTIO_F_ACCESS_PLATFORM = 1 << 33
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
#: 16-bit tags, 10-byte entries (VIRTIO 1.2 5.5.6.3 struct virtio_balloon_stat)
STATS_MAX_BYTES = (1 << 16) * 10


def _readable_lengths(ev: AvailEvent) -> list[int | None]:
    """The lengths of the chain's device-readable buffers (None where unknown)."""
    if ev.descriptors is not None:
        return [d.len for d in ev.descriptors
                if not d.flags & (VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_INDIRECT)]
    return [None if b is None else len(b) for b in ev.out]


def _in_ram(regions: tuple[tuple[int, int], ...], addr: int, length: int) -> bool:
    end = addr + max(length, 1)
    return any(start <= addr and end <= start + size for start, size in regions)


def absurd_lengths(header: TraceHeader, ev: AvailEvent) -> list[Finding]:
    """Findings a chain's lengths prove whatever its bytes (empty: none, or bytes captured)."""
    if all(b is not None for b in ev.out):
        return []  # the codec judges the bytes themselves
    out: list[Finding] = []
    role = QueueRole(ev.role)
    if role == QueueRole.STATS:
        known = [n for n in _readable_lengths(ev) if n is not None]
        total = sum(known)
        if total > STATS_MAX_BYTES:
            out.append(Finding(
                "spec.driver.stats.duplicate-tag",
                f"absurd length: a stats buffer of {total} bytes is {total // 10} entries, but a "
                f"tag is a le16 (at most 65536 distinct, {STATS_MAX_BYTES} bytes): it names some "
                "tag twice (VIRTIO 1.2 5.5.6.3.1: 'one struct virtio_balloon_stat entry for "
                "each statistic'); its bytes were not captured, so it is not checked further",
                field="len"))
    bus_addresses = bool(header.features_offered & VIRTIO_F_ACCESS_PLATFORM)
    if header.memory is not None and ev.descriptors is not None and not bus_addresses:
        for d in ev.descriptors:
            if not _in_ram(header.memory, d.addr, d.len):
                out.append(Finding(
                    "spec.driver.ring.addr-in-memory",
                    f"absurd length or address: descriptor {d.addr:#x} len {d.len} ends at "
                    f"{d.addr + d.len:#x}, outside the guest RAM the header lists (VIRTIO 1.2 "
                    "2.7.5: addr is guest-physical)", field="len"))
                break
    return out
