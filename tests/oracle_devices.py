"""Devices that make the choices the spec leaves open -- each must pass with its choice named --
and devices with the real defect of each shared case (../shared/cases/README.md), which must
fail the named clause.  All are the reference device with one behaviour changed.
"""

from __future__ import annotations

from typing import Any

from virtio_balloon_proto.codecs import Segment
from virtio_balloon_proto.models.device import ReferenceDevice
from virtio_balloon_proto.models.interface import Negotiated, Setup, Unsupported, Used
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.profiles import get_profile


# --- stats -------------------------------------------------------------------------------------
class KnowsTags0To9(ReferenceDevice):
    """QEMU 7.2: records tags 0-9 (VIRTIO 1.2), ignores 10-15 (Linux 6.12)."""

    def _on_stats(self, head: int, segs: list[Segment]) -> list[Used]:
        out = super()._on_stats(head, segs)
        self.state.stats = {t: v for t, v in self.state.stats.items() if t < 10}
        return out


class KnowsTags0To15(ReferenceDevice):
    """Firecracker >= 1.14: knows Linux 6.12's tags 10-15 as well (the reference does too)."""


class RefusesUnknownTags(ReferenceDevice):
    """Firecracker <= 1.13: a stats buffer with a tag it does not know is dropped, never used."""

    def _on_stats(self, head: int, segs: list[Segment]) -> list[Used]:
        d = self._decode("stats", segs)
        if d is not None and d.decoded is not None and any(
                e.tag >= 10 for e in d.decoded.message.entries):  # type: ignore[union-attr]
            return []
        return super()._on_stats(head, segs)


class NeverAsksForStats(ReferenceDevice):
    """A device that never wants statistics: it ignores the host's stats-poll and keeps the
    held buffer (VIRTIO 1.2 5.5.6.3: "communication is driven by the device"), giving it back
    only when the driver supersedes it.  Conforming: nothing obliges a device to ask."""

    def host_request(self, kind: str, params: dict[str, Any]) -> list[Used]:
        if kind == "stats-poll":
            return []
        return super().host_request(kind, params)


class DiesOnUnknownTags(ReferenceDevice):
    """QEMU 9.2.0-rc1-like: an assertion on an unknown tag takes the device down."""

    def _on_stats(self, head: int, segs: list[Segment]) -> list[Used]:
        d = self._decode("stats", segs)
        if d is not None and d.decoded is not None and any(
                e.tag >= 10 for e in d.decoded.message.entries):  # type: ignore[union-attr]
            raise AssertionError("stats tag out of range")
        return super()._on_stats(head, segs)


class LosesSupersededStats(ReferenceDevice):
    """QEMU <= 2.5: a second stats buffer overwrites the held one, which is never used."""

    def _on_stats(self, head: int, segs: list[Segment]) -> list[Used]:
        self._stats_held = None
        return super()._on_stats(head, segs)


# --- inflate -----------------------------------------------------------------------------------
class SkipsMalformedPfns(ReferenceDevice):
    """Firecracker / cloud-hypervisor v52: a PFN buffer whose length is not a multiple of 4 is
    skipped whole (its whole words too), and still used."""

    def _on_inflate(self, head: int, segs: list[Segment]) -> list[Used]:
        if any(s.writable for s in segs) or sum(s.length for s in segs) % 4:
            return [Used(head, 0)]
        return super()._on_inflate(head, segs)


class DiesOnMalformedPfns(ReferenceDevice):
    """cloud-hypervisor <= v51: a malformed buffer stops the queue: nothing is used again."""

    dead = False

    def _on_inflate(self, head: int, segs: list[Segment]) -> list[Used]:
        if self.dead or any(s.writable for s in segs) or sum(s.length for s in segs) % 4:
            self.dead = True
            return []
        return super()._on_inflate(head, segs)


class ReadsFirstDescriptorOnly(ReferenceDevice):
    """Firecracker at 81b38b9: only the head descriptor of a PFN chain is read."""

    def _on_inflate(self, head: int, segs: list[Segment]) -> list[Used]:
        return super()._on_inflate(head, segs[:1])


class IgnoresHighPfns(ReferenceDevice):
    """Skips every PFN at or above 256 MiB (a device that assumes a 256 MiB guest)."""

    def _in_ram(self, pages: PageSet) -> PageSet:
        return super()._in_ram(pages) & PageSet.from_range(0, (256 << 20) >> 12)


# --- config space --------------------------------------------------------------------------
class _ConfigSize(ReferenceDevice):
    size = 8

    def start(self, setup: Setup) -> Negotiated:
        neg = super().start(setup)
        self._config_size = self.size
        return Negotiated(neg.offered, neg.accepted, neg.queues, self.size)

    def _config_bytes(self) -> bytes:
        s = self.state
        raw = b"".join(v.to_bytes(4, "little") for v in (
            s.num_pages, s.actual, s.hint_cmd_id, s.poison_val, 0))
        return raw[: self.size]


class Config12(_ConfigSize):
    """Firecracker: 12 bytes (num_pages, actual, free_page_hint_cmd_id)."""

    size = 12


class Config16(_ConfigSize):
    """QEMU 4.0 machine types: 16 bytes whatever is offered."""

    size = 16


class Config20(_ConfigSize):
    """crosvm: 20 bytes."""

    size = 20


class PoisonInEightBytes(ReferenceDevice):
    """Offers PAGE_POISON but exposes only 8 bytes: poison_val does not exist."""

    def start(self, setup: Setup) -> Negotiated:
        neg = super().start(setup)
        self._config_size = 8
        return Negotiated(neg.offered, neg.accepted, neg.queues, 8)


# --- reporting -----------------------------------------------------------------------------
class ReportLenIsBytes(ReferenceDevice):
    """cloud-hypervisor: used len of a report = the bytes of its ranges."""

    def _on_reporting(self, head: int, segs: list[Segment]) -> list[Used]:
        super()._on_reporting(head, segs)
        return [Used(head, sum(s.length for s in segs if s.writable))]


class ReportLenTooLong(ReferenceDevice):
    """Claims more bytes than the report's buffers hold."""

    def _on_reporting(self, head: int, segs: list[Segment]) -> list[Used]:
        super()._on_reporting(head, segs)
        return [Used(head, sum(s.length for s in segs if s.writable) + 4096)]


# --- queue numbering ------------------------------------------------------------------------
class OfferedNumbering(ReferenceDevice):
    """QEMU, crosvm, Firecracker: queues compacted over the offered features."""

    def start(self, setup: Setup) -> Negotiated:
        neg = super().start(setup)
        prof = get_profile(setup.profile)
        self.queues = {r.value: i for r, i in
                       prof.queue_index(neg.offered, neg.accepted, "offered").items()}
        return Negotiated(neg.offered, neg.accepted, dict(self.queues), neg.config_size)


# --- error state -----------------------------------------------------------------------------
class NeedsResetOnBadReport(ReferenceDevice):
    """QEMU 7.2 on a report naming memory outside guest RAM: virtio_error() sets
    DEVICE_NEEDS_RESET and the device uses no buffer again; the adapter then runs out of free
    descriptors and cannot post the next chain (raised here as the adapter does)."""

    def start(self, setup: Setup) -> Negotiated:
        self.broken = False
        return super().start(setup)

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if self.broken:
            raise RuntimeError("cannot post the chain: no free descriptor")
        ram = self._ram_frames << 12
        if role == "reporting" and any(s.addr + s.length > ram for s in segments):
            self.broken = True
            return []
        return super().avail(role, head, segments)

    def observe(self) -> dict[str, object]:
        return {**super().observe(), "needs_reset": self.broken}


# --- free page hinting: the device owns free_page_hint_cmd_id (VIRTIO 1.2 5.5.6.5) ------------
class StopsHintingAfterEcho(ReferenceDevice):
    """Sets free_page_hint_cmd_id to STOP itself once the driver echoed the id, and ignores
    what is hinted after (allowed: 5.5.6.5 "... or when the device updates
    free_page_hint_cmd_id ... to contain either VIRTIO_BALLOON_CMD_ID_STOP or ..._DONE")."""

    def _on_free_page(self, head: int, segs: list[Segment]) -> list[Used]:
        out = super()._on_free_page(head, segs)
        if self.hint.value == "start":
            self.state.hint_cmd_id = 0
            self._hint("stop")
        return out


class TakesHintsAfterStop(ReferenceDevice):
    """QEMU 7.2..10.0 (S_START): reads STOP once the driver echoed the id, yet keeps taking
    pages hinted under the old id (breaks 5.5.6.5.2 "MUST ignore pages that are provided with a
    command ID that does not match the current value in free_page_hint_cmd_id")."""

    def _observed(self) -> dict[str, object]:
        out = dict(super()._observed())
        if self.hint.value == "start":
            out["hint_cmd_id"] = 0
        return out

    def config_read(self, offset: int, size: int) -> bytes:
        raw = super().config_read(offset, size)
        if self.hint.value == "start" and offset <= 8 and offset + size >= 12:
            raw = raw[:8 - offset] + bytes(4) + raw[12 - offset:]
        return raw


class OneHintRoundDoneOnly(ReferenceDevice):
    """A host like QEMU's: it can start one free page hinting round per device life (a
    migration) and end it with DONE, but cannot publish STOP or a second id (unsupported)."""

    def start(self, setup: Setup) -> Negotiated:
        self.rounds = 0
        return super().start(setup)

    def host_request(self, kind: str, params: dict[str, Any]) -> list[Used]:
        if kind == "hint-start":
            self.rounds += 1
            if self.rounds > 1:
                raise Unsupported("a second command id needs a migration's next bitmap sync")
        if kind == "hint-stop" and params.get("cmd_id") != 1:
            raise Unsupported("the host cannot publish STOP")
        return super().host_request(kind, params)


class RefusesPfnsAboveRam(ReferenceDevice):
    """Like the QEMU adapter on microvm (mmio), whose ring window lies right above guest RAM:
    an inflate or deflate naming a frame there cannot be run (unsupported), any other can."""

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role in ("inflate", "deflate"):
            data = b"".join(s.data for s in segments if not s.writable)
            le = self.layout.little_endian
            pfns = [int.from_bytes(data[i:i + 4], "little" if le else "big")
                    for i in range(0, len(data) // 4 * 4, 4)]
            if any(p >= self._ram_frames for p in pfns):
                raise Unsupported("the case names a PFN inside the adapter's ring window")
        return super().avail(role, head, segments)


class ReusesCmdId(ReferenceDevice):
    """Publishes its previous free_page_hint_cmd_id again when the host starts a new round,
    whether or not the driver sent STOP since (breaks 5.5.6.5.2 "The device MUST NOT reuse a
    command ID until it has received an output buffer containing VIRTIO_BALLOON_CMD_ID_STOP
    from the driver")."""

    _last_id: int | None = None

    def start(self, setup: Setup) -> Negotiated:
        self._last_id = None
        return super().start(setup)

    def host_request(self, kind: str, params: dict[str, Any]) -> list[Used]:
        if kind == "hint-start":
            cmd = int(params["cmd_id"])
            params = {**params, "cmd_id": self._last_id if self._last_id is not None else cmd}
            self._last_id = int(params["cmd_id"])
        return super().host_request(kind, params)


class BigEndianLegacyOnly(ReferenceDevice):
    """Like QEMU's legacy device on ppc64 pseries: it runs big-endian legacy guests only."""

    def start(self, setup: Setup) -> Negotiated:
        if setup.endian != "be":
            raise Unsupported("a legacy device on big-endian pseries is big-endian (VIRTIO 1.2 "
                              f"2.7 legacy: guest-native order), endian={setup.endian} asked")
        return super().start(setup)


# --- a device that uses a buffer late (review3: head reuse in conform run's replay) ----------
class HoldsFirstBuffer(ReferenceDevice):
    """Holds the first buffer of its device life on ``ROLE`` until the driver makes the next
    buffer of that queue available (or the host asks anything), then processes and uses both,
    the held one first -- a worker that waits for a second request before it runs.
    Conforming: the spec puts no deadline on using a buffer (VIRTIO 1.2 5.5.6 step 4 only says
    the device acknowledges a request "by using the descriptor"; 2.7.13 lets the driver add
    more buffers before any is used), and without VIRTIO_F_IN_ORDER used order is free.  Like
    a ring, it keys what it holds by head: a head made available again while held (the driver
    altering an exposed buffer, VIRTIO 1.2 3.3.1) overwrites the first buffer, which is then
    lost -- ``reused`` lists every such avail and stays empty under a conforming driver."""

    ROLE = "inflate"

    def start(self, setup: Setup) -> Negotiated:
        self.held: dict[int, list[Segment]] = {}
        self.reused: list[tuple[str, int]] = []
        self._first = True
        return super().start(setup)

    def _flush(self) -> list[Used]:
        out: list[Used] = []
        held, self.held = self.held, {}
        for head, segs in held.items():
            out += super().avail(self.ROLE, head, segs)
        return out

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role == self.ROLE and head in self.held:
            self.reused.append((role, head))
            self.held[head] = list(segments)  # the ring entry was overwritten: the first is lost
            return []
        if role == self.ROLE and self._first:
            self._first = False
            self.held[head] = list(segments)
            return []
        out = self._flush() if role == self.ROLE else []
        return out + super().avail(role, head, segments)

    def host_request(self, kind: str, params: dict[str, Any]) -> list[Used]:
        return self._flush() + super().host_request(kind, params)


class HoldsFirstDeflate(HoldsFirstBuffer):
    ROLE = "deflate"


class HoldsFirstHint(HoldsFirstBuffer):
    ROLE = "free_page"


class HoldsFirstReport(HoldsFirstBuffer):
    ROLE = "reporting"


class HoldsFirstMisc(HoldsFirstBuffer):
    ROLE = "misc"


class HoldsInflatesUntilAsked(ReferenceDevice):
    """Processes every inflate buffer at once but uses none until the host asks anything, then
    uses them all (a device that acknowledges in batches).  Conforming: no deadline."""

    def start(self, setup: Setup) -> Negotiated:
        self.waiting: list[int] = []
        return super().start(setup)

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        out = super().avail(role, head, segments)
        if role != "inflate":
            return out
        if head in self.waiting:
            raise AssertionError(f"inflate head {head} made available twice")
        self.waiting += [u.id for u in out]
        return [u for u in out if u.id not in self.waiting]

    def host_request(self, kind: str, params: dict[str, Any]) -> list[Used]:
        out = [Used(h, 0) for h in self.waiting]
        self.waiting = []
        return out + super().host_request(kind, params)
