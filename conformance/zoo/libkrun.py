"""libkrun's virtio-balloon (src/devices/src/virtio/balloon/device.rs @08c94da): two defects
still in the code, with the obvious fix as twin (not released)."""

from __future__ import annotations

from virtio_balloon_proto.models.interface import Negotiated, Setup, Used
from virtio_balloon_proto.profiles import get_profile

from ._base import Segment, ZooDevice


class LibkrunFixedQueueIndexes(ZooDevice):
    """libkrun numbers its five queues by the spec's listing whatever is negotiated
    (``STQ_INDEX`` 2, ``PHQ_INDEX`` 3, ``FRQ_INDEX`` 4) and ``activate()`` wants all five;
    a driver that does not take every feature (Linux compacts its queues over the negotiated
    features) puts the reporting queue at 3 or 2, where libkrun does not look for it -- the
    trap crosvm fell into until 4ce4bbc (2025-04) and QEMU's offered-feature numbering works
    around."""

    name = "libkrun-fixed-queue-indexes"

    def start(self, setup: Setup) -> Negotiated:
        neg = super().start(setup)
        fixed = get_profile(self.profile).queue_index(neg.offered, neg.accepted, "fixed")
        self.queues = {r.value: i for r, i in fixed.items()}
        return Negotiated(neg.offered, neg.accepted, dict(self.queues), neg.config_size)


class LibkrunNegotiatedQueueIndexes(ZooDevice):
    """The fix: queues numbered over the negotiated features, as the Linux driver does."""

    name = "libkrun-negotiated-queue-indexes"


class LibkrunPanicsOnBadReportAddress(ZooDevice):
    """libkrun ``process_frq()``: ``mem.get_host_address(desc.addr).unwrap()`` -- a reported
    range the guest memory map does not hold panics the VMM (Rust exits with status 101)."""

    name = "libkrun-panics-on-bad-report-address"

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role == "reporting" and not all(self.in_ram(s.addr, s.length) for s in segments):
            raise RuntimeError("panicked: called `Option::unwrap()` on a `None` value "
                               "(src/devices/src/virtio/balloon/device.rs process_frq)")
        return super().avail(role, head, segments)


class LibkrunSkipsBadReportAddress(ZooDevice):
    """The fix: a range outside guest memory is skipped; the buffer is used."""

    name = "libkrun-skips-bad-report-address"

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role == "reporting":
            segments = [s for s in segments if self.in_ram(s.addr, s.length)]
            if not segments:
                return [Used(head, 0)]
        return super().avail(role, head, segments)
