"""Ring-image vectors: guest memory regions + ring addresses -> the chains a device walks, or
the RingError it must stop with (loops, out-of-range indices and addresses, nested indirect
tables, chains that never end).

Images are laid with the driver-side builders (``SplitQueueDriver``/``PackedQueueDriver``) over a
:class:`MemoryImage`, then broken on purpose with their raw writers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..virtqueue.chains import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT
from ..virtqueue.memory import MemoryImage
from ..virtqueue.packed_driver import PackedQueueDriver
from ..virtqueue.packed_ring import VIRTQ_DESC_F_AVAIL
from ..virtqueue.split_driver import SplitQueueDriver
from ..virtqueue.split_ring import compact_layout
from .cases import Group
from .format import RING_SCHEMA, classify
from .reference import handle

SIZE = 8
RING_BASE = 0x1000
TABLE = 0x2000  # indirect tables
DATA = 0x10000
OUTSIDE = 0x900000


def _image() -> MemoryImage:
    # ring area, an area for indirect tables, and a data area with a recognisable pattern
    return MemoryImage([(RING_BASE, bytes(0x200)), (TABLE, bytes(0x200)),
                        (DATA, bytes((i * 7 + 1) & 0xFF for i in range(0x200)))])


@dataclass(frozen=True)
class RingCase:
    slug: str
    comment: str
    flags: tuple[str, ...]
    build: Callable[[Any], dict[str, Any]]  # lays the image; returns the "start" object
    expect: str  # valid | invalid
    clause: str | None = None  # the RingError clause (error) or finding rule expected


def rc(slug: str, comment: str, flags: str, build: Callable[[Any], dict[str, Any]],
       expect: str = "valid", clause: str | None = None) -> RingCase:
    return RingCase(slug, comment, tuple(flags.split()), build, expect, clause)


# --- split --------------------------------------------------------------------------------------
def _split_cases() -> list[RingCase]:
    R = DATA
    W = True

    def one(d: SplitQueueDriver) -> dict[str, Any]:
        d.add_and_publish([(R, 8, False)])
        return {"lastAvail": 0}

    def out_in(d: SplitQueueDriver) -> dict[str, Any]:
        d.add_and_publish([(R, 16, False), (R + 0x100, 16, W)])
        return {"lastAvail": 0}

    def three(d: SplitQueueDriver) -> dict[str, Any]:
        d.add_and_publish([(R, 32, False), (R + 32, 8, False)])
        d.add_and_publish([(R + 64, 4, False)])
        d.add_and_publish([(R + 0x100, 16, W)])
        return {"lastAvail": 0}

    def full(d: SplitQueueDriver) -> dict[str, Any]:
        for k in range(SIZE):
            d.add_and_publish([(R + 16 * k, 16, False)])
        return {"lastAvail": 0}

    def indirect(d: SplitQueueDriver) -> dict[str, Any]:
        d.add_and_publish([(R, 32, False), (R + 32, 8, False), (R + 0x100, 8, W)],
                          indirect_addr=TABLE)
        return {"lastAvail": 0}

    def empty(d: SplitQueueDriver) -> dict[str, Any]:
        return {"lastAvail": 0}

    def loop(d: SplitQueueDriver) -> dict[str, Any]:
        d.write_desc(0, R, 8, VIRTQ_DESC_F_NEXT, 1)
        d.write_desc(1, R + 8, 8, VIRTQ_DESC_F_NEXT, 0)
        d.publish(0)
        return {"lastAvail": 0}

    def self_loop(d: SplitQueueDriver) -> dict[str, Any]:
        d.write_desc(3, R, 8, VIRTQ_DESC_F_NEXT, 3)
        d.publish(3)
        return {"lastAvail": 0}

    def next_oor(d: SplitQueueDriver) -> dict[str, Any]:
        d.write_desc(0, R, 8, VIRTQ_DESC_F_NEXT, SIZE)
        d.publish(0)
        return {"lastAvail": 0}

    def head_oor(d: SplitQueueDriver) -> dict[str, Any]:
        d.write_avail_entry(0, SIZE + 1)
        d.set_avail_idx(1)
        return {"lastAvail": 0}

    def idx_ahead(d: SplitQueueDriver) -> dict[str, Any]:
        d.add_and_publish([(R, 8, False)])
        d.set_avail_idx(SIZE + 1)
        return {"lastAvail": 0}

    def addr_outside(d: SplitQueueDriver) -> dict[str, Any]:
        d.add_and_publish([(OUTSIDE, 8, False)])
        return {"lastAvail": 0}

    def len_outside(d: SplitQueueDriver) -> dict[str, Any]:
        d.add_and_publish([(R + 0x1F8, 16, False)])  # runs 8 bytes past the data region
        return {"lastAvail": 0}

    def wr_outside(d: SplitQueueDriver) -> dict[str, Any]:
        d.add_and_publish([(R, 8, False), (OUTSIDE, 4096, W)])
        return {"lastAvail": 0}

    def nested(d: SplitQueueDriver) -> dict[str, Any]:
        d.write_desc(0, TABLE, 32, VIRTQ_DESC_F_INDIRECT, 0)
        d.write_desc(0, R, 8, VIRTQ_DESC_F_NEXT, 1, table=TABLE)
        d.write_desc(1, TABLE + 0x100, 16, VIRTQ_DESC_F_INDIRECT, 0, table=TABLE)
        d.publish(0)
        return {"lastAvail": 0}

    def ind_next(d: SplitQueueDriver) -> dict[str, Any]:
        d.write_desc(0, TABLE, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1)
        d.write_desc(0, R, 8, 0, 0, table=TABLE)
        d.publish(0)
        return {"lastAvail": 0}

    def ind_len(n: int) -> Callable[[SplitQueueDriver], dict[str, Any]]:
        def f(d: SplitQueueDriver) -> dict[str, Any]:
            d.write_desc(0, TABLE, n, VIRTQ_DESC_F_INDIRECT, 0)
            d.write_desc(0, R, 8, 0, 0, table=TABLE)
            d.publish(0)
            return {"lastAvail": 0}
        return f

    def ind_outside(d: SplitQueueDriver) -> dict[str, Any]:
        d.write_desc(0, OUTSIDE, 32, VIRTQ_DESC_F_INDIRECT, 0)
        d.publish(0)
        return {"lastAvail": 0}

    def too_long(d: SplitQueueDriver) -> dict[str, Any]:
        d.add_and_publish([(R + 8 * k, 8, False) for k in range(SIZE + 1)], indirect_addr=TABLE)
        return {"lastAvail": 0}

    def order(d: SplitQueueDriver) -> dict[str, Any]:
        d.add_and_publish([(R + 0x100, 8, W), (R, 8, False)])
        return {"lastAvail": 0}

    return [
        rc("one-out", "one device-readable buffer", "RingChain", one),
        rc("out-in", "a readable then a writable buffer", "RingChain", out_in),
        rc("three-chains", "three chains, one of two descriptors", "RingChain", three),
        rc("full-ring", f"{SIZE} one-descriptor chains fill the queue", "RingChain FullBuffer",
           full),
        rc("indirect", "three buffers in an indirect table", "RingChain RingIndirect", indirect),
        rc("empty", "avail.idx == last_avail: nothing to walk", "RingEmpty", empty),
        rc("loop", "descriptor 0 -> 1 -> 0", "RingLoop", loop, "invalid",
           "spec.driver.ring.no-loop"),
        rc("self-loop", "descriptor 3 -> 3", "RingLoop", self_loop, "invalid",
           "spec.driver.ring.no-loop"),
        rc("next-out-of-range", f"next = {SIZE} in a table of {SIZE}", "RingOutOfRange",
           next_oor, "invalid", "spec.driver.ring.next-in-range"),
        rc("head-out-of-range", f"avail.ring[0] = {SIZE + 1}", "RingOutOfRange", head_oor,
           "invalid", "spec.driver.ring.head-in-range"),
        rc("avail-idx-ahead", f"avail.idx {SIZE + 1} entries past last_avail", "RingOutOfRange",
           idx_ahead, "invalid", "spec.driver.ring.avail-idx-advance"),
        rc("addr-outside", "a readable buffer outside guest memory", "RingOutOfRange",
           addr_outside, "invalid", "spec.driver.ring.addr-in-memory"),
        rc("len-outside", "a readable buffer running past the end of its region",
           "RingOutOfRange", len_outside, "invalid", "spec.driver.ring.addr-in-memory"),
        rc("writable-outside", "a writable buffer outside guest memory", "RingOutOfRange",
           wr_outside, "invalid", "spec.driver.ring.addr-in-memory"),
        rc("indirect-nested", "INDIRECT inside an indirect table", "RingNestedIndirect "
           "RingIndirect", nested, "invalid", "spec.driver.ring.indirect-nested"),
        rc("indirect-with-next", "INDIRECT and NEXT on one descriptor", "RingNestedIndirect "
           "RingIndirect", ind_next, "invalid", "spec.driver.ring.indirect-with-next"),
        rc("indirect-len-0", "an indirect table of length 0", "RingIndirect RingOutOfRange",
           ind_len(0), "invalid", "spec.driver.ring.indirect-len"),
        rc("indirect-len-17", "an indirect table of length 17", "RingIndirect RingOutOfRange",
           ind_len(17), "invalid", "spec.driver.ring.indirect-len"),
        rc("indirect-outside", "an indirect table outside guest memory", "RingIndirect "
           "RingOutOfRange", ind_outside, "invalid", "spec.driver.ring.addr-in-memory"),
        rc("chain-too-long", f"{SIZE + 1} buffers (indirect) on a queue of {SIZE}",
           "RingChainTooLong RingIndirect", too_long, "invalid", "spec.driver.ring.chain-len"),
        rc("writable-first", "a readable buffer after a writable one", "RingOrder", order,
           "invalid", "spec.driver.ring.writable-after-readable"),
    ]


def _split_wrap() -> RingCase:
    def build(d: SplitQueueDriver) -> dict[str, Any]:
        d.add_and_publish([(DATA, 8, False)])
        d.add_and_publish([(DATA + 8, 8, False)])
        return {"lastAvail": 0xFFFF}
    return rc("idx-wrap", "avail.idx wraps from 65535 to 1 (two chains)", "RingChain RingWrap",
              build)


# --- packed --------------------------------------------------------------------------------------
def _packed_cases() -> list[RingCase]:
    R = DATA
    av = VIRTQ_DESC_F_AVAIL  # available with wrap counter 1

    def one(d: PackedQueueDriver) -> dict[str, Any]:
        d.add_chain([(R, 8, False)])
        return {"position": 0, "wrap": 1}

    def chain3(d: PackedQueueDriver) -> dict[str, Any]:
        d.add_chain([(R, 16, False), (R + 16, 8, False), (R + 0x100, 8, True)])
        return {"position": 0, "wrap": 1}

    def two(d: PackedQueueDriver) -> dict[str, Any]:
        d.add_chain([(R, 8, False)])
        d.add_chain([(R + 8, 8, False), (R + 0x100, 4, True)])
        return {"position": 0, "wrap": 1}

    def wrap(d: PackedQueueDriver) -> dict[str, Any]:
        d.position = SIZE - 1
        d.add_chain([(R, 8, False), (R + 8, 8, False)])
        return {"position": SIZE - 1, "wrap": 1}

    def indirect(d: PackedQueueDriver) -> dict[str, Any]:
        d.add_chain([(R, 32, False), (R + 0x100, 8, True)], indirect_addr=TABLE)
        return {"position": 0, "wrap": 1}

    def empty(d: PackedQueueDriver) -> dict[str, Any]:
        return {"position": 0, "wrap": 1}

    def nested(d: PackedQueueDriver) -> dict[str, Any]:
        d.write_desc(0, R, 8, 0, 0, table=TABLE)
        d.write_desc(1, TABLE + 0x100, 16, 0, VIRTQ_DESC_F_INDIRECT, table=TABLE)
        d.write_desc(0, TABLE, 32, 0, VIRTQ_DESC_F_INDIRECT | av)
        return {"position": 0, "wrap": 1}

    def ind_next(d: PackedQueueDriver) -> dict[str, Any]:
        d.write_desc(0, R, 8, 0, 0, table=TABLE)
        d.write_desc(0, TABLE, 16, 0, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT | av)
        d.write_desc(1, R, 8, 0, av)
        return {"position": 0, "wrap": 1}

    def ind_len(d: PackedQueueDriver) -> dict[str, Any]:
        d.write_desc(0, TABLE, 20, 0, VIRTQ_DESC_F_INDIRECT | av)
        return {"position": 0, "wrap": 1}

    def never_ends(d: PackedQueueDriver) -> dict[str, Any]:
        for k in range(SIZE):
            d.write_desc(k, R + 8 * k, 8, 0, VIRTQ_DESC_F_NEXT | av)
        return {"position": 0, "wrap": 1}

    def into_unavail(d: PackedQueueDriver) -> dict[str, Any]:
        d.write_desc(0, R, 8, 0, VIRTQ_DESC_F_NEXT | av)
        return {"position": 0, "wrap": 1}

    def addr_outside(d: PackedQueueDriver) -> dict[str, Any]:
        d.add_chain([(OUTSIDE, 8, False)])
        return {"position": 0, "wrap": 1}

    def order(d: PackedQueueDriver) -> dict[str, Any]:
        d.add_chain([(R + 0x100, 8, True), (R, 8, False)])
        return {"position": 0, "wrap": 1}

    def stale(d: PackedQueueDriver) -> dict[str, Any]:
        d.add_chain([(R, 8, False)])
        return {"position": 0, "wrap": 0}  # the device expects the other wrap counter

    return [
        rc("one-out", "one readable descriptor", "RingChain", one),
        rc("chain-3", "three descriptors linked by NEXT", "RingChain", chain3),
        rc("two-chains", "two chains back to back", "RingChain", two),
        rc("wrap", "a chain from the last ring entry to the first (wrap counter flips)",
           "RingChain RingWrap", wrap),
        rc("indirect", "an indirect table of two buffers", "RingChain RingIndirect", indirect),
        rc("empty", "no descriptor available", "RingEmpty", empty),
        rc("stale-wrap", "descriptors made available under the other wrap counter",
           "RingEmpty RingWrap", stale),
        rc("indirect-nested", "INDIRECT inside an indirect table", "RingNestedIndirect "
           "RingIndirect", nested, "invalid", "spec.driver.packed.indirect-nested"),
        rc("indirect-with-next", "INDIRECT and NEXT on one descriptor", "RingNestedIndirect "
           "RingIndirect", ind_next, "invalid", "spec.driver.packed.indirect-with-next"),
        rc("indirect-len-20", "an indirect table of length 20", "RingIndirect RingOutOfRange",
           ind_len, "invalid", "spec.driver.ring.indirect-len"),
        rc("never-ends", "every descriptor has NEXT: the chain never ends", "RingChainTooLong "
           "RingLoop", never_ends, "invalid", "spec.driver.packed.chain-len"),
        rc("next-into-unavailable", "NEXT into a descriptor that is not available",
           "RingChainTooLong RingOutOfRange", into_unavail, "invalid",
           "spec.driver.packed.chain-len"),
        rc("addr-outside", "a buffer outside guest memory", "RingOutOfRange", addr_outside,
           "invalid", "spec.driver.ring.addr-in-memory"),
        rc("writable-first", "a readable buffer after a writable one", "RingOrder", order,
           "invalid", "spec.driver.ring.writable-after-readable"),
    ]


def _regions(mem: MemoryImage) -> list[dict[str, Any]]:
    return [{"gpa": r.gpa, "hex": bytes(r.data).hex()} for r in mem.regions]


def split_groups() -> list[Group]:
    gs = []
    for endian in ("le", "be"):
        lay = compact_layout(RING_BASE, SIZE)
        params = {"ring": "split", "endian": endian, "size": SIZE, "desc": lay.desc,
                  "avail": lay.avail, "used": lay.used}
        cases = []
        for c in [*_split_cases(), _split_wrap()]:
            def build(c: RingCase = c, endian: str = endian,
                      lay: Any = lay) -> tuple[MemoryImage, Any]:
                mem = _image()
                start_idx = 0xFFFF if c.slug == "idx-wrap" else 0
                d = SplitQueueDriver(mem, SIZE, lay.desc, lay.avail, lay.used, endian == "le",
                                     start_idx=start_idx)
                return mem, c.build(d)
            cases.append((c, build))
        gs.append(Group(endian, params, cases, ("BigEndian",) if endian == "be" else ()))
    return gs


def packed_groups() -> list[Group]:
    params = {"ring": "packed", "endian": "le", "size": SIZE, "desc": RING_BASE}
    cases = []
    for c in _packed_cases():
        def build(c: RingCase = c) -> tuple[MemoryImage, Any]:
            mem = _image()
            d = PackedQueueDriver(mem, SIZE, RING_BASE, True)
            return mem, c.build(d)
        cases.append((c, build))
    return [Group("le", params, cases, ())]


RING_FILES = {"ring-split": split_groups, "ring-packed": packed_groups}


def ring_test(file: str, g: Group, c: RingCase, build: Any, tc: int) -> dict[str, Any]:
    from .generate import GenerationError

    tid = f"{file}/{g.tag}/{c.slug}"
    mem, start = build()
    params = {k: v for k, v in g.params.items() if k != "ring"}
    req = {"op": "walk", "ring": g.params["ring"], "params": params, "memory": _regions(mem),
           "start": start}
    ans = handle(req)
    t: dict[str, Any] = {"id": tid, "tcId": tc, "comment": c.comment,
                         "flags": sorted(set(g.flags) | set(c.flags)),
                         "memory": req["memory"], "start": start}
    if "unsupported" in ans:
        raise GenerationError(f"walker refused: {ans['unsupported']}", where=tid)
    if "error" in ans:
        if c.expect != "invalid" or ans["error"].get("clause") != c.clause:
            raise GenerationError(f"expected {c.expect} {c.clause}, walker raised "
                                  f"{ans['error']}", where=tid)
        t.update(result="invalid", error=ans["error"])
        return t
    rules = sorted({r for ch in ans["chains"] for r in ch["rules"]})
    result = classify(rules)
    if result != c.expect or (c.clause is not None and c.clause not in rules):
        raise GenerationError(f"expected {c.expect} {c.clause}, walker gave {result} {rules}",
                              where=tid)
    t.update(result=result, chains=ans["chains"], rules=rules)
    return t


def build_ring_file(name: str) -> dict[str, Any]:
    from .generate import assemble

    out = []
    tc = 0
    for g in RING_FILES[name]():
        tests = []
        for c, build in g.cases:
            tc += 1
            tests.append(ring_test(name, g, c, build, tc))
        out.append({**g.params, "tag": g.tag, "tests": tests})
    header = [
        f"{name}: guest memory regions and ring addresses -> the chains a device walks from "
        "start (split: lastAvail; packed: position and driver wrap counter), or the RingError "
        "it must stop with.",
        "Descriptors are listed in walk order with the table they came from (null = the ring's "
        "own) and, for device-readable buffers, the bytes they point at.",
    ]
    return assemble(RING_SCHEMA, name, "spec", header, out)
