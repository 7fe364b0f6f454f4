"""QEMU's published virtio-balloon bugs (hw/virtio/virtio-balloon.c), each with its fixed twin.

Commits are upstream QEMU hashes; "fixed in" is the first release holding the fix (checked with
``git merge-base --is-ancestor`` against the release commits of VERSION).
"""

from __future__ import annotations

from typing import Any

from virtio_balloon_proto.codecs.spec import CMD_ID_STOP
from virtio_balloon_proto.models.device_state import HintState
from virtio_balloon_proto.models.interface import Negotiated, Setup, Used
from virtio_balloon_proto.pageset import PageSet

from ._base import Segment, ZooDevice, chain_pfns, pfn_segment

HOST_PAGE_FRAMES = 16  # balloon (4 KiB) pages in a 64 KiB host page
FULL = (1 << HOST_PAGE_FRAMES) - 1


# --------------------------------------------------------------------------- stats: 4eae2a657d
class QemuStatsSecondBufferLost(ZooDevice):
    """QEMU <= 2.5 ``virtio_balloon_receive_stats()``: ``s->stats_vq_elem = elem =
    virtqueue_pop(vq)`` overwrote the element it held, so a second stats buffer made the device
    forget the first: it is never used (fixed by 4eae2a657d "balloon: fix segfault and harden
    the stats queue", QEMU 2.6, which pushes the old element back first)."""

    name = "qemu-2.5-stats-second-buffer-lost"

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role == "stats":
            self._stats_held = None  # the held element is overwritten, never pushed
        return super().avail(role, head, segments)


class QemuStatsSecondBufferReturned(ZooDevice):
    """QEMU >= 2.6: the held stats buffer is used (len 0) before the new one is kept."""

    name = "qemu-2.6-stats-second-buffer-returned"


# --------------------------------------------------------------------------- used len: d3f1f940eb
class QemuUsedLenBytesRead(ZooDevice):
    """QEMU <= 6.1: ``virtqueue_push(vq, elem, offset)`` with ``offset`` the bytes the device
    *read* (inflate/deflate: whole PFNs; stats: whole 10-byte entries, at the stats request),
    and ``virtqueue_push(vq, elem, 1)`` on free_page_vq -- used lengths of buffers the device
    never wrote (fixed by d3f1f940eb "virtio-balloon: correct used length", QEMU 6.2)."""

    name = "qemu-6.1-used-len-bytes-read"

    def start(self, setup: Setup) -> Negotiated:
        self._stats_read: dict[int, int] = {}
        return super().start(setup)

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        out = super().avail(role, head, segments)
        readable = sum(s.length for s in segments if not s.writable)
        if role in ("inflate", "deflate"):
            return [Used(u.id, readable // 4 * 4 if u.id == head else u.length, u.written)
                    for u in out]
        if role == "stats":
            self._stats_read[head] = readable // 10 * 10
            return [Used(u.id, self._stats_read.pop(u.id, 0), u.written) for u in out]
        if role == "free_page":
            return [Used(u.id, 1, u.written) for u in out]
        return out

    def host_request(self, kind: str, params: dict[str, Any]) -> list[Used]:
        out = super().host_request(kind, params)
        if kind == "stats-poll":
            return [Used(u.id, self._stats_read.pop(u.id, 0), u.written) for u in out]
        return out


class QemuUsedLenZero(ZooDevice):
    """QEMU >= 6.2: used length 0 on every queue it only reads."""

    name = "qemu-6.2-used-len-zero"


# --------------------------------------------------------------------------- hinting: 20a4da0f23
class QemuHintReplayedIdRestarts(ZooDevice):
    """QEMU 4.0-5.0 ``get_free_page_hints()``: ``if (id == dev->free_page_report_cmd_id)
    status = START`` whatever the state, so a driver that repeats the last command id after
    the device stopped hinting starts it again, and the device takes the stale hints
    (fixed by 20a4da0f23 "virtio-balloon: Prevent guest from starting a report when we didn't
    request one", QEMU 5.1: START only from REQUESTED)."""

    name = "qemu-5.0-hint-replayed-id-restarts"

    def start(self, setup: Setup) -> Negotiated:
        self._last_cmd_id: int | None = None
        return super().start(setup)

    def host_request(self, kind: str, params: dict[str, Any]) -> list[Used]:
        if kind == "hint-start":
            self._last_cmd_id = int(params["cmd_id"])
        return super().host_request(kind, params)

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        cmd = _cmd_id(segments, self.layout.little_endian) if role == "free_page" else None
        if (cmd is not None and cmd != CMD_ID_STOP and cmd == self._last_cmd_id
                and self.hint in (HintState.STOP, HintState.DONE)):
            shown = self.state.hint_cmd_id
            self.hint, self.state.hint_cmd_id = HintState.REQUESTED, cmd
            out = super().avail(role, head, segments)  # -> START: hints are taken again
            self.state.hint_cmd_id = shown  # 5.0's get_config() shows STOP (0) in START
            return out
        return super().avail(role, head, segments)


def _cmd_id(segments: list[Segment], little_endian: bool) -> int | None:
    if len(segments) == 1 and not segments[0].writable and segments[0].length == 4:
        return int.from_bytes(segments[0].data, "little" if little_endian else "big")
    return None


class QemuHintStartsOnlyFromRequested(ZooDevice):
    """QEMU >= 5.1: a command id starts hinting only in the REQUESTED state."""

    name = "qemu-5.1-hint-starts-only-from-requested"


# --------------------------------------------------------------------------- 64 KiB: 483f13524b
class _HostPages(ZooDevice):
    """A QEMU on a host with 64 KiB pages: it can only discard whole host pages, so it keeps
    one partially ballooned host page (``PartiallyBalloonedPage``) and discards it when all 16
    balloon pages are in; deflating a balloon page takes it out of the partial page.

    ``observe()['balloon']`` is what the guest gave the device plus whatever the device
    discarded that the guest did not give (which a correct device never does)."""

    name = "host-64k"
    #: QEMU 4.0 used bitmap_set(bitmap, idx, subpages)/bitmap_clear(..., subpages) where
    #: set_bit/clear_bit were meant: it touches bits idx..idx+15 (clipped to the 16 here)
    range_bug = False

    def start(self, setup: Setup) -> Negotiated:
        self._pbp: tuple[int, int] | None = None  # (host page's first frame, bitmap)
        self._discarded = PageSet.empty()
        return super().start(setup)

    def _bits(self, idx: int) -> int:
        return (FULL & ~((1 << idx) - 1)) if self.range_bug else 1 << idx

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role in ("inflate", "deflate"):
            for pfn in chain_pfns(segments, self.layout.little_endian):
                if self.in_ram(pfn << 12, 4096):
                    (self._inflate_page if role == "inflate" else self._deflate_page)(pfn)
        return super().avail(role, head, segments)

    def _inflate_page(self, pfn: int) -> None:
        base, idx = pfn & ~(HOST_PAGE_FRAMES - 1), pfn & (HOST_PAGE_FRAMES - 1)
        if self._pbp is not None and self._pbp[0] != base:
            self._pbp = None  # "too hard, give up on the old partial page"
        bitmap = (self._pbp[1] if self._pbp else 0) | self._bits(idx)
        if bitmap == FULL:
            self._discarded = self._discarded | PageSet.from_range(base, HOST_PAGE_FRAMES)
            self._pbp = None
        else:
            self._pbp = (base, bitmap)

    def _deflate_page(self, pfn: int) -> None:
        self._discarded = self._discarded - PageSet.from_range(pfn, 1)  # faulted back in
        base, idx = pfn & ~(HOST_PAGE_FRAMES - 1), pfn & (HOST_PAGE_FRAMES - 1)
        if self._pbp is not None and self._pbp[0] == base:
            bitmap = self._pbp[1] & ~self._bits(idx)
            self._pbp = (base, bitmap) if bitmap else None

    def observe(self) -> dict[str, Any]:
        out = super().observe()
        out["balloon"] = (self.state.balloon | self._discarded).extents()
        return out


class Qemu40HostPageBitmapSet(_HostPages):
    """QEMU 4.0 on 64 KiB host pages: inflating balloon page k of a host page set bits k..15
    of the partial-page bitmap, so inflating the first balloon page of a host page discarded
    all 16 -- 60 KiB the guest still uses (fixed by 483f13524b "virtio-balloon: Fix QEMU
    crashes on pagesize > BALLOON_PAGE_SIZE", QEMU 4.1)."""

    name = "qemu-4.0-host-page-bitmap-set"
    range_bug = True


class Qemu41HostPageSetBit(_HostPages):
    """QEMU >= 4.1 on 64 KiB host pages: one bit per balloon page; only whole host pages are
    discarded."""

    name = "qemu-4.1-host-page-set-bit"


# --------------------------------------------------------------------------- PFNs: ffa207d082
class QemuPfnSignExtension(ZooDevice):
    """QEMU <= 4.0 ``int p = virtio_ldl_p(vdev, &pfn); pa = (hwaddr) p << 12``: a PFN with bit
    31 set (memory at or above 8 TiB) is sign-extended to an address no RAM has, and skipped as
    a bad address (fixed by ffa207d082 "virtio-balloon: Fix wrong sign extension of PFNs",
    QEMU 4.1: ``unsigned int p``)."""

    name = "qemu-4.0-pfn-sign-extension"

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        readable = [s for s in segments if not s.writable]
        if role in ("inflate", "deflate") and readable:
            le = self.layout.little_endian
            kept = pfn_segment(readable[0], [p for p in chain_pfns(segments, le)
                                             if p < 1 << 31], le)
            segments = [kept, *(s for s in segments if s.writable)]
        return super().avail(role, head, segments)


class QemuPfnUnsigned(ZooDevice):
    """QEMU >= 4.1: PFNs are unsigned; every PFN in guest RAM is ballooned."""

    name = "qemu-4.1-pfn-unsigned"


# --------------------------------------------------------------------------- stats QOM: bff1050a56
class Qemu92rc1StatsQueryAssert(ZooDevice):
    """QEMU 9.2.0-rc1: the Linux 6.12 header bump (0d2eeef77a) made VIRTIO_BALLOON_S_NR 16
    but ``balloon_stat_names[]`` kept 10 names, so reading the guest stats (``qom-get
    guest-stats``) hits an assertion on a NULL name and QEMU aborts (fixed by bff1050a56
    "hw/virtio: fix crash in processing balloon stats", QEMU 9.2.0; RHBZ 2329448, found by
    Cockpit's CI)."""

    name = "qemu-9.2.0-rc1-stats-query-assert"

    def observe(self) -> dict[str, Any]:
        if "stats" in self.queues:
            raise AssertionError("qobject_output_add_obj: Assertion `name' failed "
                                 "(balloon_stat_names[10] is NULL)")
        return super().observe()


class Qemu92StatsQueryNamed(ZooDevice):
    """QEMU 9.2.0: every tag below VIRTIO_BALLOON_S_NR has a name; stats read back."""

    name = "qemu-9.2.0-stats-query-named"
