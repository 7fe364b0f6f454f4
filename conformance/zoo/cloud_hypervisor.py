"""Cloud Hypervisor's virtio-balloon bugs (virtio-devices/src/balloon.rs), fixed in v52.0.

Hashes are cloud-hypervisor/cloud-hypervisor commits of May 2026, all first released in v52.0
(``git tag --contains``).  Before them ``process_queue()`` / ``process_reporting_queue()``
returned ``Err`` on bad input, and an error from an epoll handler ends the balloon thread.
"""

from __future__ import annotations

from virtio_balloon_proto.models.interface import Used

from ._base import DeadDevice, Segment, ZooDevice, pfn_segment, pfns_of


class CloudHypervisor51UsedLenDescLen(ZooDevice):
    """CH <= v51: ``add_used(..., desc.len())`` on inflate/deflate -- the length of the PFN
    descriptor the device only read (fixed by ff78eb8 "virtio-devices: balloon: Report used
    length of 0 for inflate/deflate", v52.0)."""

    name = "cloud-hypervisor-51-used-len-desc-len"

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        out = super().avail(role, head, segments)
        if role in ("inflate", "deflate") and segments:
            return [Used(u.id, segments[0].length if u.id == head else u.length, u.written)
                    for u in out]
        return out


class CloudHypervisor52UsedLenZero(ZooDevice):
    """CH >= v52: used length 0 on inflate and deflate."""

    name = "cloud-hypervisor-52-used-len-zero"


class CloudHypervisor51FirstDescriptorOnly(ZooDevice):
    """CH <= v51: ``let desc = desc_chain.next()`` -- only the first descriptor of an
    inflate/deflate chain was read; "if the PFN array spanned multiple chained descriptors the
    remaining PFNs were silently dropped" (fixed by 52db3f8 "virtio-devices: balloon: Process
    all inflate/deflate descriptors", v52.0)."""

    name = "cloud-hypervisor-51-first-descriptor-only"

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role in ("inflate", "deflate"):
            return super().avail(role, head, segments[:1])
        return super().avail(role, head, segments)


class CloudHypervisor52WholeChain(ZooDevice):
    """CH >= v52: every descriptor of the chain is read."""

    name = "cloud-hypervisor-52-whole-chain"


class CloudHypervisor51DiesOnBadInflate(DeadDevice):
    """CH <= v51 ``process_queue()``: a device-writable descriptor, a length that is not a
    multiple of 4, or a PFN outside guest memory returned ``Err`` -- the balloon thread ended
    and no buffer on any queue was used again (fixed by c1b5b18 "virtio-devices: balloon:
    Handle invalid inflate/deflate input", v52.0: skip and warn)."""

    name = "cloud-hypervisor-51-dies-on-bad-inflate"

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if not self.dead and role in ("inflate", "deflate"):
            le = self.layout.little_endian
            for seg in segments:
                if seg.writable or seg.length % 4:
                    return self.die()
                if not all(self.in_ram(p << 12, 4096) for p in pfns_of(seg, le)):
                    return self.die()
        return super().avail(role, head, segments)


class CloudHypervisor52SkipsBadInflate(ZooDevice):
    """CH >= v52: a bad descriptor is skipped (all its PFNs), a PFN outside guest memory is
    skipped, and the buffer is used."""

    name = "cloud-hypervisor-52-skips-bad-inflate"

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role in ("inflate", "deflate"):
            le = self.layout.little_endian
            segments = [pfn_segment(s, [p for p in pfns_of(s, le) if self.in_ram(p << 12, 4096)],
                                    le)
                        for s in segments if not s.writable and s.length % 4 == 0]
        return super().avail(role, head, segments)


class CloudHypervisor51DiesOnBadReport(DeadDevice):
    """CH <= v51 ``process_reporting_queue()``: a reported range outside guest memory failed
    address translation, ``?`` returned the error and the balloon thread ended (fixed by
    ce74caa "virtio-devices: balloon: Handle reporting queue errors gracefully", v52.0)."""

    name = "cloud-hypervisor-51-dies-on-bad-report"

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if not self.dead and role == "reporting" and not all(
                self.in_ram(s.addr, s.length) for s in segments):
            return self.die()
        return super().avail(role, head, segments)


class CloudHypervisor52SkipsBadReport(ZooDevice):
    """CH >= v52: a range outside guest memory is skipped with a warning; the buffer is used."""

    name = "cloud-hypervisor-52-skips-bad-report"

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role == "reporting":
            segments = [s for s in segments if self.in_ram(s.addr, s.length)]
            if not segments:  # nothing to release, the buffer still goes back
                return [Used(head, 0)]
        return super().avail(role, head, segments)
