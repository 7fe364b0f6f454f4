"""The bit-block (dense) form of a PageSet is the same set as its extents form (issue 12).

Every set is built twice: as extents, and re-cut so that a random choice of 512-frame blocks
is held as bits (whatever the density rule would pick).  Both must be equal, hash alike, count,
print and answer membership alike, and every operation between any two forms must give the
set the extents algebra gives.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto import bitblocks as bb
from virtio_balloon_proto.pageset import MAX_FRAME, PageSet
from virtio_balloon_proto.wire import WireLayout, decode

# frames near 0, near a block edge and at the very top of the frame space
_BASES = st.sampled_from([0, 5, 509, 1 << 20, (1 << 40) - 3, MAX_FRAME - 5000])


@st.composite
def extents_sets(draw: st.DrawFn) -> PageSet:
    base = draw(_BASES)
    ext = draw(st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 700)), max_size=12))
    pattern = draw(st.sampled_from([None, 0x55, 0xAA, 0x3C, 0x01]))
    ps = PageSet.from_extents([[base + a, min(n, MAX_FRAME - base - a + 1)] for a, n in ext
                               if base + a <= MAX_FRAME])
    if pattern is not None:  # an alternating stretch: one extent per page
        off = draw(st.integers(0, 600))
        nbytes = draw(st.integers(1, 200))
        if base + off + 8 * nbytes - 1 <= MAX_FRAME:
            bits = np.full(nbytes, pattern, dtype=np.uint8)
            pos = np.flatnonzero(np.unpackbits(bits, bitorder="little")).astype(np.uint64)
            ps = ps | PageSet.from_frames(pos + np.uint64(base + off))
    return ps


def force_dense(ps: PageSet, data: st.DataObject) -> PageSet:
    """The same set with a random subset of blocks (touched or not) held as bits."""
    if not ps:
        return ps
    lo, hi = ps.min() >> 9, ps.max() >> 9
    cand = sorted({lo, hi, *data.draw(st.lists(st.integers(lo, hi), max_size=10))})
    universe = np.array(data.draw(st.lists(st.sampled_from(cand), min_size=1, unique=True)),
                        dtype=np.uint64)
    universe.sort()
    es, el, rows = bb.spread(ps.starts, ps.lasts, None, universe)
    out = PageSet._trusted(es, el)
    out._blk = bb.make(universe, rows)
    return out


def same(a: PageSet, b: PageSet) -> None:
    assert a == b and b == a
    assert hash(a) == hash(b)
    assert a.extents() == b.extents()
    assert a.to_text() == b.to_text()
    assert a.page_count() == b.page_count() and bool(a) == bool(b)
    assert a.n_extents == b.n_extents == len(b.extents())
    if a:
        assert (a.min(), a.max()) == (b.min(), b.max())


@settings(max_examples=150, deadline=None)
@given(p=extents_sets(), q=extents_sets(), data=st.data())
def test_dense_and_extents_forms_agree(p: PageSet, q: PageSet, data: st.DataObject) -> None:
    dp, dq = force_dense(p, data), force_dense(q, data)
    same(dp, p)
    assert np.array_equal(dp.starts, p.starts) and np.array_equal(dp.counts, p.counts)
    probe = [f for e in p.extents()[:4] for f in (e[0] - 1, e[0], e[0] + e[1] - 1, e[0] + e[1])
             if 0 <= f <= MAX_FRAME]
    assert [f in dp for f in probe] == [f in p for f in probe]
    assert dp.contains_frames(np.array(probe, dtype=np.uint64)).tolist() == [f in p
                                                                            for f in probe]
    for x, y in ((dp, dq), (dp, q), (p, dq)):
        same(x | y, p | q)
        same(x & y, p & q)
        same(x - y, p - q)
        same(x ^ y, p ^ q)
        assert x.issubset(y) == p.issubset(q) and x.isdisjoint(y) == p.isdisjoint(q)
    if p and p.max() < 1 << 63:
        base = p.min()
        n = p.max() - base + 1
        if n <= 1 << 16:
            assert dp.to_bitmap(base, n) == p.to_bitmap(base, n)
            bits = np.frombuffer(p.to_bitmap(base, n), dtype=np.uint8)
            same(PageSet.from_le_bits(bits, base, n), p)


@settings(max_examples=100, deadline=None)
@given(pattern=st.binary(min_size=1, max_size=64), reps=st.integers(1, 64),
       base=st.integers(0, 5000), order=st.sampled_from(["little", "big"]))
def test_from_bitmap_picks_a_form_and_keeps_the_set(pattern: bytes, reps: int, base: int,
                                                    order: str) -> None:
    raw = (pattern * reps)[: len(pattern) * reps // 8 * 8 or 8].ljust(8, b"\0")
    ps = PageSet.from_bitmap(raw, base, 64, order)  # type: ignore[arg-type]
    le = np.frombuffer(raw, dtype=np.uint8)
    if order == "big":
        le = le.reshape(-1, 8)[:, ::-1].reshape(-1)
    frames = np.flatnonzero(np.unpackbits(le, bitorder="little")).astype(np.uint64) + base
    same(ps, PageSet.from_frames(frames))


def test_alternating_bitmap_is_held_as_blocks_and_stays_small() -> None:
    """4 MiB of 0x55: 16 Mi one-page extents (256 MiB as extents) are 4.5 MiB of blocks."""
    n = 4 << 20
    ps = PageSet.from_bitmap(b"\x55" * n, 64)
    assert ps.is_dense and ps._blk is not None
    assert ps._blk.bits.nbytes + ps._blk.idx.nbytes <= 1.2 * n
    assert ps.page_count() == 4 * n and ps.n_extents == 4 * n
    assert (ps.min(), ps.max()) == (64, 64 + 8 * n - 2)
    assert 66 in ps and 67 not in ps
    text = "".join(ps.iter_text(chunk=1 << 12))
    assert text.startswith("64,66,68,") and text.endswith(f",{64 + 8 * n - 2}")
    # an all-ones bitmap is one extent, not blocks
    assert not PageSet.from_bitmap(b"\xff" * n, 0).is_dense


def test_v3_decode_of_alternating_bitmap_keeps_pages_and_findings() -> None:
    """The wire decoder hands the dense form over; pages and findings are what the extents
    path gave (lossless): every other frame from start_pfn, no finding."""
    hdr = bytes.fromhex("00000c00000000000000000000000000") + (64).to_bytes(8, "little")
    body = b"\x55" * 4096
    d = decode("bmap", [hdr + len(body).to_bytes(8, "little"), body],
               WireLayout("le", 64, "le", 4096), profile="v3", role="inflate")
    ps = d.pages()
    assert ps.is_dense and d.findings == ()
    assert ps == PageSet.from_frames(np.arange(64, 64 + 8 * 4096, 2, dtype=np.uint64))


@settings(max_examples=100, deadline=None)
@given(records=st.lists(st.tuples(st.integers(0, 90), st.sampled_from([12, 12, 13]),
                                  st.integers(1, 63),
                                  st.lists(st.sampled_from([0x5555555555555555, 0, 1 << 63,
                                                            (1 << 64) - 1, 0xF0F0F0F0F0F0F0F1]),
                                           min_size=8, max_size=8)),
                        min_size=1, max_size=10),
       plain_order=st.integers(0, 20))
def test_hybrid_disjoint_records_take_the_bits_path(
        records: list[tuple[int, int, int, list[int]]], plain_order: int) -> None:
    """Records that name disjoint frames decode through bit blocks (order-0 bitmaps) and
    extents (the rest) to exactly the blocks a bit-by-bit reading gives, with no finding
    about pages named twice."""
    import struct

    body = b""
    want: list[list[int]] = []
    for k, (off, shift, blen, wvals) in enumerate(records):
        start = k * 1100 + off  # 504 bits of order 1 span 1008 frames: never overlapping
        unit = 1 << (shift - 12)
        body += struct.pack("<Q", start | shift << 52 | blen << 58)
        body += b"".join(struct.pack("<Q", w) for w in wvals[:(blen + 7) // 8])
        want += [[start + bit * unit, unit] for bit in range(blen * 8)
                 if wvals[bit // 64] >> (bit % 64) & 1]
    far = 1 << 40
    body += struct.pack("<Q", far | (12 + plain_order) << 52)
    want.append([far, 1 << plain_order])
    data = struct.pack("<BBHI", 0, 0, 0, len(body)) + body
    d = decode("hybrid", data, WireLayout("le", 64, "le", 4096), profile="hybrid")
    assert d.pages() == PageSet.from_extents(want)
    assert d.pages().extents() == PageSet.from_extents(want).extents()
    assert not [f for f in d.findings if f.rule == "hybrid.driver.pages.no-duplicate"]


def _messages() -> list[tuple[str, str, bytes]]:
    import struct

    hdr = bytes.fromhex("00000c00000000000000000000000000") + (0x40).to_bytes(8, "little")
    bm = b"\x55\xff\x00\x01" * 300
    rec = b"".join(struct.pack("<Q", (k * 1024) | 12 << 52 | 63 << 58)
                   + struct.pack("<Q", 0x5555555555555555) * 8 for k in range(40))
    return [
        ("v3", "bmap", hdr + len(bm).to_bytes(8, "little") + bm),
        ("hybrid", "hybrid", struct.pack("<BBHI", 0, 0, 0, len(rec)) + rec + b"\x01\x02"),
        ("spec", "pfns", b"".join(struct.pack("<I", p) for p in (7, 9, 8, 7, 1 << 20))),
        ("spec", "stats", struct.pack("<HQ", 4, 1 << 40) * 20),
    ]


def test_streamed_json_is_the_json_and_brief_fields_count_long_lists() -> None:
    """`message decode --json` streams Decoded.iter_json(): byte for byte json.dumps of
    to_json(), in pieces (tiny chunks here, to cross every piece boundary)."""
    import json

    bmap = _messages()[0][2]
    cuts = [("v3", "bmap", [bmap[:40], bmap[40:100], bmap[100:]]),  # header_tail, 2 bitmaps
            ("v3", "bmap", [bmap[:32]] + [bmap[k:k + 64] for k in range(32, len(bmap), 64)])]
    for profile, kind, data in [*_messages(), *cuts]:
        segs = (data if isinstance(data, list) else [data[:32], data[32:]] if kind == "bmap"
                else [data])
        d = decode(kind, segs, WireLayout("le", 64, "le", 4096), profile=profile)
        assert "".join(d.iter_json(chunk=7)) == json.dumps(d.to_json())
        assert "".join(d.iter_json()) == json.dumps(d.to_json())
        brief = d.brief_fields(max_items=16)
        for k, v in d.fields().items():
            assert brief[k] == (f"[{len(v)} items]" if isinstance(v, list) and len(v) > 16
                                else v)
        # what `message decode` prints, the bitmap's hex streamed in pieces
        lines = "".join(f"  {k:12} {v}\n" for k, v in brief.items())
        assert "".join(d.iter_brief_text(16, chunk=5)) == lines
        assert "".join(d.iter_brief_text(16)) == lines


@settings(max_examples=100, deadline=None)
@given(records=st.lists(st.tuples(st.integers(0, 3000), st.sampled_from([12, 12, 13, 14]),
                                  st.integers(0, 63),
                                  st.lists(st.sampled_from([0x5555555555555555, 0, 1 << 63,
                                                            (1 << 64) - 1, 0xF0F0F0F0F0F0F0F1]),
                                           min_size=8, max_size=8)),
                        min_size=1, max_size=10))
def test_hybrid_overlapping_records_count_frames_named_twice(
        records: list[tuple[int, int, int, list[int]]]) -> None:
    """Records that may overlap (any start, plain or bitmap, order 0-2): the pages are the
    union of what a bit-by-bit reading names, and the no-duplicate finding says how many
    frames are named more than once (every record's frames counted, less the set) -- whether
    the bitmap records went through bit blocks or not."""
    import struct

    body = b""
    named: list[int] = []
    for start, shift, blen, wvals in records:
        unit = 1 << (shift - 12)
        start -= start % unit  # aligned: misalignment is another finding
        body += struct.pack("<Q", start | shift << 52 | blen << 58)
        body += b"".join(struct.pack("<Q", w) for w in wvals[:(blen + 7) // 8])
        bits = [start + bit * unit for bit in range(blen * 8)
                if wvals[bit // 64] >> (bit % 64) & 1] if blen else [start]
        named += [b + i for b in bits for i in range(unit)]
    data = struct.pack("<BBHI", 0, 0, 0, len(body)) + body
    d = decode("hybrid", data, WireLayout("le", 64, "le", 4096), profile="hybrid")
    want = PageSet.from_frames(np.array(named, dtype=np.uint64))
    assert d.pages() == want
    dup = [f for f in d.findings if f.rule == "hybrid.driver.pages.no-duplicate"]
    twice = len(named) - len(want)
    assert bool(dup) == bool(twice)
    if dup and any(blen for _, _, blen, _ in records):
        assert dup[0].message.startswith(f"{twice} frame(s) named more than once")


@settings(max_examples=100, deadline=None)
@given(bitmap=st.binary(min_size=8, max_size=64), page_shift=st.sampled_from([13, 14, 16, 18]),
       start=st.integers(0, 1000))
def test_v3_large_page_bits_dilate_to_the_pages_they_name(bitmap: bytes, page_shift: int,
                                                          start: int) -> None:
    """Inflate bits on pages of 2^page_shift bytes: bit n names the frames start_pfn + n ..
    + unit - 1.  The union and the count of pages overlapping an earlier one (a set bit
    within unit - 1 of the previous one) are what a bit-by-bit reading gives."""
    import struct

    unit = 1 << (page_shift - 12)
    start -= start % 64
    bitmap = bitmap[: len(bitmap) // 8 * 8]
    hdr = struct.pack("<HHHHQQQ", 0, page_shift, 0, 0, 0, start, len(bitmap))
    d = decode("bmap", [hdr, bitmap], WireLayout("le", 64, "le", 4096), profile="v3",
               role="inflate")
    pos = [n for n in range(8 * len(bitmap)) if bitmap[n // 8] >> (n % 8) & 1]
    want = PageSet.from_extents([[start + n, unit] for n in pos]) if pos else PageSet()
    assert d.pages() == want
    overlapping = sum(1 for a, b in itertools.pairwise(pos) if b - a < unit)
    dup = [f for f in d.findings if f.rule == "v3.driver.pages.no-duplicate"]
    assert [f.message.split(" ")[0] for f in dup] == ([str(overlapping)] if overlapping else [])


@pytest.mark.parametrize("shape", ["v3 page_shift 16", "hybrid overlapping"])
def test_decoding_worst_shapes_takes_memory_in_proportion_to_the_input(shape: str) -> None:
    """Issue 12's bound (<= 16x the input) on 1 MiB of the shapes that were 296x (v3 bits of
    64 KiB pages: an extent per bit) and 281x (hybrid records that overlap: extents per run)
    -- bench/hostile.py measures the same shapes at 4-7 MiB in a child's peak RSS."""
    import struct
    import tracemalloc

    n = 1 << 20
    if shape.startswith("v3"):
        segs = [struct.pack("<HHHHQQQ", 0, 16, 0, 0, 0, 0, n), b"\x55" * n]
        kind, profile, layout = "bmap", "v3", WireLayout("le", 64, "le", 65536)
    else:
        rec = [struct.pack("<Q", r * 256 | 12 << 52 | 63 << 58)
               + struct.pack("<Q", 0x5555555555555555) * 8 for r in range(n // 72)]
        body = b"".join(rec)
        segs = [struct.pack("<BBHI", 0, 0, 0, len(body)) + body]
        kind, profile, layout = "hybrid", "hybrid", WireLayout()
    size = sum(len(s) for s in segs)
    tracemalloc.start()
    try:
        d = decode(kind, segs, layout, profile=profile)
        pages = d.pages()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pages and any(f.rule.endswith("pages.no-duplicate") for f in d.findings)
    assert peak <= 16 * size, f"{peak / size:.1f}x"
