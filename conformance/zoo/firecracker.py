"""Firecracker's virtio-balloon bugs (src/vmm/src/devices/virtio/balloon/device.rs), with twins.

Hashes are firecracker-microvm/firecracker commits; "fixed in" is the first release tag that
contains the fix (``git merge-base --is-ancestor``).  Two bugs are still in the code at
81b38b9 (2026-08-21); their twins are the obvious fix, marked as not released.
"""

from __future__ import annotations

from virtio_balloon_proto.codecs import decode_buffer
from virtio_balloon_proto.errors import VBProtoError
from virtio_balloon_proto.models.interface import Used

from ._base import Segment, ZooDevice

MAX_PAGES_IN_DESC = 256  # Firecracker's limit: 1,024 bytes of PFNs per descriptor


class _FirecrackerStats(ZooDevice):
    """``process_stats_queue()``: every 10-byte entry goes through
    ``BalloonStats::update_with_stat()``; before v1.15 an unknown tag made it return
    ``Err(MalformedPayload)`` and ``?`` left the loop *before* ``stats_desc_index =
    Some(head.index)``: the entries before it are recorded, the buffer is dropped, never used,
    and the next statistics request finds no buffer ("Failed to update balloon stats, missing
    descriptor")."""

    name = "firecracker-stats"
    known_tags: frozenset[int] = frozenset(range(10))
    drop_on_unknown = True

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role != "stats":
            return super().avail(role, head, segments)
        out: list[Used] = []
        if self._stats_held is not None:  # "driver is not compliant": return the old one
            out.append(Used(self._stats_held, 0))
            self._stats_held = None
        try:
            d = decode_buffer(self.profile, "stats", segments, self.layout,
                              features=self.accepted)
            entries = d.decoded.message.entries if d.decoded is not None else ()  # type: ignore[union-attr]
        except VBProtoError:
            entries = ()
        for e in entries:
            if e.tag not in self.known_tags:
                if self.drop_on_unknown:
                    return out  # Err(MalformedPayload): the buffer is lost
                continue  # v1.15: METRICS.stats_update_fails.inc(); debug!(...)
            self.state.stats[e.tag] = e.val
        self._stats_held = head
        self._stats_seen += 1
        return out


class Firecracker113StatsRejectsTags10To15(_FirecrackerStats):
    """Firecracker <= 1.13 knows tags 0-9: a Linux >= 6.12 guest's stats buffer (tags 10-15)
    is dropped and the stats API returns nothing ("balloon stat crashed", fixed by 5a3419f
    "feat: support linux v6.12 balloon stat", v1.14.0)."""

    name = "firecracker-1.13-stats-rejects-tags-10-15"


class Firecracker114StatsRejectsUnknownTag(_FirecrackerStats):
    """Firecracker 1.14 knows tags 0-15 but still drops a buffer with any other tag, such as
    crosvm's 65534/65535 (fixed by ff0e866 "feat(balloon): add logging for malformed
    balloon-stats tag", v1.15.0: unknown tags are counted and skipped)."""

    name = "firecracker-1.14-stats-rejects-unknown-tag"
    known_tags = frozenset(range(16))


class Firecracker115StatsSkipsUnknownTag(_FirecrackerStats):
    """Firecracker >= 1.15: unknown tags are skipped, the buffer is kept and used."""

    name = "firecracker-1.15-stats-skips-unknown-tag"
    known_tags = frozenset(range(16))
    drop_on_unknown = False


class FirecrackerInflateOversizedLeak(ZooDevice):
    """Firecracker ``process_inflate()`` at 81b38b9: a descriptor longer than 1,024 bytes
    ("bogus page count") hits ``continue`` before ``queue.add_used``: its PFNs are skipped and
    the buffer is never given back.  The spec sets no maximum (Linux's 256 PFNs is Linux's)."""

    name = "firecracker-inflate-oversized-leak"

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role == "inflate" and segments and not segments[0].writable \
                and segments[0].length > MAX_PAGES_IN_DESC * 4 \
                and segments[0].length % 4 == 0:
            return []
        return super().avail(role, head, segments)


class FirecrackerInflateOversizedUsed(ZooDevice):
    """The fix (not released): an oversized PFN array is processed and used like any other."""

    name = "firecracker-inflate-oversized-used"


class FirecrackerInflateHeadOnly(ZooDevice):
    """Firecracker ``process_inflate()`` at 81b38b9 reads ``head.len`` PFNs at ``head.addr``:
    only the chain's first descriptor; PFNs in chained descriptors are never ballooned (the
    buffer is still used).  Cloud Hypervisor had the same bug until 52db3f8 (v52.0)."""

    name = "firecracker-inflate-head-only"

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role == "inflate":
            return super().avail(role, head, segments[:1])
        return super().avail(role, head, segments)


class FirecrackerInflateWholeChain(ZooDevice):
    """The fix (not released): every descriptor of the chain is read."""

    name = "firecracker-inflate-whole-chain"
