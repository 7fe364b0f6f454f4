"""Deliberately faulty balloon devices: the reference device with one realistic defect each.

Each class models a bug that real device implementations have had or could plausibly have
(research/protocol-evolution.md section 5); ``FAULTS`` says which clause the conformance run
must name for it and on which corpus cases it shows.  Used by tests/test_conform_faulty.py
through both the python and the stdio adapters.
"""

from __future__ import annotations

from typing import Any

from virtio_balloon_proto.codecs import Segment
from virtio_balloon_proto.models.device import ReferenceDevice
from virtio_balloon_proto.models.interface import Used
from virtio_balloon_proto.wire import WireLayout


class AcksWrongId(ReferenceDevice):
    """Returns the descriptor after the head (an off-by-one in its chain walk)."""

    name = "acks-wrong-id"

    def _on_inflate(self, head: int, segs: list[Segment]) -> list[Used]:
        return [Used(u.id + 1, u.length) for u in super()._on_inflate(head, segs)]


class NonZeroUsedLen(ReferenceDevice):
    """Writes the number of bytes it read as the used length of a device-read-only buffer."""

    name = "non-zero-used-len"

    def _on_inflate(self, head: int, segs: list[Segment]) -> list[Used]:
        super()._on_inflate(head, segs)
        return [Used(head, sum(s.length for s in segs))]


class IgnoresDeflate(ReferenceDevice):
    """Acknowledges deflate buffers without giving the pages back (Firecracker's deflate is
    ack-only; a device that also tracks the balloon must not do that)."""

    name = "ignores-deflate"

    def _on_deflate(self, head: int, segs: list[Segment]) -> list[Used]:
        return [Used(head, 0)]


class DropsTrailingPage(ReferenceDevice):
    """Processes one PFN too few per buffer (a `< n - 1` loop bound)."""

    name = "drops-trailing-page"

    def _on_inflate(self, head: int, segs: list[Segment]) -> list[Used]:
        out = [s for s in segs]
        for i in range(len(out) - 1, -1, -1):
            if not out[i].writable and out[i].length >= 4:
                out[i] = Segment(out[i].addr, out[i].length - 4, False, out[i].data[:-4])
                break
        return super()._on_inflate(head, out)


class ReadsBigEndianAsLittle(ReferenceDevice):
    """Reads every __virtio field little-endian, whatever the guest (a legacy device that
    assumes an x86 guest)."""

    name = "reads-be-as-le"

    def start(self, setup: Any) -> Any:
        neg = super().start(setup)
        lay = self.layout
        self.layout = WireLayout("le", lay.word_size, "le", lay.page_size)
        return neg


class WrongReqId(ReferenceDevice):
    """Writes a misc request whose param is not the host's request id."""

    name = "wrong-req-id"

    def _request_unused(self, req_id: int) -> list[Used]:
        return super()._request_unused(req_id + 1)


class ShortRequestLen(ReferenceDevice):
    """Writes the 16-byte request but reports used len 8 (the seed's driver then ignores it)."""

    name = "short-request-len"

    def _request_unused(self, req_id: int) -> list[Used]:
        return [Used(u.id, 8, u.written) for u in super()._request_unused(req_id)]


class LosesDone(ReferenceDevice):
    """Never sees BALLOON_FLAG_DONE, so a request of unused pages never completes."""

    name = "loses-done"

    def observe(self) -> dict[str, Any]:
        obs = super().observe()
        if "unused_done" in obs:
            obs["unused_done"] = {}
        return obs


class ConfigInGuestOrder(ReferenceDevice):
    """Formats config space in the guest's byte order (the legacy convention the balloon is
    the exception to: VIRTIO 1.2 5.5.4, 'balloon is special: LE even when using legacy')."""

    name = "config-in-guest-order"

    def config_read(self, offset: int, size: int) -> bytes:
        raw = super().config_read(offset, size)
        if self.layout.endian == "be" and size == 4:
            return raw[::-1]
        return raw


class DiscardsWrongRanges(ReferenceDevice):
    """Discards each reported range one 4 KiB page too far (an off-by-one in its GPA -> frame
    arithmetic): it frees a page the driver did not report.  (Acknowledging reports without
    discarding anything is allowed -- "the device MAY modify" (5.5.6.7.2) -- and passes.)"""

    name = "discards-wrong-ranges"

    def _on_reporting(self, head: int, segs: list[Segment]) -> list[Used]:
        d = self._decode("reporting", segs)
        if d is not None:
            from virtio_balloon_proto.pageset import PageSet

            shifted = PageSet.from_extents([[a + 1, n] for a, n in d.pages.extents()])
            self.state.reported = self.state.reported | shifted
        return [Used(head, 0)]


class DiscardsPoisonedReports(ReferenceDevice):
    """Discards reported pages even though the driver filled them with a non-zero poison_val
    (after the discard they read zero, which V-FR2 forbids)."""

    name = "discards-poisoned-reports"

    def _on_reporting(self, head: int, segs: list[Segment]) -> list[Used]:
        d = self._decode("reporting", segs)
        if d is not None:
            self.state.reported = self.state.reported | d.pages
        return [Used(head, 0)]


#: class -> (clause the run must fail, glob of the corpus cases that show it)
FAULTS: dict[type[ReferenceDevice], tuple[str, str]] = {
    AcksWrongId: ("spec.device.used.id-is-head", "spec/inflate-le"),
    NonZeroUsedLen: ("spec.device.used.len-written", "spec/inflate-le"),
    IgnoresDeflate: ("spec.device.deflate.pfn-4k-units", "spec/deflate-le"),
    DropsTrailingPage: ("spec.device.inflate.pfn-4k-units", "spec/inflate-be"),
    ReadsBigEndianAsLittle: ("v3.device.bmap.tracks-pages", "v3/inflate-be64"),
    WrongReqId: ("v3.device.req.param-is-req-id", "v3/unused-pages-le64"),
    ShortRequestLen: ("v3.device.req.len-16", "hybrid/unused-pages-le"),
    LosesDone: ("v3.device.unused.records-pages", "v3/unused-pages-be32"),
    ConfigInGuestOrder: ("spec.device.config.little-endian", "spec/inflate-be"),
    DiscardsWrongRanges: ("spec.device.reporting.records-ranges", "spec/report-le"),
    DiscardsPoisonedReports: ("spec.device.reporting.poison-only", "spec/poison-le"),
}


class HangsOnDeflate(ReferenceDevice):
    """Blocks (for a few seconds: a thread cannot be killed) on the first deflate buffer."""

    name = "hangs-on-deflate"

    def _on_deflate(self, head: int, segs: list[Segment]) -> list[Used]:
        import time

        time.sleep(3)
        return super()._on_deflate(head, segs)
