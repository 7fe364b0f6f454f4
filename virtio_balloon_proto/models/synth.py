"""Synthesised traffic: the reference driver talking to the reference device, as a trace.

``vbproto trace synth`` and the conformance corpus (``conformance/traces/``) are made here.
Everything is deterministic (a seeded generator, no clocks), so regenerating the corpus gives
byte-identical files; CI checks that.

A session records both sides: the driver's status and feature writes, every chain it makes
available (with descriptor ids, guest addresses and bytes), every used entry the device
returns, config reads and writes, and the host actions that explain them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ..codecs import Segment
from ..errors import UsageError
from ..pageset import PageSet
from ..profiles import QueueRole, get_profile
from ..trace import (
    AvailEvent,
    ConfigEvent,
    Event,
    FeaturesEvent,
    HostEvent,
    StatusEvent,
    TraceDescriptor,
    TraceHeader,
    TraceSource,
    UsedEvent,
)
from ..wire import WireLayout
from .device import ReferenceDevice
from .driver import ADDR_PFNS, DriverModel
from .interface import Setup
from .synth_zoo import ZOO_CORPUS, ZOO_REGIONS, ZOO_SCENARIOS

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
HINT_CMD_ID = 0x80000000  # QEMU's first free-page-hint command id
KERNEL_FRAMES = 16 << 8  # keep the first 16 MiB (kernel, our static buffers) out of page sets


@dataclass(frozen=True)
class SynthOptions:
    profile: str
    scenario: str
    endian: str = "le"  # "be": a legacy big-endian guest (no VERSION_1)
    word_size: int = 64
    page_size: int = 4096
    pages: int = 4096  # 4 KiB frames the scenario moves (rounded to whole guest pages)
    seed: int = 0
    exact: bool = False  # v3: reproduce the seed driver's bugs (the linux-v3 mode)
    memory: int = 256 << 20
    queue_size: int = 128
    #: guest RAM regions (start, size) in bytes, recorded in the trace header; None: one
    #: region of ``memory`` bytes at 0, not recorded (the reader's default guest)
    regions: tuple[tuple[int, int], ...] | None = None

    @property
    def layout(self) -> WireLayout:
        return WireLayout(self.endian, self.word_size, self.endian, self.page_size)

    @property
    def memory_end(self) -> int:
        """Where guest RAM ends (the device's ``Setup.memory_size``)."""
        return max(a + n for a, n in self.regions) if self.regions else self.memory


#: events a streaming session (synthesize_to) holds before it writes them out
SPILL_AT = 4096


@dataclass
class Session:
    opts: SynthOptions
    features: int = 0
    events: list[Event] = field(default_factory=list)
    #: streaming (:func:`synthesize_to`): called after a chain is sent once ``events`` holds
    #: SPILL_AT or more; it writes them out and clears the list
    spill: Callable[[Session], None] | None = None

    def __post_init__(self) -> None:
        o = self.opts
        self.prof = get_profile(o.profile)
        self.layout = o.layout
        self.device = ReferenceDevice()
        self.rng = np.random.default_rng(o.seed)
        self.driver: DriverModel | None = None
        self.queues: dict[str, int] = {}
        self.offered = 0
        self.avail_idx: dict[str, int] = {}
        self.actual = 0  # 4 KiB pages the driver has told the device it holds

    # --- bring-up -------------------------------------------------------------------------------
    def negotiate(self, want: list[str], offer_extra: tuple[str, ...] = (),
                  poison_val: int | None = None) -> None:
        """Bring the device up: it offers ``want`` plus ``offer_extra``; the driver takes
        ``want`` (after its own dependency rules).  ``poison_val`` is written to config before
        DRIVER_OK, as VIRTIO 1.2 5.5.6.6 (D-PP2) and Linux's virtballoon_probe() do."""
        o = self.opts
        names = list(want) + (["VERSION_1"] if o.endian == "le" else [])
        wanted = self.prof.mask(names)
        # the driver's own dependency rules (v3: seed 7/7 init_vqs clears without STATS_VQ)
        wanted = self.prof.driver_clears(wanted)
        options = {opt: name in want or name in offer_extra for opt, name in _OPTION_OF.items()
                   if name in self.prof.features}
        neg = self.device.start(Setup(o.profile, wanted, o.endian, o.word_size, o.endian,
                                      o.page_size, options, o.memory_end))
        self.offered, self.features = neg.offered, neg.accepted
        self.queues = dict(neg.queues)
        self.driver = DriverModel(o.profile, self.layout, self.features, exact=o.exact,
                                  queue_size=o.queue_size)
        self.events += [StatusEvent(1), StatusEvent(3),
                        FeaturesEvent(self.offered, wanted, True), StatusEvent(11)]
        if poison_val is not None:
            self.config_write(12, (poison_val & 0xFFFFFFFF).to_bytes(4, "little"))
        self.events.append(StatusEvent(15))

    def header(self, command: str) -> TraceHeader:
        o = self.opts
        endian: Literal["le", "be"] = "le" if o.endian == "le" else "be"
        return TraceHeader(
            o.profile, self.offered, self.features, endian, o.word_size, endian, o.page_size,
            {QueueRole(r): i for r, i in self.queues.items()}, "negotiated", "split",
            TraceSource(command=command, provenance="synthesized: vbproto reference driver "
                        "against the reference device (models/synth.py)"),
            # a guest bigger than the reader's default (256 MiB) says so: otherwise a replay
            # of the trace would take every page above 256 MiB for one outside guest RAM
            memory=o.regions if o.regions is not None or o.memory == 256 << 20
            else ((0, o.memory),))

    # --- traffic --------------------------------------------------------------------------------
    def send(self, role: str, segments: list[Segment]) -> list[int]:
        """Post one chain, let the device run, record both sides; returns used heads."""
        assert self.driver is not None
        if role not in self.queues:
            raise UsageError(f"scenario needs the {role} queue, which the features lack",
                             field="scenario")
        p = self.driver.post(role, segments)
        descs = []
        for k, (s, i) in enumerate(zip(p.segments, p.ids, strict=True)):
            last = k + 1 == len(p.ids)
            flags = (0 if last else VIRTQ_DESC_F_NEXT) | (VIRTQ_DESC_F_WRITE if s.writable else 0)
            descs.append(TraceDescriptor(s.addr, s.length, flags, 0 if last else p.ids[k + 1],
                                         index=i))
        idx = self.avail_idx.get(role, 0)
        self.avail_idx[role] = (idx + 1) & 0xFFFF
        self.events.append(AvailEvent(
            QueueRole(role), self.queues[role],
            tuple(s.data for s in p.segments if not s.writable),
            tuple(s.length for s in p.segments if s.writable),
            id=p.head, descriptors=tuple(descs), avail_idx=idx))
        heads = self._record_used(role, self.device.avail(role, p.head, list(p.segments)))
        if self.spill is not None and len(self.events) >= SPILL_AT:
            self.spill(self)
        return heads

    def _record_used(self, role: str, used: list[Any]) -> list[int]:
        assert self.driver is not None
        heads = []
        for u in used:
            self.events.append(UsedEvent(QueueRole(role), self.queues[role], u.length, u.id,
                                         u.written or None))
            self.driver.used(role, u.id)
            heads.append(u.id)
        return heads

    def host(self, kind: str, **params: int) -> list[int]:
        action = {"set-target": "set-target", "get-unused-pages": "get-unused-pages",
                  "stats-poll": "stats-request", "hint-start": "free-page-hint",
                  "hint-stop": "free-page-hint"}[kind]
        self.events.append(HostEvent(action, num_pages=params.get("num_pages"),  # type: ignore[arg-type]
                                     req_id=params.get("req_id"), cmd_id=params.get("cmd_id")))
        used = self.device.host_request(kind, dict(params))
        role = {"stats-poll": "stats", "get-unused-pages": "misc"}.get(kind)
        return self._record_used(role, used) if role else []

    def config_read(self, offset: int, size: int) -> bytes:
        data = self.device.config_read(offset, size)
        self.events.append(ConfigEvent(False, offset, data))
        return data

    def config_write(self, offset: int, data: bytes) -> None:
        self.device.config_write(offset, data)
        self.events.append(ConfigEvent(True, offset, data))

    def tell_actual(self) -> None:
        # update_balloon_size(): virtio_cwrite_le(actual) -- config is LE in every mode
        self.config_write(4, (self.actual & 0xFFFFFFFF).to_bytes(4, "little"))

    # --- page choice ----------------------------------------------------------------------------
    def pick_pages(self, count: int) -> NDArray[np.uint64]:
        """Guest pages covering ``count`` 4 KiB frames, as the first frame of each page, in the
        order a buddy allocator hands them out: runs at random places above the kernel, each
        run descending."""
        fpp = self.layout.frames_per_page
        ram = self.opts.memory >> 12
        npages = max(1, count // fpp)
        lo, hi = KERNEL_FRAMES // fpp, ram // fpp
        if npages > hi - lo:
            raise UsageError(f"{count} frames do not fit {self.opts.memory >> 20} MiB of RAM",
                             field="pages")
        # indices drawn from the population's size, not from a materialised arange: numpy
        # picks the same indices either way (the values do not enter the draw), and a large
        # population (--memory 1000000: 256 Mi pages) costs O(npages), not 2 GB
        # (int64 values, sorted and shifted in place: a 128 GiB guest's 33 M pages are 268 MB
        # per array, so every temporary counts)
        chosen = self.rng.choice(hi - lo, npages, replace=False)
        chosen += lo
        chosen.sort()
        # runs of consecutive pages, in a random order, each descending -- vectorised (one
        # lexsort, not a Python list of 10^5 runs: issue 13)
        run = np.zeros(chosen.size, dtype=np.intp)
        run[np.flatnonzero(np.diff(chosen) != 1) + 1] = 1
        np.cumsum(run, out=run)
        order = self.rng.permutation(int(run[-1]) + 1)
        pos = np.empty_like(order)
        pos[order] = np.arange(order.size)
        key = pos[run]
        del run, pos, order
        idx = np.lexsort((-chosen, key))
        del key
        seq = chosen[idx]
        del idx, chosen
        if fpp != 1:
            seq *= fpp
        return seq.astype(np.uint64, copy=False)


_OPTION_OF = {
    "deflate-on-oom": "DEFLATE_ON_OOM", "free-page-hint": "FREE_PAGE_HINT",
    "page-poison": "PAGE_POISON", "free-page-reporting": "PAGE_REPORTING",
    "page-bitmap": "PAGE_BITMAP", "misc-vq": "MISC_VQ", "must-tell-host": "MUST_TELL_HOST",
    "stats-vq": "STATS_VQ",
}


# --- scenarios --------------------------------------------------------------------------------
def _bulk(s: Session) -> list[str]:
    return ["PAGE_BITMAP"] if s.prof.bulk_feature else []


def _inflate(s: Session, frames: NDArray[np.uint64]) -> None:
    """Host sets a target, the driver inflates towards it, updating ``actual`` as Linux does."""
    assert s.driver is not None
    fpp = s.layout.frames_per_page
    nframes = int(frames.size) * fpp
    s.host("set-target", num_pages=s.actual + nframes)
    s.config_read(0, 4)
    chains = s.driver.balloon_chains("inflate", frames)
    if chains and s.prof.bulk_feature and s.prof.has(s.features, s.prof.bulk_feature):
        for c in chains:  # one fill_balloon() call: every window, then one actual update
            s.send("inflate", c)
        s.actual += nframes
        s.tell_actual()
        return
    per = max(1, 256 // fpp) * fpp
    for k, c in enumerate(chains):
        s.send("inflate", c)
        s.actual += min(per, nframes - k * per)
        s.tell_actual()


def _deflate(s: Session, frames: NDArray[np.uint64]) -> None:
    assert s.driver is not None
    nframes = int(frames.size) * s.layout.frames_per_page
    s.host("set-target", num_pages=max(0, s.actual - nframes))
    s.config_read(0, 4)
    chains = s.driver.balloon_chains("deflate", frames)
    for c in chains:
        s.send("deflate", c)
    s.actual -= nframes
    s.tell_actual()


def sc_inflate(s: Session) -> None:
    s.negotiate(["STATS_VQ", *_bulk(s)])
    _inflate(s, s.pick_pages(s.opts.pages))


def sc_deflate(s: Session) -> None:
    s.negotiate(["STATS_VQ", *_bulk(s)])
    frames = s.pick_pages(s.opts.pages)
    _inflate(s, frames)
    # leak_balloon() takes pages back most-recently-inflated first (balloon_page_dequeue)
    _deflate(s, frames[::-1][: frames.size // 2])


def sc_deflate_on_oom(s: Session) -> None:
    s.negotiate(["STATS_VQ", "DEFLATE_ON_OOM", *_bulk(s)])
    frames = s.pick_pages(s.opts.pages)
    _inflate(s, frames)
    # virtballoon_oom_notify(): leak oom_pages (256) without a new target
    assert s.driver is not None
    oom = frames[: max(1, 256 // s.layout.frames_per_page)]
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
    _inflate(s, s.pick_pages(min(s.opts.pages, 512)))


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
    assert s.driver is not None
    # page_reporting_cycle(): pageblock-order (2 MiB) free blocks, up to 32 per report
    starts = KERNEL_FRAMES + np.arange(0, 40 * 1024, 1024, dtype=np.uint64)
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
    assert s.driver is not None
    starts = KERNEL_FRAMES + np.arange(0, 8 * 1024, 1024, dtype=np.uint64)
    free = PageSet.from_starts_counts(starts, np.full(starts.size, 512, dtype=np.uint64))
    for c in s.driver.report_chains(free):
        s.send("reporting", c)


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
    frames = s.pick_pages(s.opts.pages)
    _inflate(s, frames)
    _deflate(s, frames[::-1][: frames.size // 4])


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


def _checked(opts: SynthOptions) -> SynthOptions:
    if opts.scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {opts.scenario!r} (one of: {', '.join(SCENARIOS)})",
                         field="scenario")
    get_profile(opts.profile)
    if opts.regions is None and opts.scenario in ZOO_REGIONS:
        opts = replace(opts, regions=ZOO_REGIONS[opts.scenario])
    return opts


def synthesize(opts: SynthOptions, command: str = "") -> tuple[TraceHeader, list[Event]]:
    opts = _checked(opts)
    s = Session(opts)
    SCENARIOS[opts.scenario](s)
    return s.header(command or describe(opts)), s.events


def synthesize_to(path: str | Path, opts: SynthOptions, command: str = "") -> int:
    """:func:`synthesize` written to ``path`` as it is made (the same bytes as
    ``write_trace(path, *synthesize(opts))``), holding at most ~SPILL_AT events: a 128 GiB
    guest's inflate held 2.2 GB of events before (issue 13).  Returns the number of events.

    The header (written first) is what the session knows once it has sent a chain; every
    scenario negotiates once, before its first chain, and the header is compared at the end
    (a scenario that changed it would raise, never write a wrong header)."""
    from ..errors import VBProtoError
    from ..trace import TraceWriter

    opts = _checked(opts)
    cmd = command or describe(opts)
    s = Session(opts)
    writer: TraceWriter | None = None
    first: TraceHeader | None = None

    def spill(sess: Session) -> None:
        nonlocal writer, first
        if writer is None:
            first = sess.header(cmd)
            writer = TraceWriter(path, first)
        for ev in sess.events:
            writer.write(ev)
        sess.events.clear()

    s.spill = spill
    try:
        SCENARIOS[opts.scenario](s)
        if writer is not None and s.header(cmd) != first:
            raise VBProtoError("the scenario changed the trace header after its first chain "
                               "(cannot stream it)", where=f"scenario {opts.scenario}")
        spill(s)
        assert writer is not None
        writer.commit()
        return writer.count - 1
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def describe(opts: SynthOptions) -> str:
    parts = [f"vbproto trace synth --profile {opts.profile} --scenario {opts.scenario}",
             f"--endian {opts.endian}"]
    if opts.profile == "v3":
        parts.append(f"--word-size {opts.word_size}")
    if opts.page_size != 4096:
        parts.append(f"--page-size {opts.page_size}")
    parts.append(f"--pages {opts.pages} --seed {opts.seed}")
    if opts.exact:
        parts.append("--exact")
    return " ".join(parts)


# --- the conformance corpus ---------------------------------------------------------------------
def corpus_matrix() -> list[tuple[str, SynthOptions]]:
    """(file name, options) of every trace in ``conformance/traces/``."""
    out: list[tuple[str, SynthOptions]] = []

    def add(name: str, o: SynthOptions) -> None:
        out.append((name, o))

    for endian in ("le", "be"):
        for sc in ("inflate", "deflate", "deflate-on-oom", "stats", "malformed"):
            add(f"spec/{sc}-{endian}", SynthOptions("spec", sc, endian, pages=1024))
        add(f"spec/inflate-64k-{endian}", SynthOptions("spec", "inflate", endian, page_size=65536,
                                                      pages=2048))
        for sc in ("hint", "report", "report-no-stats", "poison"):
            add(f"spec/{sc}-{endian}", SynthOptions("spec", sc, endian))
        add(f"spec/must-tell-host-{endian}", SynthOptions("spec", "must-tell-host", endian,
                                                          pages=512))
        for ws in (32, 64):
            for sc in ("inflate", "deflate", "stats", "malformed"):
                add(f"v3/{sc}-{endian}{ws}", SynthOptions("v3", sc, endian, ws, pages=2048))
            add(f"v3/unused-pages-{endian}{ws}", SynthOptions("v3", "unused-pages", endian, ws,
                                                               pages=2048))
        add(f"v3/linux-v3-exact-{endian}", SynthOptions("v3", "unused-pages", endian, 64,
                                                       pages=2048, exact=True))
        add(f"v3/inflate-64k-{endian}", SynthOptions("v3", "inflate", endian, 64, 65536,
                                                    pages=2048))
        for sc in ("inflate", "deflate", "unused-pages", "malformed"):
            add(f"hybrid/{sc}-{endian}", SynthOptions("hybrid", sc, endian, pages=2048))
    for sc, endians, pages in ZOO_CORPUS:
        for endian in endians:
            opts = SynthOptions("spec", sc, endian)
            add(f"spec/{sc}-{endian}", replace(opts, pages=pages) if pages else opts)
    return out


def with_seed(opts: SynthOptions, seed: int) -> SynthOptions:
    return replace(opts, seed=seed)


def write_corpus(directory: str | Path) -> int:
    """Regenerate every corpus trace under ``directory`` (``<profile>/<name>.jsonl``);
    files of the corpus that no longer exist in the matrix are removed."""
    root = Path(directory)
    wanted = set()
    for name, opts in corpus_matrix():
        path = root / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        synthesize_to(path, opts)
        wanted.add(path.resolve())
    for old in root.glob("*/*.jsonl"):
        if old.resolve() not in wanted and old.parent.name in ("spec", "v3", "hybrid"):
            old.unlink()
    return len(wanted)
