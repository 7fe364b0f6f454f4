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
from .driver import DriverModel
from .interface import Setup
from .synth_pages import PagePick, pick_pages
from .synth_scenarios import SCENARIOS as SCENARIOS
from .synth_zoo import ZOO_CORPUS, ZOO_REGIONS

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2


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
        # the session never asks the device for deltas: no change journal (it would hold
        # every frame ever ballooned, 8 bytes each: 268 MB for a 128 GiB inflate)
        self.device = ReferenceDevice(journal=False)
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
    def pick(self, count: int) -> PagePick:
        """Guest pages covering ``count`` 4 KiB frames, in the order a buddy allocator hands
        them out (:func:`.synth_pages.pick_pages`: runs at random places above the kernel,
        each run descending), held as runs; draws from the session's generator."""
        return pick_pages(self.rng, count, self.layout.frames_per_page, self.opts.memory)

    def pick_pages(self, count: int) -> NDArray[np.uint64]:
        """:meth:`pick` as one array: the first 4 KiB frame of each guest page, in order."""
        return self.pick(count).frames()


_OPTION_OF = {
    "deflate-on-oom": "DEFLATE_ON_OOM", "free-page-hint": "FREE_PAGE_HINT",
    "page-poison": "PAGE_POISON", "free-page-reporting": "PAGE_REPORTING",
    "page-bitmap": "PAGE_BITMAP", "misc-vq": "MISC_VQ", "must-tell-host": "MUST_TELL_HOST",
    "stats-vq": "STATS_VQ",
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
