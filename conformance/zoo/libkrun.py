"""libkrun's virtio-balloon (src/devices/src/virtio/balloon/device.rs, at 08c94da and still at
6ed74fa, 2026-06-12): two defects, with the obvious fix as twin (not released)."""

from __future__ import annotations

from virtio_balloon_proto.models.interface import Used

from ._base import Segment, ZooDevice


class LibkrunIgnoresConfigWrites(ZooDevice):
    """libkrun ``write_config()`` only logs "guest driver attempted to write device config":
    the driver's writes of ``actual`` (and ``poison_val``) are dropped, so ``actual`` always
    reads 0 -- VIRTIO 1.2 5.5.4 makes ``actual`` the driver's field of the config space."""

    name = "libkrun-ignores-config-writes"

    def config_write(self, offset: int, data: bytes) -> None:
        return None  # warn!(...) and nothing else


class LibkrunStoresConfigWrites(ZooDevice):
    """The fix: the driver-owned fields (``actual``, ``poison_val``) keep what it wrote."""

    name = "libkrun-stores-config-writes"


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
