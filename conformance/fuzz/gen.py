"""The generator: seeded, stateful driver traffic for one sequence (a :class:`Program`).

Sequence ``k`` of seed ``s`` is drawn from its own ``random.Random`` (seeded from ``(s, k)``),
so any sequence can be drawn again alone (``--seed s`` and its number) and a run is the same
on every machine.  The generator plays a driver: it keeps the driver's own view (the pages it
put in the balloon, the ``actual`` it told the device, the hint command ids the host
published) and draws what a driver may send -- and what a broken or hostile one sends:

* bring-up: which features the device offers and the driver takes (each sequence starts
  at reset), modern little-endian / legacy little- or big-endian, 4 KiB or 64 KiB guest
  pages, RAM as one region or with regions above 4 GiB and at 8 TiB (PFN bit 31);
* inflate/deflate of page sets: in RAM, in holes and past the end, duplicates, byte-swapped,
  a 64 KiB page's PFN group cut short; arrays of up to 256 PFNs (Linux) or oversized,
  over 1-4 chained descriptors (also cutting a PFN in two), through an indirect table; the
  malformed classes the wire layer knows: a trailing partial PFN, an empty buffer, a
  device-writable descriptor;
* statistics: known tags 0-9, Linux 6.12's 10-15, unknown tags (crosvm's 65534/65535 and
  others), duplicate tags, a partial entry, a second buffer while one is held, host polls;
* free page hinting rounds (host start/stop, the driver's echo, hints, STOP; stale and replayed
  ids, a wrong-length id buffer, unaligned and outside-RAM hints) and reporting (blocks in and
  out of RAM, unaligned);
* config reads (whole fields and single bytes) and writes (``actual``, partial, device-owned
  fields, ``poison_val``), host targets.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Literal

from virtio_balloon_proto.codecs import Segment

from .program import (
    OPTIONAL_FEATURES,
    Avail,
    ConfigRead,
    ConfigWrite,
    Env,
    Host,
    Op,
    Program,
)

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
ADDR_PFNS = 0x0106_6000  # where Linux keeps vb->pfns (models/driver.py)
ADDR_STATS = 0x0106_7000
ADDR_HINT_CMD = 0x0106_B000
LOW_FRAMES = 16 << 8  # pages the generator leaves alone: the first 16 MiB (kernel, buffers)
PFNS_MAX = 256  # Linux's VIRTIO_BALLOON_ARRAY_PFNS_MAX
HINT_CMD_ID_MIN = 0x80000000
LINUX_612_TAGS = tuple(range(10, 16))


@dataclass(frozen=True)
class GenOptions:
    """What the generator may draw (the campaign narrows it to what the device supports)."""

    profile: str = "spec"
    #: device-type features it may offer (--features); all of the profile's by default
    features: frozenset[str] = frozenset(OPTIONAL_FEATURES)
    big_endian: bool = True  # legacy big-endian guests
    legacy: bool = True  # drivers without VERSION_1
    high_ram: bool = True  # RAM regions above 4 GiB and at 8 TiB
    large_pages: bool = True  # 64 KiB guest pages
    hinting: bool = True  # host free-page-hint requests
    #: legacy big-endian guests only (a legacy device on big-endian pseries: QEMU ppc64)
    big_endian_only: bool = False
    max_actions: int = 10  # driver actions per sequence (each one or more operations)


def sequence_rng(seed: int, k: int) -> random.Random:
    return random.Random(f"vbproto-fuzz:{seed}:{k}")


def generate(opts: GenOptions, seed: int, k: int) -> Program:
    """Sequence ``k`` of seed ``seed``."""
    rng = sequence_rng(seed, k)
    env = _env(opts, rng)
    d = _Driver(env, rng, opts)
    d.run(rng.randint(1, opts.max_actions))
    return Program(env, tuple(d.ops), origin=f"seed {seed} sequence {k}")


def _env(opts: GenOptions, rng: random.Random) -> Env:
    r = rng.random()
    endian: Literal["le", "be"] = "le"
    modern = True
    if opts.big_endian_only:
        modern, endian = False, "be"
    elif opts.legacy and r < 0.3:
        modern = False
        if opts.big_endian and r < 0.15:
            endian = "be"
    page_size = 65536 if opts.large_pages and rng.random() < 0.1 else 4096
    offered = frozenset(f for f in OPTIONAL_FEATURES if f in opts.features
                        and rng.random() < 0.75)
    wanted = frozenset(f for f in OPTIONAL_FEATURES if f in offered and rng.random() < 0.85)
    if opts.high_ram and rng.random() < 0.25:
        memory: tuple[tuple[int, int], ...] = ((0, 256 * MiB), (4 * GiB, 64 * MiB))
        if rng.random() < 0.6:
            memory += ((8 * TiB, 64 * MiB),)
    else:
        memory = ((0, rng.choice((64, 128, 256, 512)) * MiB),)
    poison = None
    if "PAGE_POISON" in wanted and rng.random() < 0.8:
        poison = rng.choice((0, 0xAAAAAAAA, rng.getrandbits(32)))
    return Env(offered, wanted, endian, modern, rng.random() < 0.3, page_size, memory, poison)


class _Driver:
    """The driver's side of one sequence: its own view of the balloon and of the device."""

    def __init__(self, env: Env, rng: random.Random, opts: GenOptions) -> None:
        self.env, self.rng, self.opts = env, rng, opts
        self.ops: list[Op] = []
        self.roles = set(env.roles())
        self.fpp = env.frames_per_page
        self.balloon: list[int] = []  # first frame of each page the driver inflated
        self.actual = 0
        self.cmd_id = 0  # the last id the host published (hint-start)
        self.old_ids: list[int] = []
        self.pfmt = "<I" if env.little_endian else ">I"
        cfg = 8 + (4 if "FREE_PAGE_HINT" in env.wanted else 0)
        self.config_size = 16 if "PAGE_POISON" in env.wanted else cfg

    # --- the sequence ------------------------------------------------------------------------
    def run(self, actions: int) -> None:
        if "stats" in self.roles and self.rng.random() < 0.8:
            self.stats_buffer()  # init_vqs(): Linux primes the stats queue at probe
        table = [(self.inflate, 5.0), (self.deflate, 4.0), (self.set_target, 1.5),
                 (self.config_read, 1.5), (self.config_write, 1.0)]
        if "stats" in self.roles:
            table += [(self.stats_buffer, 2.5), (self.stats_poll, 2.5)]
        if "free_page" in self.roles and self.opts.hinting:
            table += [(self.hint_round, 3.0)]
        if "reporting" in self.roles:
            table += [(self.report, 3.0)]
        fns, weights = zip(*table, strict=True)
        for _ in range(actions):
            self.rng.choices(fns, weights)[0]()

    # --- pages -------------------------------------------------------------------------------
    def _region(self) -> tuple[int, int]:
        """(first frame, end frame) of a RAM region, page-aligned, above the low 16 MiB."""
        start, size = self.rng.choice(self.env.memory)
        first = max(start >> 12, LOW_FRAMES if start == 0 else 0)
        first = -(-first // self.fpp) * self.fpp
        end = (start + size) >> 12
        return first, max(first, end // self.fpp * self.fpp)

    def pick_pages(self, n: int) -> list[int]:
        """``n`` guest pages (first frames) in RAM: a few runs, each in descending order (a buddy
        allocator hands out a block's pages from the top)."""
        out: list[int] = []
        while len(out) < n:
            first, end = self._region()
            pages = (end - first) // self.fpp
            if pages <= 0:
                break
            run = min(n - len(out), self.rng.choice((1, 1, 2, 4, 16, 64, 512)), pages)
            at = first + self.rng.randrange(pages - run + 1) * self.fpp
            out += [at + i * self.fpp for i in range(run)][::-1]
        return out

    def _outside(self) -> int:
        """A frame outside RAM: in a hole between regions or past the end (below 2**32)."""
        end = self.env.ram_end() >> 12
        holes = [(a + n) >> 12 for a, n in self.env.memory if (a + n) >> 12 < 1 << 32]
        f = self.rng.choice([*holes, min(end, (1 << 32) - 64)]) + self.rng.randrange(64)
        return f - f % self.fpp

    def _pfn_chains(self, pages: list[int], role: str) -> None:
        """Linux's fill/leak_balloon: arrays of at most 256 PFNs, the actual update after each
        -- with the variations a driver that is not Linux (or is broken) makes."""
        rng = self.rng
        tags: list[str] = []
        if rng.random() < 0.08 and pages:
            pages = [*pages, rng.choice(pages)]
            tags.append("dup")
        if rng.random() < 0.08:
            pages = pages + [self._outside() for _ in range(rng.randint(1, 3))]
            tags.append("outside-ram")
        pfns = [p + i for p in pages for i in range(self.fpp)]
        if self.fpp > 1 and pfns and rng.random() < 0.1:
            del pfns[-rng.randint(1, self.fpp - 1):]
            tags.append("partial-group")
        swapped = rng.random() < 0.03
        if swapped:
            tags.append("byte-swapped")
        per = PFNS_MAX // self.fpp * self.fpp
        if len(pfns) > per and rng.random() < 0.15:
            per = rng.choice((512, 1024, len(pfns)))
            tags.append("oversized")
        bufs = [pfns[i:i + per] for i in range(0, len(pfns), per)] or [[]]
        fmt = ("<I" if self.pfmt == ">I" else ">I") if swapped else self.pfmt
        for buf in bufs:
            data = b"".join(struct.pack(fmt, p & 0xFFFFFFFF) for p in buf)
            self._send_pfns(role, data, list(tags))
            if role == "inflate":
                self.actual += len(buf)
            else:
                self.actual = max(0, self.actual - len(buf))
            if rng.random() < 0.8:
                self.write_actual()

    def _send_pfns(self, role: str, data: bytes, tags: list[str]) -> None:
        rng = self.rng
        if rng.random() < 0.04:
            data += bytes(rng.randint(1, 3))
            tags.append("partial-word")
        if rng.random() < 0.02:
            data = b""
            tags.append("empty")
        segs: list[Segment] = []
        parts = rng.choice((1, 1, 1, 1, 2, 3, 4)) if len(data) >= 8 else 1
        if parts > 1:
            straddle = rng.random() < 0.2
            cuts = sorted(rng.sample(range(1, len(data)), parts - 1)) if straddle else sorted(
                {4 * rng.randint(1, len(data) // 4 - 1) for _ in range(parts - 1)})
            tags.append("straddle" if straddle else "chained")
            at = 0
            for c in [*cuts, len(data)]:
                segs.append(Segment(ADDR_PFNS + at, c - at, False, data[at:c]))
                at = c
        else:
            segs.append(Segment(ADDR_PFNS, len(data), False, data))
        if rng.random() < 0.03:
            segs.append(Segment.into(ADDR_PFNS + 0x800, 16))
            tags.append("writable")
        self._avail(role, segs, "pfns" + "".join(f":{t}" for t in sorted(set(tags))))

    def _avail(self, role: str, segs: list[Segment], label: str) -> None:
        indirect = self.env.indirect and len(segs) > 1 and self.rng.random() < 0.5
        self.ops.append(Avail(role, tuple(segs), label, indirect))

    def inflate(self) -> None:
        n = self.rng.choice((1, 2, 3, 8, 16, 64, 256, 300, 700)) // self.fpp or 1
        pages = self.pick_pages(n)
        if self.rng.random() < 0.6:
            self.ops.append(Host("set-target", (("num_pages", self._target(
                self.actual + len(pages) * self.fpp)),)))
            if self.rng.random() < 0.5:
                self.ops.append(ConfigRead(0, 4))
        self._pfn_chains(pages, "inflate")
        self.balloon += pages

    def deflate(self) -> None:
        rng = self.rng
        if self.balloon and rng.random() < 0.9:
            n = rng.randint(1, len(self.balloon))
            if rng.random() < 0.5:  # balloon_page_dequeue(): the most recent first
                pages = self.balloon[-n:][::-1]
            else:
                pages = rng.sample(self.balloon, n)
            gone = set(pages)
            self.balloon = [p for p in self.balloon if p not in gone]
        else:  # pages the driver never inflated (deflate-on-oom of nothing, a broken driver)
            pages = self.pick_pages(rng.choice((1, 4, 16)))
        if rng.random() < 0.5:  # a new, lower target (no target: deflate on OOM)
            self.ops.append(Host("set-target", (("num_pages", self._target(
                max(0, self.actual - len(pages) * self.fpp))),)))
        self._pfn_chains(pages, "deflate")

    def _target(self, want: int) -> int:
        ram = sum(n for _, n in self.env.memory) >> 12
        # a target below half of RAM: QEMU's QMP balloon needs a guest size > 0
        return min(want, ram // 2) if self.rng.random() < 0.9 else self.rng.randrange(ram // 2)

    def set_target(self) -> None:
        self.ops.append(Host("set-target", (("num_pages", self._target(
            self.rng.randrange(0, 1 << 16))),)))

    # --- config ------------------------------------------------------------------------------
    def write_actual(self) -> None:
        # update_balloon_size(): virtio_cwrite_le(actual): config is little-endian
        self.ops.append(ConfigWrite(4, (self.actual & 0xFFFFFFFF).to_bytes(4, "little")))

    def config_read(self) -> None:
        rng = self.rng
        if rng.random() < 0.8:
            self.ops.append(ConfigRead(4 * rng.randrange(self.config_size // 4), 4))
        else:
            size = rng.choice((1, 2))
            self.ops.append(ConfigRead(rng.randrange(0, self.config_size - size + 1), size))

    def config_write(self) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.6:
            self.actual = rng.choice((self.actual, rng.randrange(1 << 16)))
            self.write_actual()
        elif r < 0.75:  # a partial write of actual (2 bytes)
            off = rng.choice((4, 6))
            self.ops.append(ConfigWrite(off, rng.getrandbits(16).to_bytes(2, "little"),
                                        "actual-partial"))
        elif r < 0.9 or self.config_size < 16:  # a field the device owns (num_pages, cmd id)
            off = rng.choice((0, 8)) if self.config_size >= 12 else 0
            self.ops.append(ConfigWrite(off, rng.getrandbits(32).to_bytes(4, "little"),
                                        "device-owned"))
        else:  # poison_val after DRIVER_OK
            self.ops.append(ConfigWrite(12, rng.getrandbits(32).to_bytes(4, "little"),
                                        "poison"))

    # --- statistics --------------------------------------------------------------------------
    def stats_buffer(self) -> None:
        rng = self.rng
        tags = rng.sample(range(10), rng.randint(0, 10))
        labels: list[str] = []
        if rng.random() < 0.25:
            tags += rng.sample(LINUX_612_TAGS, rng.randint(1, 6))
            labels.append("linux-6.12")
        if rng.random() < 0.15:
            tags += rng.choice(([65534, 65535], [rng.randrange(16, 65534)]))
            labels.append("unknown-tag")
        if tags and rng.random() < 0.05:
            tags.append(rng.choice(tags))
            labels.append("duplicate-tag")
        fmt = "<HQ" if self.env.little_endian else ">HQ"
        data = b"".join(struct.pack(fmt, t, rng.choice((0, 4096 * rng.randrange(1 << 20),
                                                        rng.getrandbits(64)))) for t in tags)
        if rng.random() < 0.04:
            data += bytes(rng.randint(1, 9))
            labels.append("partial-entry")
        if len(data) > 10 and rng.random() < 0.1:
            cut = rng.randrange(1, len(data))
            segs = [Segment(ADDR_STATS, cut, False, data[:cut]),
                    Segment(ADDR_STATS + cut, len(data) - cut, False, data[cut:])]
            labels.append("chained")
        else:
            segs = [Segment(ADDR_STATS, len(data), False, data)]
        self._avail("stats", segs, "stats" + "".join(f":{t}" for t in sorted(labels)))

    def stats_poll(self) -> None:
        self.ops.append(Host("stats-poll"))
        if self.rng.random() < 0.8:  # stats_handle_request(): the driver refills
            self.stats_buffer()

    # --- free page hinting -------------------------------------------------------------------
    def _cmd(self, cmd: int, label: str) -> None:
        data = struct.pack(self.pfmt, cmd & 0xFFFFFFFF)
        if self.rng.random() < 0.03:
            data = data[: self.rng.choice((0, 2, 3))] if self.rng.random() < 0.5 else data + data
            label += ":bad-len"
        self._avail("free_page", [Segment(ADDR_HINT_CMD, len(data), False, data)], label)

    def _hints(self) -> None:
        rng = self.rng
        for _ in range(rng.randint(0, 5)):
            segs: list[Segment] = []
            labels: list[str] = []
            for _ in range(1 if rng.random() < 0.9 else rng.randint(2, 4)):
                order = rng.choice((0, 1, 4, 9, 10))
                first, end = self._region()
                span = 1 << order
                if end - first < span:
                    span = 1
                at = first + rng.randrange(max(1, (end - first) // span)) * span
                addr, length = at << 12, span << 12
                if rng.random() < 0.05:
                    addr, labels = self._outside() << 12, [*labels, "outside-ram"]
                if rng.random() < 0.04:
                    addr, labels = addr + rng.randrange(1, 4096), [*labels, "unaligned"]
                segs.append(Segment.into(addr, length))
            self._avail("free_page", segs, "hint" + "".join(f":{t}" for t in sorted(labels)))

    def hint_round(self) -> None:
        rng = self.rng
        if self.cmd_id:
            self.old_ids.append(self.cmd_id)
        self.cmd_id = (max(self.cmd_id + 1, HINT_CMD_ID_MIN) if rng.random() < 0.9
                       else rng.randrange(2, 1 << 32))
        self.ops.append(Host("hint-start", (("cmd_id", self.cmd_id),)))
        if rng.random() < 0.8:
            self.ops.append(ConfigRead(8, 4))
        r = rng.random()
        if r < 0.85:
            self._cmd(self.cmd_id, "cmd-id")
        elif r < 0.95 and self.old_ids:
            self._cmd(rng.choice(self.old_ids), "stale-id")
        self._hints()
        if rng.random() < 0.7:
            self._cmd(0, "stop")  # VIRTIO_BALLOON_CMD_ID_STOP: the driver is done
        if rng.random() < 0.85:
            self.ops.append(Host("hint-stop", (("cmd_id", rng.choice((0, 1))),)))
            if rng.random() < 0.5:
                self.ops.append(ConfigRead(8, 4))
            if rng.random() < 0.15:  # a driver that replays the id after the host stopped
                self._cmd(self.cmd_id, "replayed-id")
                self._hints()

    # --- free page reporting -----------------------------------------------------------------
    def report(self) -> None:
        rng = self.rng
        segs: list[Segment] = []
        labels: list[str] = []
        for _ in range(rng.choice((1, 1, 2, 4, 8, 32))):
            order = rng.choice((0, 9, 9, 10))
            first, end = self._region()
            span = min(1 << order, max(1, end - first))
            at = first + rng.randrange(max(1, (end - first) // span)) * span
            addr, length = at << 12, span << 12
            if rng.random() < 0.05:
                addr, labels = max(self.env.ram_end(), GiB), [*labels, "outside-ram"]
            if rng.random() < 0.03:
                length, labels = length - rng.randrange(1, 4096), [*labels, "unaligned"]
            segs.append(Segment.into(addr, length))
        self._avail("reporting", segs, "report" + "".join(
            f":{t}" for t in sorted(set(labels))))
