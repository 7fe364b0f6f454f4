"""Scenarios whose traffic triggers the regression zoo's bugs (conformance/zoo/).

Each scenario is driver traffic a published balloon bug needs to show itself (the zoo names
the bug, its source and the clause that must catch it); every correct device handles it.  The
traffic is what Linux sends, or -- where a bug needs a driver that breaks a rule or is not
Linux -- what such a driver sends, said in the docstring.  Used by ``models/synth.py``'s
scenario table and corpus matrix; ``Session`` is its recording driver/device pair.
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from ..codecs import Segment
from ..errors import UsageError
from ..pageset import PageSet
from ..wire import encode
from ..wire.messages import Stat, StatsMessage
from .driver import ADDR_PFNS, ADDR_STATS

if TYPE_CHECKING:
    from .synth import Session

KERNEL_FRAMES = 16 << 8  # as synth.py: keep the first 16 MiB out of page sets
HINT_CMD_ID = 0x80000000  # QEMU's first free-page-hint command id
HOST_PAGE_FRAMES = 16  # a 64 KiB host page holds 16 balloon (4 KiB) pages

#: Linux >= 6.12 (74c025c5d7e4): VIRTIO_BALLOON_S_NR = 16; tags 10-15 are OOM_KILL,
#: ALLOC_STALL (counts), ASYNC_SCAN, DIRECT_SCAN, ASYNC_RECLAIM, DIRECT_RECLAIM (bytes)
LINUX_612_TAGS = tuple(range(16))
#: crosvm's non-standard tags (devices/src/virtio/balloon.rs): 65534 shared memory,
#: 65535 unevictable memory, sent by ChromeOS guests after the standard ones
CROSVM_TAGS = (*range(10), 65534, 65535)


def _spec_only(s: Session, what: str) -> None:
    if s.prof.name != "spec":
        raise UsageError(f"the {what} scenario is a spec-profile scenario", field="scenario")


def _stats_values(s: Session, tags: tuple[int, ...], k: int) -> dict[int, int]:
    mem = s.opts.memory
    base = {0: 0, 1: 0, 2: 17, 3: 12345, 4: mem // 2, 5: mem, 6: mem * 3 // 5, 7: mem // 10,
            8: 3, 9: 0, 10: 1, 11: 7, 12: 40 << 12, 13: 8 << 12, 14: 36 << 12, 15: 5 << 12,
            65534: mem // 64, 65535: mem // 128}
    return {t: base.get(t, t) + k * 4096 * (i + 1) for i, t in enumerate(tags)}


def _stats_chain(s: Session, vals: dict[int, int]) -> list[Segment]:
    """A stats buffer with the entries in the given order (the spec allows any order)."""
    data = encode(StatsMessage(tuple(Stat(t, v) for t, v in vals.items())), s.layout)
    return [Segment(ADDR_STATS, len(data), False, data)]


def _stats_with(s: Session, tags: tuple[int, ...]) -> None:
    s.negotiate(["STATS_VQ"])
    s.send("stats", _stats_chain(s, _stats_values(s, tags, 0)))  # primed at probe
    for k in (1, 2):
        if s.host("stats-poll"):
            s.send("stats", _stats_chain(s, _stats_values(s, tags, k)))


def sc_stats_linux_612(s: Session) -> None:
    """A Linux >= 6.12 guest's stats: tags 0-15, of which the spec defines 0-9 (5.5.6.3)."""
    _spec_only(s, "stats-linux-6.12")
    _stats_with(s, LINUX_612_TAGS)


def sc_stats_crosvm_tags(s: Session) -> None:
    """A ChromeOS guest's stats for crosvm: tags 0-9 then crosvm's 65534 and 65535."""
    _spec_only(s, "stats-crosvm-tags")
    _stats_with(s, CROSVM_TAGS)


def _stats_new_tags(s: Session, tags: tuple[int, ...]) -> None:
    s.negotiate(["STATS_VQ"])
    primed = tuple(t for t in tags if t < 10)  # the spec's tags only
    s.send("stats", _stats_chain(s, _stats_values(s, primed, 0)))
    for k in (1, 2):
        if s.host("stats-poll"):
            s.send("stats", _stats_chain(s, _stats_values(s, tags, k)))


def sc_stats_new_tags_linux_612(s: Session) -> None:
    """A driver that primes the stats queue with the spec's tags 0-9 only (VIRTIO 1.2 5.5.2
    asks for "one empty buffer": what the first buffer holds binds nobody, and
    spec.driver.stats.same-subset exempts it), then sends Linux >= 6.12's full set 0-15 in
    every later buffer.  A device that uses the first buffer when asked and then holds one
    with tags 10-15 shows it did not ignore them (5.5.6.3.2): the contrast a verdict needs,
    since when a device asks for statistics is its own choice (5.5.6.3)."""
    _spec_only(s, "stats-new-tags-linux-6.12")
    _stats_new_tags(s, LINUX_612_TAGS)


def sc_stats_new_tags_crosvm(s: Session) -> None:
    """As stats-new-tags-linux-6.12, with crosvm's 65534/65535 after the spec's tags."""
    _spec_only(s, "stats-new-tags-crosvm")
    _stats_new_tags(s, CROSVM_TAGS)


def sc_stats_second_buffer(s: Session) -> None:
    """A driver that breaks 5.5.6.3.1 (one stats buffer at a time): a second buffer is made
    available while the device still holds the first; then a stats request and a refill."""
    _spec_only(s, "stats-second-buffer")
    s.negotiate(["STATS_VQ"])
    tags = tuple(range(10))
    s.send("stats", _stats_chain(s, _stats_values(s, tags, 0)))
    s.send("stats", _stats_chain(s, _stats_values(s, tags, 1)))
    if s.host("stats-poll"):
        s.send("stats", _stats_chain(s, _stats_values(s, tags, 2)))
    if s.host("stats-poll"):
        s.send("stats", _stats_chain(s, _stats_values(s, tags, 3)))


def _split(chain: list[Segment], parts: int) -> list[Segment]:
    """One PFN array over ``parts`` chained device-readable descriptors (whole PFNs each),
    contiguous in the driver's array as a scatter-gather list over it would be."""
    (seg,) = chain
    n = seg.length // 4
    cuts = [round(n * i / parts) for i in range(parts + 1)]
    return [Segment(seg.addr + 4 * a, 4 * (b - a), False, seg.data[4 * a : 4 * b])
            for a, b in pairwise(cuts) if b > a]


def sc_inflate_chained(s: Session) -> None:
    """PFN arrays split over three chained descriptors (a driver whose array is a
    scatter-gather list; the spec puts no limit on the chain), inflate then deflate."""
    _spec_only(s, "inflate-chained")
    s.negotiate(["STATS_VQ"])
    assert s.driver is not None
    frames = s.pick_pages(s.opts.pages)
    fpp = s.layout.frames_per_page
    total = int(frames.size) * fpp
    s.host("set-target", num_pages=total)
    s.config_read(0, 4)
    for c in s.driver.balloon_chains("inflate", frames):
        s.send("inflate", _split(c, 3))
        s.actual += c[0].length // 4
        s.tell_actual()
    back = frames[::-1][: frames.size // 2]
    s.host("set-target", num_pages=total - int(back.size) * fpp)
    for c in s.driver.balloon_chains("deflate", back):
        s.send("deflate", _split(c, 3))
        s.actual -= c[0].length // 4
    s.tell_actual()


def _pfn_bytes(s: Session, frames: np.ndarray) -> bytes:
    e = "<u4" if s.layout.little_endian else ">u4"
    return np.asarray(frames, dtype=np.uint64).astype(e).tobytes()


def sc_inflate_big_buffer(s: Session) -> None:
    """A driver that is not Linux puts 512 PFNs (2,048 bytes) in one inflate buffer (the spec
    sets no maximum; Linux's is 256), then an ordinary 256-PFN buffer; deflate the latter."""
    _spec_only(s, "inflate-big-buffer")
    s.negotiate(["STATS_VQ"])
    if s.layout.frames_per_page != 1:
        raise UsageError("inflate-big-buffer is a 4 KiB-page scenario", field="page_size")
    frames = s.pick_pages(768)
    big, normal = frames[:512], frames[512:]
    s.host("set-target", num_pages=768)
    s.config_read(0, 4)
    for part in (big, normal):
        data = _pfn_bytes(s, part)
        s.send("inflate", [Segment(ADDR_PFNS, len(data), False, data)])
        s.actual += int(part.size)
        s.tell_actual()
    s.host("set-target", num_pages=512)
    data = _pfn_bytes(s, normal)
    s.send("deflate", [Segment(ADDR_PFNS, len(data), False, data)])
    s.actual -= int(normal.size)
    s.tell_actual()


def sc_inflate_malformed_then_good(s: Session) -> None:
    """Malformed inflate buffers, then good ones: a device-writable descriptor, a 6-byte PFN
    array (one whole PFN and two bytes), then an 8-PFN array and a deflate of half of it."""
    _spec_only(s, "inflate-malformed-then-good")
    s.negotiate(["STATS_VQ"])
    if s.layout.frames_per_page != 1:
        raise UsageError("inflate-malformed-then-good is a 4 KiB-page scenario",
                         field="page_size")
    base = KERNEL_FRAMES + 0x100
    s.host("set-target", num_pages=8)
    s.config_read(0, 4)
    s.send("inflate", [Segment.into(ADDR_PFNS, 16)])
    s.send("inflate", [Segment(ADDR_PFNS, 6, False, _pfn_bytes(s, np.array([base])) + b"\0\0")])
    good = np.arange(base + 0x10, base + 0x18, dtype=np.uint64)
    data = _pfn_bytes(s, good)
    s.send("inflate", [Segment(ADDR_PFNS, len(data), False, data)])
    s.actual += int(good.size)
    s.tell_actual()
    s.host("set-target", num_pages=4)
    data = _pfn_bytes(s, good[:4])
    s.send("deflate", [Segment(ADDR_PFNS, len(data), False, data)])
    s.actual -= 4
    s.tell_actual()


def sc_inflate_host_64k(s: Session) -> None:
    """A 4 KiB-page guest on a host with 64 KiB pages (arm64/ppc64 hosts): the device can
    only give memory back in host pages of 16 balloon pages.  Traffic: the first 4 balloon
    pages of one host page (a partial host page), all 16 of another, all 16 of a third of
    which 5 are then deflated."""
    _spec_only(s, "inflate-host-64k")
    s.negotiate(["STATS_VQ"])
    if s.layout.frames_per_page != 1:
        raise UsageError("inflate-host-64k is a 4 KiB-page guest scenario", field="page_size")
    h = HOST_PAGE_FRAMES
    partial = np.arange(KERNEL_FRAMES + 4 * h, KERNEL_FRAMES + 4 * h + 4, dtype=np.uint64)
    full = np.arange(KERNEL_FRAMES + 9 * h, KERNEL_FRAMES + 10 * h, dtype=np.uint64)[::-1]
    third = np.arange(KERNEL_FRAMES + 13 * h, KERNEL_FRAMES + 14 * h, dtype=np.uint64)
    s.host("set-target", num_pages=36)
    s.config_read(0, 4)
    for part in (partial, full, third):
        data = _pfn_bytes(s, part)
        s.send("inflate", [Segment(ADDR_PFNS, len(data), False, data)])
        s.actual += int(part.size)
        s.tell_actual()
    s.host("set-target", num_pages=31)
    data = _pfn_bytes(s, third[3:8])
    s.send("deflate", [Segment(ADDR_PFNS, len(data), False, data)])
    s.actual -= 5
    s.tell_actual()


def sc_hint_replayed_id(s: Session) -> None:
    """Free page hinting where the driver replays an old command id after the device stopped
    hinting (STOP in free_page_hint_cmd_id): the pages it then hints are stale (5.5.6.5.2:
    the device MUST ignore them); a new round with a new id follows."""
    _spec_only(s, "hint-replayed-id")
    s.negotiate(["STATS_VQ", "FREE_PAGE_HINT"])
    assert s.driver is not None

    def blocks(first: int, n: int) -> PageSet:
        return PageSet.from_range(KERNEL_FRAMES + first * 1024, n * 1024)

    s.host("hint-start", cmd_id=HINT_CMD_ID)
    cmd = int.from_bytes(s.config_read(8, 4), "little")
    for c in s.driver.hint_chains(blocks(0, 2), cmd)[:-1]:  # stopped before its own STOP
        s.send("free_page", c)
    s.host("hint-stop", cmd_id=0)  # VIRTIO_BALLOON_CMD_ID_STOP: the host stops hinting
    s.config_read(8, 4)
    for c in s.driver.hint_chains(blocks(4, 2), cmd):  # the old id again, and more hints
        s.send("free_page", c)
    s.host("hint-start", cmd_id=HINT_CMD_ID + 1)
    cmd = int.from_bytes(s.config_read(8, 4), "little")
    for c in s.driver.hint_chains(blocks(8, 2), cmd):
        s.send("free_page", c)
    s.host("hint-stop", cmd_id=1)  # DONE
    s.config_read(8, 4)


#: a guest with RAM above 4 GiB and at 8 TiB (PFN bit 31 set: 8 TiB / 4 KiB = 2**31), as a
#: large or memory-hotplugged guest has; the trace header records the regions
HIGH_RAM = ((0, 256 << 20), (4 << 30, 64 << 20), (8 << 40, 64 << 20))


def sc_inflate_high_ram(s: Session) -> None:
    """Inflate 256 pages in each RAM region of a guest with RAM above 4 GiB and at 8 TiB,
    then deflate 64 of each (the scenario records the regions in the trace header)."""
    _spec_only(s, "inflate-high-ram")
    s.negotiate(["STATS_VQ"])
    if s.layout.frames_per_page != 1:
        raise UsageError("inflate-high-ram is a 4 KiB-page scenario", field="page_size")
    regions = s.opts.regions or HIGH_RAM
    parts = [np.arange(start >> 12, (start >> 12) + 256, dtype=np.uint64)[::-1]
             + np.uint64(KERNEL_FRAMES if start == 0 else 0) for start, _ in regions]
    total = 256 * len(parts)
    s.host("set-target", num_pages=total)
    s.config_read(0, 4)
    for part in parts:
        data = _pfn_bytes(s, part)
        s.send("inflate", [Segment(ADDR_PFNS, len(data), False, data)])
        s.actual += int(part.size)
        s.tell_actual()
    s.host("set-target", num_pages=total - 64 * len(parts))
    for part in parts:
        data = _pfn_bytes(s, part[:64])
        s.send("deflate", [Segment(ADDR_PFNS, len(data), False, data)])
        s.actual -= 64
    s.tell_actual()


def sc_report_outside_ram(s: Session) -> None:
    """A report whose range lies outside guest RAM (a hostile or broken guest: 2 MiB at
    1 GiB in a 256 MiB guest), then ordinary reports."""
    _spec_only(s, "report-outside-ram")
    s.negotiate(["STATS_VQ", "PAGE_REPORTING"])
    assert s.driver is not None
    outside = max(s.opts.memory, 1 << 30)
    s.send("reporting", [Segment.into(outside, 2 << 20)])
    starts = KERNEL_FRAMES + np.arange(0, 4 * 1024, 1024, dtype=np.uint64)
    free = PageSet.from_starts_counts(starts, np.full(starts.size, 512, dtype=np.uint64))
    for c in s.driver.report_chains(free):
        s.send("reporting", c)


ZOO_SCENARIOS = {
    "stats-linux-6.12": sc_stats_linux_612,
    "stats-crosvm-tags": sc_stats_crosvm_tags,
    "stats-second-buffer": sc_stats_second_buffer,
    "stats-new-tags-linux-6.12": sc_stats_new_tags_linux_612,
    "stats-new-tags-crosvm": sc_stats_new_tags_crosvm,
    "inflate-chained": sc_inflate_chained,
    "inflate-big-buffer": sc_inflate_big_buffer,
    "inflate-malformed-then-good": sc_inflate_malformed_then_good,
    "inflate-host-64k": sc_inflate_host_64k,
    "hint-replayed-id": sc_hint_replayed_id,
    "report-outside-ram": sc_report_outside_ram,
    "inflate-high-ram": sc_inflate_high_ram,
}

#: scenarios that need a guest RAM layout other than one region at 0
ZOO_REGIONS: dict[str, tuple[tuple[int, int], ...]] = {"inflate-high-ram": HIGH_RAM}

#: (corpus file name, scenario, byte orders, pages) for the corpus matrix
ZOO_CORPUS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("stats-linux-6.12", ("le", "be"), 0),
    ("stats-crosvm-tags", ("le",), 0),
    ("stats-second-buffer", ("le", "be"), 0),
    ("stats-new-tags-linux-6.12", ("le",), 0),
    ("stats-new-tags-crosvm", ("le",), 0),
    ("inflate-chained", ("le", "be"), 768),
    ("inflate-big-buffer", ("le",), 0),
    ("inflate-malformed-then-good", ("le",), 0),
    ("inflate-host-64k", ("le",), 0),
    ("hint-replayed-id", ("le", "be"), 0),
    ("report-outside-ram", ("le",), 0),
    ("inflate-high-ram", ("le",), 0),
)
