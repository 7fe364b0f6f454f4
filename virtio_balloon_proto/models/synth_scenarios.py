"""The scenarios ``trace synth`` plays (``--scenario``): what the reference driver does, step by
step, through a :class:`~virtio_balloon_proto.models.synth.Session` (which records both sides).

Balloon scenarios send their pages as :class:`~.synth_pages.PagePick` chunks, a few chains at a
time, so memory does not grow with ``--pages`` (issue 13); profiles that send one bulk message
for the whole set (v3, hybrid) take the set at once, as their driver does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from ..codecs import Segment
from ..errors import UsageError
from ..pageset import PageSet
from .driver import ADDR_PFNS
from .synth_pages import KERNEL_FRAMES, PagePick
from .synth_zoo import ZOO_SCENARIOS

if TYPE_CHECKING:
    from .synth import Session

HINT_CMD_ID = 0x80000000  # QEMU's first free-page-hint command id
#: PFN-array chains made per batch of a streamed inflate/deflate (x 256 PFNs)
CHAINS_PER_BATCH = 256


def _bulk(s: Session) -> list[str]:
    return ["PAGE_BITMAP"] if s.prof.bulk_feature else []


def _bulk_sent(s: Session) -> bool:
    """The driver sends one bulk message for a page set (v3 bitmaps, hybrid records)."""
    bulk = s.prof.bulk_feature
    return bulk is not None and s.prof.has(s.features, bulk)


def _batches(s: Session, pick: PagePick, p0: int, p1: int,
             reverse: bool) -> list[NDArray[np.uint64]] | Iterator[NDArray[np.uint64]]:
    """Pages ``p0 <= p < p1`` of ``pick`` as the driver sends them: all at once for a bulk
    profile, else in batches that are whole PFN-array chains (chains cut the same as from
    the whole sequence)."""
    if _bulk_sent(s):
        pages = pick.between(p0, p1)
        return [pages[::-1] if reverse else pages]
    per_chain = max(1, 256 // s.layout.frames_per_page)  # PFNS_MAX // fpp pages a chain
    return pick.chunks(per_chain * CHAINS_PER_BATCH, p0, p1, reverse=reverse)


def _inflate(s: Session, pick: PagePick, p0: int = 0, p1: int | None = None) -> None:
    """Host sets a target, the driver inflates towards it (pages ``p0 <= p < p1`` of
    ``pick``), updating ``actual`` as Linux does."""
    assert s.driver is not None
    fpp = s.layout.frames_per_page
    end = pick.size if p1 is None else p1
    nframes = (end - p0) * fpp
    s.host("set-target", num_pages=s.actual + nframes)
    s.config_read(0, 4)
    if _bulk_sent(s):
        chains = s.driver.balloon_chains("inflate", pick.between(p0, end))
        for c in chains:  # one fill_balloon() call: every window, then one actual update
            s.send("inflate", c)
        s.actual += nframes
        s.tell_actual()
        return
    per = max(1, 256 // fpp) * fpp
    left = nframes
    for batch in _batches(s, pick, p0, end, False):
        for c in s.driver.balloon_chains("inflate", batch):
            s.send("inflate", c)
            s.actual += min(per, left)
            left -= per
            s.tell_actual()


def _deflate(s: Session, pick: PagePick, n: int) -> None:
    """leak_balloon() of the ``n`` pages inflated last, most recent first
    (``balloon_page_dequeue``): ``frames[::-1][:n]``."""
    assert s.driver is not None
    nframes = n * s.layout.frames_per_page
    s.host("set-target", num_pages=max(0, s.actual - nframes))
    s.config_read(0, 4)
    for batch in _batches(s, pick, pick.size - n, pick.size, True):
        for c in s.driver.balloon_chains("deflate", batch):
            s.send("deflate", c)
    s.actual -= nframes
    s.tell_actual()


def sc_inflate(s: Session) -> None:
    s.negotiate(["STATS_VQ", *_bulk(s)])
    _inflate(s, s.pick(s.opts.pages))


def sc_deflate(s: Session) -> None:
    s.negotiate(["STATS_VQ", *_bulk(s)])
    pick = s.pick(s.opts.pages)
    _inflate(s, pick)
    _deflate(s, pick, pick.size // 2)


def sc_deflate_on_oom(s: Session) -> None:
    s.negotiate(["STATS_VQ", "DEFLATE_ON_OOM", *_bulk(s)])
    pick = s.pick(s.opts.pages)
    _inflate(s, pick)
    # virtballoon_oom_notify(): leak oom_pages (256) without a new target
    assert s.driver is not None
    oom = pick.between(0, max(1, 256 // s.layout.frames_per_page))
    for c in s.driver.balloon_chains("deflate", oom):
        s.send("deflate", c)
    s.actual -= int(oom.size) * s.layout.frames_per_page
    s.tell_actual()


def sc_stats(s: Session) -> None:
    s.negotiate(["STATS_VQ", *_bulk(s)])
    assert s.driver is not None
    mem = s.opts.memory
    vals = {0: 0, 1: 0, 2: 17, 3: 12345, 4: mem // 2, 5: mem, 6: mem * 3 // 5, 7: mem // 10}
    s.send("stats", s.driver.stats_chain(vals))  # init_vqs(): primed at probe
    for k in range(2):
        if s.host("stats-poll"):
            vals = {t: v + (k + 1) * 4096 * (t + 1) for t, v in vals.items()}
            s.send("stats", s.driver.stats_chain(vals))  # stats_handle_request()


def sc_unused_pages(s: Session) -> None:
    if s.prof.name == "spec":
        raise UsageError("the unused-pages scenario needs the v3 or hybrid misc queue",
                         field="scenario")
    s.negotiate(["STATS_VQ", "PAGE_BITMAP", "MISC_VQ"])
    assert s.driver is not None
    s.send("misc", s.driver.request_buffer())
    fpp = s.layout.frames_per_page
    max_pfn = (s.opts.memory >> 12) // fpp
    firsts = s.pick_pages(max(s.opts.pages, fpp))
    used = PageSet.from_starts_counts(firsts, np.full(firsts.size, fpp, dtype=np.uint64))
    everything = PageSet.from_range(KERNEL_FRAMES, (s.opts.memory >> 12) - KERNEL_FRAMES)
    unused = everything - used
    for req_id in (1, 0x1234_5678_9ABC):
        if not s.host("get-unused-pages", req_id=req_id):
            raise UsageError("the device did not write the misc request", field="scenario")
        for c in s.driver.unused_answer(unused, req_id, max_pfn):
            s.send("misc", c)
        s.send("misc", s.driver.request_buffer())  # posted again after the answer
    # then an ordinary inflate: with exact=True the seed's shared header leaks flag/req_id
    _inflate(s, s.pick(min(s.opts.pages, 512)))


def sc_hint(s: Session) -> None:
    if s.prof.name != "spec":
        raise UsageError("free page hinting is a spec-profile feature", field="scenario")
    s.negotiate(["STATS_VQ", "FREE_PAGE_HINT"])
    assert s.driver is not None
    s.host("hint-start", cmd_id=HINT_CMD_ID)
    cmd = int.from_bytes(s.config_read(8, 4), "little")
    # virtio_balloon_report_free_page(): blocks of MAX_PAGE_ORDER from the free lists
    free = PageSet.from_frames(np.arange(KERNEL_FRAMES, KERNEL_FRAMES + 4 * 1024,
                                         dtype=np.uint64))
    for c in s.driver.hint_chains(free, cmd):
        s.send("free_page", c)
    s.host("hint-stop", cmd_id=1)  # VIRTIO_BALLOON_CMD_ID_DONE: the driver frees its hints
    s.config_read(8, 4)


def sc_report(s: Session) -> None:
    if s.prof.name != "spec":
        raise UsageError("free page reporting is a spec-profile feature", field="scenario")
    s.negotiate(["STATS_VQ", "PAGE_REPORTING"])
    _report_blocks(s, 40)


def _report_blocks(s: Session, blocks: int) -> None:
    """Report ``blocks`` free 2 MiB blocks, 4 MiB apart, past the kernel's frames, as Linux's
    page_reporting_cycle() does: pageblock-order (2 MiB) free blocks, up to 32 per report."""
    assert s.driver is not None
    starts = KERNEL_FRAMES + np.arange(0, blocks * 1024, 1024, dtype=np.uint64)
    free = PageSet.from_starts_counts(starts, np.full(starts.size, 512, dtype=np.uint64))
    for c in s.driver.report_chains(free):
        s.send("reporting", c)


def sc_report_no_stats(s: Session) -> None:
    """Reporting without the stats queue, the device offering both: Linux puts reporting at
    queue 2 (compacted over negotiated features); a device numbering queues over its offered
    features expects it at 3 (research/qemu-peer.md 2b)."""
    if s.prof.name != "spec":
        raise UsageError("free page reporting is a spec-profile feature", field="scenario")
    s.negotiate(["PAGE_REPORTING"], offer_extra=("STATS_VQ",))
    _report_blocks(s, 8)


def sc_poison(s: Session) -> None:
    """PAGE_POISON with reporting: poison_val is written before DRIVER_OK (D-PP2), then free
    pages (filled with it, D-FR2) are reported; a 16-byte config space holds it."""
    if s.prof.name != "spec":
        raise UsageError("page poison is a spec-profile feature", field="scenario")
    s.negotiate(["STATS_VQ", "PAGE_POISON", "PAGE_REPORTING"], poison_val=0xAAAAAAAA)
    assert s.driver is not None
    s.config_read(12, 4)
    starts = KERNEL_FRAMES + np.arange(0, 4 * 1024, 1024, dtype=np.uint64)
    free = PageSet.from_starts_counts(starts, np.full(starts.size, 512, dtype=np.uint64))
    for c in s.driver.report_chains(free):
        s.send("reporting", c)


def sc_must_tell_host(s: Session) -> None:
    """MUST_TELL_HOST: the driver tells the device before reusing pages (D-OP7); the traffic
    is an ordinary inflate then deflate, each acknowledged before the next."""
    s.negotiate(["MUST_TELL_HOST", "STATS_VQ", *_bulk(s)])
    pick = s.pick(s.opts.pages)
    _inflate(s, pick)
    _deflate(s, pick, pick.size // 4)


def sc_malformed(s: Session) -> None:
    """Driver buffers that break a rule; a device must still return each one."""
    s.negotiate(["STATS_VQ", *_bulk(s)])
    assert s.driver is not None
    e = "<u4" if s.layout.little_endian else ">u4"
    base = KERNEL_FRAMES + 64
    fpp = s.layout.frames_per_page
    if s.prof.name == "spec" or not s.prof.bulk_feature:
        good = (np.arange(base, base + 4 * fpp, dtype=np.uint64)).astype(e).tobytes()
        bad_ram = np.array([s.opts.memory >> 12, 0xFFFFFFFF], dtype=e).tobytes()
        cases = [
            good + b"\x01\x02",  # trailing partial PFN: QEMU/crosvm use the whole ones
            np.arange(base + 64, base + 64 + 300 * fpp, fpp, dtype=np.uint64).astype(e).tobytes(),
            good[: 4 * fpp] + good[: 4 * fpp],  # the same page twice
            bad_ram,  # outside guest RAM: skipped (QEMU virtio_balloon_bad_addr)
        ]
        for data in cases:
            s.send("inflate", [Segment(ADDR_PFNS, len(data), False, data)])
        s.send("deflate", [Segment(ADDR_PFNS, 4 * fpp, False, good[: 4 * fpp])])
        return
    if s.prof.name == "v3":
        from ..wire.messages import BitmapMessage, encode_segments

        lay = s.layout
        bm = bytes([0xFF]) + bytes(7)
        for hdr in (
            BitmapMessage(0, lay.page_shift, 0, 0, 0, base // 64 * 64, 16, (bm,)),  # short
            BitmapMessage(0, lay.page_shift, 0, 7, 0, base // 64 * 64, 8, (bm,)),  # reserved
            BitmapMessage(0, lay.page_shift, 0, 0, 0, base // 64 * 64, 8, (bm + bm,)),  # extra
        ):
            segs = [Segment(0x0106_8000 if i == 0 else 0x0110_0000, len(b), False, b)
                    for i, b in enumerate(encode_segments(hdr, lay))]
            s.send("inflate", segs)
        return
    from ..wire.bulk import hybrid_head_word
    from ..wire.structs import structs

    rec = hybrid_head_word(base + 1, 13, 0, s.layout.little_endian)  # misaligned order-1 block
    payload = np.array([rec], dtype=np.uint64).astype(
        "<u8" if s.layout.little_endian else ">u8").tobytes()
    hdr = structs(s.layout.little_endian).virtio_balloon_resp_hdr.build(
        dict(cmd=0, flag=0, id=0, data_len=len(payload) + 8))  # data_len says one more
    s.send("inflate", [Segment(0x0106_A000, 8, False, hdr),
                       Segment(0x0110_0000, len(payload), False, payload)])


SCENARIOS: dict[str, Callable[[Session], None]] = {
    "inflate": sc_inflate,
    "deflate": sc_deflate,
    "deflate-on-oom": sc_deflate_on_oom,
    "stats": sc_stats,
    "unused-pages": sc_unused_pages,
    "hint": sc_hint,
    "report": sc_report,
    "report-no-stats": sc_report_no_stats,
    "poison": sc_poison,
    "must-tell-host": sc_must_tell_host,
    "malformed": sc_malformed,
    **ZOO_SCENARIOS,  # traffic the regression zoo's bugs need (conformance/zoo/)
}
