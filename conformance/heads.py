"""The heads ``conform run`` posts buffers under: never one the device still holds.

A trace records the head ids its driver used against *its* device.  A device that used every
buffer at once let that driver post the next buffer under the same head (Linux's balloon driver
posts each inflate/deflate/report buffer under head 0 once the last one came back).  The device
under test may hold a buffer longer -- the spec puts no deadline on using one (VIRTIO 1.2/1.4
5.5.6 step 4: the device acknowledges a request "by using the descriptor", at a time it
chooses; without VIRTIO_F_IN_ORDER any order) -- and posting the trace's head again would make
the harness's driver break VIRTIO 1.2/1.4 3.3.1 (Driver Requirements: Device Cleanup): "A driver
MUST NOT alter virtqueue entries for exposed buffers, i.e., buffers which have been made
available to the device (and not been used by the device) of a live virtqueue" (split rings:
2.7.13 step 1, the driver "places the buffer into free descriptor(s)"; packed rings: 2.8.16,
Driver Requirements: The Virtqueue Descriptor Table, "A driver MUST NOT change a descriptor
unless it observes the VIRTQ_DESC_F_USED bit in its flags being changed").  The device would
see one head available twice and lose a buffer the judgement then blames on it.

:class:`HeldHeads` is the replay's free-head allocator, one ring per queue role: a buffer goes
under the trace's own head when the device does not hold it (so a prompt device sees exactly
the recorded traffic), else under the lowest head of that ring the device does not hold.  The
ring is :data:`REPLAY_QUEUE_SIZE` entries, or as many as the trace's own heads need.  When the
device holds every head of the ring the buffer cannot be posted: the step is not replayed, and
the recorded trace says so in a ``gap`` observation holding :data:`RING_FULL` (the judgement
turns it into a note, never a verdict).  Sans-IO: the runner asks, the device is not touched.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["REPLAY_QUEUE_SIZE", "RING_FULL", "HeldHeads"]

#: entries per replayed ring (the split ring's Queue Size: a power of 2, 2.7): Firecracker's
#: balloon queues have 256, QEMU's 128; a trace whose heads go higher gets the ring they need
REPLAY_QUEUE_SIZE = 256
#: the words of the gap observation for an avail that found every head of its ring held
RING_FULL = "not replayed: the device holds every head of this queue"


class HeldHeads:
    """The heads made available and not yet used, per queue role.

    ``(role, head) in held`` asks whether the device holds ``head`` on ``role``;
    :meth:`post` picks the head for a trace's buffer and marks it held; :meth:`release` marks a
    used head free again.
    """

    def __init__(self, size: int = REPLAY_QUEUE_SIZE) -> None:
        self._size = size
        self._held: dict[str, set[int]] = {}
        self._ring: dict[str, int] = {}

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        role, head = key
        return head in self._held.get(role, ())

    def __iter__(self) -> Iterator[tuple[str, int]]:
        for role, heads in self._held.items():
            for h in heads:
                yield role, h

    def ring_size(self, role: str) -> int:
        """Entries of ``role``'s replayed ring so far (it grows to hold the trace's heads)."""
        return self._ring.get(role, self._size)

    def post(self, role: str, head: int) -> int | None:
        """The head to post the trace's ``head`` under on ``role``, now held; None when the
        device holds every head of the ring (the buffer cannot be made available)."""
        held = self._held.setdefault(role, set())
        ring = self._ring.get(role, self._size)
        if head >= ring:
            ring = self._ring[role] = 1 << head.bit_length()  # the next power of 2 above it
        if head not in held:
            held.add(head)
            return head
        if len(held) >= ring:
            return None
        free = next(h for h in range(ring) if h not in held)
        held.add(free)
        return free

    def release(self, role: str, head: int) -> bool:
        """Mark ``head`` on ``role`` used (free); False when it was not held."""
        held = self._held.get(role)
        if held is None or head not in held:
            return False
        held.remove(head)
        return True
