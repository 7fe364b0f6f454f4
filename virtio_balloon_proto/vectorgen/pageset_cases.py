"""Page-set vectors: a set of 4 KiB frames -> the exact chains each profile's driver posts,
and what each chain decodes back to.

The ``pageset-v3-seed-exact`` file reproduces the seed driver with its four bugs
(``codecs.v3.SeedV3Driver(exact=True)``): its chains break the seed's own rules and lose pages,
and the vectors say so (``lossless: false``, ``result: invalid``) -- a decoder of real 2016
captures must recognise exactly these buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..codecs import Segment
from ..pageset import PageSet, union_all
from .cases import Group, SplitMix64
from .format import PAGESET_SCHEMA, classify
from .reference import decode_chain, handle, layout_of

M52 = (1 << 52) - 1


@dataclass(frozen=True)
class PageCase:
    slug: str
    comment: str
    flags: tuple[str, ...]
    pages: list[list[int]]
    #: request extras (reqId, maxPfn, cmdId, priorMiscAnswer)
    extra: dict[str, Any] = field(default_factory=dict)
    #: expected (result, lossless); None = the group default
    expect: tuple[str, bool] | None = None
    #: expected EncodeError field
    error: str | None = None


def pc(slug: str, comment: str, flags: str, pages: list[list[int]], *,
       expect: tuple[str, bool] | None = None, error: str | None = None,
       **extra: Any) -> PageCase:
    return PageCase(slug, comment, tuple(flags.split()), pages, extra, expect, error)


def _common(tag: str, ws: int) -> list[PageCase]:
    rng = SplitMix64(f"pageset/{tag}")
    cs = [
        pc("empty", "no page: no chain at all", "Empty", []),
        pc("frame-0", "frame 0 alone", "ZeroValue", [[0, 1]]),
        pc("frame-1", "frame 1 alone", "Normal", [[1, 1]]),
        pc("run-256", "256 consecutive frames", "FullBuffer", [[0x100, 256]]),
        pc("run-257", "257 consecutive frames (a second PFN buffer)", "TooMany", [[0x100, 257]]),
        pc("word-boundary", f"frames {ws - 1} and {ws}", "WordBoundary", [[ws - 1, 2]]),
        pc("top-of-word", f"frames 1 and {ws}: the highest starts a word of its own",
           "WordBoundary", [[1, 1], [ws, 1]]),
        pc("block-1024", "an aligned 4 MiB block", "Normal", [[0x400, 1024]]),
        pc("far-apart", "frames 0 and 262210 (two bitmap windows on a 4 KiB guest)", "Normal",
           [[0, 1], [262210, 1]]),
        pc("pfn-max32", "frame 2^32-1", "MaxValue", [[0xFFFFFFFF, 1]]),
    ]
    for k in range(2):
        frames = rng.sample(1 << 12, 40)
        cs.append(pc(f"random-{k}", "40 seeded random frames below 2^12", "Random",
                     PageSet.from_frames(frames).extents()))
    return cs


def _large(tag: str) -> list[PageCase]:
    return [
        pc("empty", "no page", "Empty LargePage", []),
        pc("page-0", "the 64 KiB page at frame 0", "LargePage", [[0, 16]]),
        pc("two-pages", "64 KiB pages at frames 16 and 48", "LargePage", [[16, 16], [48, 16]]),
        pc("run-16-pages", "16 pages = 256 frames", "LargePage FullBuffer", [[0x100, 256]]),
        pc("ragged", "8 frames: half a 64 KiB page (no driver can send it)", "LargePage "
           "Misaligned", [[0, 8]], error="pages"),
    ]


def _p(profile: str, role: str, endian: str = "le", ws: int = 64, wo: str | None = None,
       page_size: int = 4096, **more: Any) -> dict[str, Any]:
    return {"profile": profile, "role": role, "endian": endian, "wordSize": ws,
            "wordOrder": wo or endian, "pageSize": page_size, **more}


def _flags(endian: str, wo: str) -> tuple[str, ...]:
    return (("BigEndian",) if endian == "be" else ()) + (("WordOrder",) if wo != endian else ())


def spec_groups() -> list[Group]:
    gs = []
    for endian in ("le", "be"):
        cs = [*_common(f"spec/{endian}", 64),
            pc("beyond-32bit", "frame 2^32: beyond the __virtio32 PFN field", "MaxValue",
               [[1 << 32, 1]], error="pages")]
        gs.append(Group(f"inflate-{endian}", _p("spec", "inflate", endian), cs,
                        _flags(endian, endian)))
    gs.append(Group("inflate-le-64k", _p("spec", "inflate", page_size=65536), _large("spec"),
                    ()))
    ranges = [
        pc("empty", "nothing free", "Empty Ranges", []),
        pc("frame-0", "frame 0", "Ranges ZeroValue", [[0, 1]]),
        pc("block-1024", "one order-10 block", "Ranges", [[0x400, 1024]]),
        pc("ragged", "frames 3-1030: blocks of every order up to 10", "Ranges", [[3, 1028]]),
        pc("capacity", "33 separate frames: a second report chain (capacity 32)",
           "Ranges FullBuffer", [[2 * k, 1] for k in range(33)]),
        pc("high", "frame 2^40", "Ranges MaxValue", [[1 << 40, 1]]),
    ]
    gs.append(Group("reporting", _p("spec", "reporting"), ranges, ()))
    for endian in ("le", "be"):
        hint = [
            pc("empty", "a round with nothing free: cmd id then STOP", "Empty Ranges", [],
               cmdId=0x80000000),
            pc("one-block", "one 4 MiB hint block", "Ranges", [[0x400, 1024]], cmdId=0x80000001),
            pc("small-blocks", "free frames 1-6 (smaller blocks than a driver hints)", "Ranges",
               [[1, 6]], cmdId=0x80000002),
        ]
        gs.append(Group(f"free-page-{endian}", _p("spec", "free_page", endian), hint,
                        _flags(endian, endian)))
    return gs


V3_LAYOUTS = [("le", 64, "le"), ("be", 64, "be"), ("le", 32, "le"), ("be", 32, "be"),
              ("le", 64, "be")]


def _v3_tag(endian: str, ws: int, wo: str) -> str:
    return f"{endian}{ws}" + ("" if wo == endian else f"-w{wo}")


def v3_groups(exact: bool) -> list[Group]:
    gs = []
    for endian, ws, wo in V3_LAYOUTS:
        t = _v3_tag(endian, ws, wo)
        cs = _common(f"v3/{t}", ws)
        if exact:
            cs.append(pc("after-misc-answer", "inflate frame 5 after answering request 9: the "
                         "shared header keeps cmd/flag/req_id", "SeedBug3 InflateFieldsSet",
                         [[5, 1]], priorMiscAnswer={"pages": [[0, 1]], "reqId": 9,
                                                    "maxPfn": 64}))
        gs.append(Group(f"inflate-{t}", _p("v3", "inflate", endian, ws, wo, exact=exact,
                                           nrPageBmap=1), cs, _flags(endian, wo)))
    gs.append(Group("inflate-le64-64k", _p("v3", "inflate", page_size=65536, exact=exact,
                                           nrPageBmap=1), _large("v3"), ()))
    for endian, ws, wo in (("le", 64, "le"), ("be", 32, "be")):
        t = _v3_tag(endian, ws, wo)
        misc = [
            pc("unused-small", "frames 0-9, 500, 999 unused of max_pfn 1000", "MiscAnswer",
               [[0, 10], [500, 1], [999, 1]], reqId=7, maxPfn=1000,
               # bug 4 cuts bmap_len to 125 bytes: a cut big-endian word loses its low byte
               expect=("invalid", wo == "le") if exact else None),
            pc("unused-none", "nothing unused of max_pfn 64", "MiscAnswer Empty", [], reqId=0,
               maxPfn=64),
            pc("unused-tail", "frames 1000-1002 unused of max_pfn 1003 (seed bug 4 drops them)",
               "MiscAnswer SeedBug4" if exact else "MiscAnswer", [[1000, 3]],
               reqId=(1 << 64) - 1, maxPfn=1003,
               expect=("invalid", False) if exact else None),
        ]
        gs.append(Group(f"misc-{t}", _p("v3", "misc", endian, ws, wo, exact=exact,
                                        nrPageBmap=1), misc, _flags(endian, wo)))
    return gs


def hybrid_groups() -> list[Group]:
    gs = []
    for endian in ("le", "be"):
        for bitmaps in (True, False):
            cs = [*_common(f"hybrid/{endian}/{bitmaps}", 64),
                pc("pfn-max52", "frame 2^52-1, the largest hybrid start_pfn", "MaxValue",
                   [[M52, 1]]),
                pc("big-block", "an aligned 4 GiB block (order 20)", "Normal",
                   [[1 << 20, 1 << 20]]),
                pc("bitmap-window", "frames 0, 2, 4, 6: one bitmap word beats four records",
                   "Normal", [[0, 1], [2, 1], [4, 1], [6, 1]]),
            ]
            tag = f"{'inflate' if bitmaps else 'plain'}-{endian}"
            gs.append(Group(tag, _p("hybrid", "inflate", endian, bitmaps=bitmaps), cs,
                            _flags(endian, endian)))
    misc = [
        pc("unused", "an answer to request 5", "MiscAnswer", [[0, 10], [64, 64]], reqId=5),
        pc("unused-none", "an empty answer: one DONE buffer", "MiscAnswer Empty", [], reqId=6),
    ]
    gs.append(Group("misc-le", _p("hybrid", "misc", "le", bitmaps=True), misc, ()))
    return gs


PAGESET_FILES = {
    "pageset-spec": ("spec", spec_groups),
    "pageset-v3": ("v3", lambda: v3_groups(False)),
    "pageset-v3-seed-exact": ("v3", lambda: v3_groups(True)),
    "pageset-hybrid": ("hybrid", hybrid_groups),
}


def _segment(s: dict[str, Any]) -> Segment:
    return Segment(s["addr"], s["len"], s["writable"], bytes.fromhex(s["hex"]))


def pageset_test(file: str, g: Group, c: PageCase, tc: int) -> dict[str, Any]:
    from .generate import GenerationError

    tid = f"{file}/{g.tag}/{c.slug}"
    p = g.params
    req = {"op": "encode_pages", "params": p, "pages": c.pages, **c.extra}
    ans = handle(req)
    t: dict[str, Any] = {"id": tid, "tcId": tc, "comment": c.comment, "pages": c.pages,
                         **c.extra}
    flags = set(g.flags) | set(c.flags)
    if p.get("exact"):
        flags.add("SeedBug1" if c.pages and p["role"] != "misc" else "MiscAnswer"
                  if p["role"] == "misc" else "Empty")
    if "error" in ans:
        if c.error is None or ans["error"].get("field") != c.error:
            raise GenerationError(f"encoder failed: {ans['error']}", where=tid)
        t.update(error=ans["error"], result="invalid", flags=sorted(flags))
        return t
    if "unsupported" in ans:
        raise GenerationError(f"encoder refused: {ans['unsupported']}", where=tid)
    if c.error is not None:
        raise GenerationError(f"expected an EncodeError on {c.error!r}", where=tid)
    layout = layout_of(p)
    chains = []
    sets = []
    rules: set[str] = set()
    for ch in ans["chains"]:
        d = decode_chain(p["profile"], p["role"], [_segment(s) for s in ch], layout)
        chains.append({"segments": ch, **d})
        sets.append(PageSet.from_extents(d["pages"]))
        rules.update(d["rules"])
    decoded = union_all(sets).extents() if sets else []
    lossless = decoded == PageSet.from_extents(c.pages).extents()
    result = classify(rules)
    if c.expect is not None:
        want = c.expect
    elif p.get("exact") and p["role"] != "misc":
        # seed bug 1: every window here is far below PFNS_PER_BMAP, so no bitmap buffer goes out
        want = ("invalid" if chains else "valid", not c.pages)
    elif p["profile"] == "v3" and p["pageSize"] != 4096 and c.pages:
        want = ("acceptable", True)  # page-shift-ambiguous (SHOULD) on every 64 KiB inflate
    else:
        want = ("valid", True)
    if (result, lossless) != want:
        raise GenerationError(f"expected {want}, got ({result}, {lossless}) with "
                              f"{sorted(rules)}", where=tid)
    if not lossless:
        flags.add("NonCanonical")
    t.update(chains=chains, decodedPages=decoded, lossless=lossless, result=result,
             rules=sorted(rules), flags=sorted(flags))
    return t


def build_pageset_file(name: str) -> dict[str, Any]:
    from .generate import assemble

    profile, fn = PAGESET_FILES[name]
    out = []
    tc = 0
    for g in fn():
        tests = []
        for c in g.cases:
            tc += 1
            tests.append(pageset_test(name, g, c, tc))
        out.append({**g.params, "tag": g.tag, "tests": tests})
    header = [
        f"{name}: the exact chains a {profile} driver posts for a page set, per role.",
        "Each chain lists its descriptors (addr, len, writable, hex of driver-written bytes), "
        "its decoded kind and pages, and the rules its decoding breaks.",
        "lossless: the union of the decoded pages equals the input set.",
    ]
    return assemble(PAGESET_SCHEMA, name, profile, header, out)
