"""Scaled bit blocks (a bit per unit of 2^k frames) are the same set as the extents form.

Differential: every scaled set is built from units drawn at random, and its reference is
built independently as extents, ``[phase + u * 2^k, 2^k]`` per unit, through
``PageSet.from_extents`` (no block code).  Both must be equal, hash, count, print, iterate
and answer membership alike, and union / intersection / difference / symmetric difference
between any two forms (scaled at the same or another scale, unscaled bit blocks, extents
that cut units) must be the set the extents algebra gives.  Then the decoders that build
such sets (v3 misc bitmaps of pages above 4 KiB, hybrid records of order >= 1) against a
bit-by-bit reading, and issue 12's memory bound on those shapes.
"""

from __future__ import annotations

import itertools
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto import bitblocks as bb
from virtio_balloon_proto import scaledblocks as sb
from virtio_balloon_proto.codecs.buffers import Segment
from virtio_balloon_proto.codecs.decode import decode_pages
from virtio_balloon_proto.pageset import MAX_FRAME, PageSet
from virtio_balloon_proto.wire import WireLayout, decode

_SHIFTS = st.sampled_from([1, 1, 2, 3, 5, 12, 40])


@st.composite
def scaled_sets(draw: st.DrawFn, shift: int | None = None, phase: int | None = None
                ) -> tuple[PageSet, PageSet]:
    """(scaled form, extents reference) of one set: units from a few patterns, plus whole
    units as extents (inside or beside the blocks' spans) and a free extent below them."""
    k = draw(_SHIFTS) if shift is None else shift
    p = draw(st.integers(0, (1 << k) - 1)) if phase is None else phase
    top_unit = (MAX_FRAME - p - ((1 << k) - 1)) >> k  # the last whole unit in frame space
    base = draw(st.sampled_from([0, 3, 509, 1 << 20, max(0, (top_unit >> 9 << 9) - 2048)]))
    nbytes = draw(st.integers(1, 160))
    pattern = draw(st.sampled_from([0x55, 0xAA, 0x3C, 0x01, 0x80, 0xFF, None]))
    raw = (np.full(nbytes, pattern, dtype=np.uint8) if pattern is not None else
           np.frombuffer(draw(st.binary(min_size=nbytes, max_size=nbytes)), dtype=np.uint8))
    units = np.flatnonzero(np.unpackbits(raw, bitorder="little")).astype(np.uint64)
    units += np.uint64(base)
    units = units[units <= np.uint64(top_unit)]
    # whole-unit extents (in units): they may fall inside the blocks' spans
    ue = draw(st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 40)), max_size=4))
    extra = [(base + a, n) for a, n in ue if base + a + n - 1 <= top_unit]
    ref_ext = [[p + (int(u) << k), 1 << k] for u in units.tolist()]
    ref_ext += [[p + (a << k), n << k] for a, n in extra]
    free: list[list[int]] = []
    lo_frame = p + ((base >> 9 << 9) << k)  # the first span's first frame
    if lo_frame > 10 and draw(st.booleans()):
        a = draw(st.integers(0, lo_frame - 2))
        free = [[a, draw(st.integers(1, lo_frame - 1 - a))]]  # ends below every span
    ref = PageSet.from_extents(ref_ext + free)
    if units.size == 0:
        return ref, ref
    # the scaled form: the units' blocks (plus maybe a neighbour) as bits, the rest extents
    blocks = sorted({int(b) for b in (units >> np.uint64(9)).tolist()})
    if draw(st.booleans()) and ((blocks[-1] + 2) << (9 + k)) + p - 1 <= MAX_FRAME:
        blocks.append(blocks[-1] + 1)
    universe = np.array(blocks, dtype=np.uint64)
    es, el = ref.starts, ref.lasts
    got = sb.spread(es, el, None, universe, k, p)
    assert got is not None  # every extent inside a span covers whole units
    es, el, rows = got
    out = PageSet._trusted(es, el)
    out._blk = bb.make(universe, rows, k, p)
    assert out._blk is not None and out._blk.shift == k and sb.fits(out._blk)
    return out, ref


@st.composite
def plain_sets(draw: st.DrawFn) -> PageSet:
    """Extents that may cut units anywhere (the fallback path of set algebra)."""
    base = draw(st.sampled_from([0, 5, 509, 1 << 20, 1 << 30, MAX_FRAME - 5000]))
    ext = draw(st.lists(st.tuples(st.integers(0, 40000), st.integers(1, 700)), max_size=8))
    return PageSet.from_extents([[base + a, min(n, MAX_FRAME - base - a + 1)] for a, n in ext
                                 if base + a <= MAX_FRAME])


def same(a: PageSet, b: PageSet) -> None:
    assert a == b and b == a
    assert hash(a) == hash(b)
    assert a.extents() == b.extents()
    # (iter(): list() would take len() -- the frame count -- as a size hint)
    assert list(iter(a)) == list(iter(b)) and a.head(3) == b.head(3)
    assert a.to_text() == b.to_text()
    assert "".join(a.iter_text(chunk=3)) == b.to_text()
    assert a.page_count() == b.page_count() and bool(a) == bool(b)
    assert a.n_extents == b.n_extents == len(b.extents())
    assert np.array_equal(a.starts, b.starts) and np.array_equal(a.counts, b.counts)
    if a:
        assert (a.min(), a.max()) == (b.min(), b.max())


def probes(ps: PageSet) -> list[int]:
    out = [0, MAX_FRAME]
    for first, n in ps.head(6):
        out += [first - 1, first, first + 1, first + n - 2, first + n - 1, first + n]
    return [f for f in out if 0 <= f <= MAX_FRAME]


@settings(max_examples=200, deadline=None)
@given(x=scaled_sets(), y=st.one_of(scaled_sets(), plain_sets().map(lambda p: (p, p))),
       data=st.data())
def test_scaled_and_extents_forms_agree(x: tuple[PageSet, PageSet],
                                        y: tuple[PageSet, PageSet],
                                        data: st.DataObject) -> None:
    sx, rx = x
    sy, ry = y
    same(sx, rx)
    pr = probes(rx) + probes(ry)
    assert [f in sx for f in pr] == [f in rx for f in pr]
    assert sx.contains_frames(np.array(pr, dtype=np.uint64)).tolist() == [f in rx for f in pr]
    # the same scale as x (the bits path of set algebra), when drawn
    if sx.is_dense and data.draw(st.booleans()):
        assert sx._blk is not None
        sz, rz = data.draw(scaled_sets(sx._blk.shift, sx._blk.phase))
        sy, ry = sz, rz
    for a, b in ((sx, sy), (sx, ry), (rx, sy), (sy, sx)):
        ra = rx if a is sx else ry if a is sy else a
        rb = rx if b is sx else ry if b is sy else b
        same(a | b, ra | rb)
        same(a & b, ra & rb)
        same(a - b, ra - rb)
        same(a ^ b, ra ^ rb)
        assert a.issubset(b) == ra.issubset(rb) and a.isdisjoint(b) == ra.isdisjoint(rb)
    if rx and rx.max() < 1 << 63 and rx.max() - rx.min() < 1 << 16:
        assert sx.to_bitmap(rx.min(), rx.max() - rx.min() + 1) == rx.to_bitmap(
            rx.min(), rx.max() - rx.min() + 1)


@settings(max_examples=100, deadline=None)
@given(x=scaled_sets(), d=scaled_sets())
def test_two_scales_meet_through_the_extents_form(x: tuple[PageSet, PageSet],
                                                  d: tuple[PageSet, PageSet]) -> None:
    """Blocks of two scales (or scaled against unscaled bit blocks) have no common cut:
    the result is still the set the extents give."""
    (sx, rx), (sd, rd) = x, d
    for a, b, ra, rb in ((sx, sd, rx, rd), (sd, sx, rd, rx)):
        same(a | b, ra | rb)
        same(a & b, ra & rb)
        same(a - b, ra - rb)


@settings(max_examples=100, deadline=None)
@given(bits=st.binary(min_size=1, max_size=200), base=st.integers(0, 1 << 30),
       shift=st.integers(1, 51), order=st.sampled_from(["little", "big"]))
def test_from_bitmap_of_large_units_picks_a_form_and_keeps_the_set(
        bits: bytes, base: int, shift: int, order: str) -> None:
    """``from_bitmap(unit=2^k)``: bit n is the frames base + n * 2^k .. + 2^k - 1 (any base:
    the phase is base mod 2^k), whichever form holds it."""
    raw = bits.ljust(-(-len(bits) // 8) * 8, b"\0")
    ps = PageSet.from_bitmap(raw, base, 64, order, 1 << shift)  # type: ignore[arg-type]
    le = np.frombuffer(raw, dtype=np.uint8)
    if order == "big":
        le = le.reshape(-1, 8)[:, ::-1].reshape(-1)
    pos = np.flatnonzero(np.unpackbits(le, bitorder="little")).tolist()
    same(ps, PageSet.from_extents([[base + (n << shift), 1 << shift] for n in pos]))
    if len(pos) > 8 and all(b - a > 1 for a, b in itertools.pairwise(pos)):
        assert ps.is_dense  # isolated bits: the blocks are the smaller form


def test_from_le_units_refuses_a_frame_past_2_64_and_a_bad_scale() -> None:
    from virtio_balloon_proto.errors import DecodeError, UsageError

    one = np.array([0, 0, 0, 0x80], dtype=np.uint8)  # bit 31
    with pytest.raises(DecodeError, match="beyond 2\\*\\*64-1"):
        PageSet.from_le_units(one, (1 << 60) - 31, 32, 4)
    top = PageSet.from_le_units(one, (1 << 60) - 32, 32, 4)  # the last 16 frames
    assert top.extents() == [[MAX_FRAME - 15, 16]]
    with pytest.raises(UsageError):
        PageSet.from_le_units(one, 0, 32, 2, 4)


# --------------------------------------------------------------------------- decoders


def _v3(page_shift: int, start_pfn: int, bitmap: bytes) -> list[bytes]:
    return [struct.pack("<HHHHQQQ", 0, page_shift, 0, 0, 0, start_pfn, len(bitmap)), bitmap]


@settings(max_examples=100, deadline=None)
@given(bitmap=st.binary(min_size=8, max_size=96), page_shift=st.sampled_from([13, 14, 16, 30]),
       start=st.integers(0, 1 << 40), pattern=st.sampled_from([None, 0x55, 0xAA, 0xFF]))
def test_v3_misc_bits_name_whole_pages(bitmap: bytes, page_shift: int, start: int,
                                       pattern: int | None) -> None:
    """Misc queue (send_unused_pages_info()): bit n is the page of PAGE_SIZE at real PFN
    start_pfn + n, the 2^(page_shift-12) frames from (start_pfn + n) * unit."""
    if pattern is not None:
        bitmap = bytes([pattern]) * (len(bitmap) * 8)
    bitmap = bitmap[: len(bitmap) // 8 * 8]
    unit = 1 << (page_shift - 12)
    d = decode("bmap", _v3(page_shift, start, bitmap), WireLayout("le", 64, "le", 4096),
               profile="v3", role="misc")
    pos = [n for n in range(8 * len(bitmap)) if bitmap[n // 8] >> (n % 8) & 1]
    want = PageSet.from_extents([[(start + n) * unit, unit] for n in pos])
    same(d.pages(), want)
    if pattern == 0x55:
        assert d.pages().is_dense
    codec = decode_pages("v3", "misc", [[Segment.out(b"".join(_v3(page_shift, start, bitmap)))]],
                         WireLayout("le", 64, "le", 4096))
    same(codec, want)


def test_v3_misc_past_the_frame_space_is_a_decode_error() -> None:
    from virtio_balloon_proto.errors import DecodeError

    lay = WireLayout("le", 64, "le", 4096)
    # the last 16 KiB page of the frame space, then one past it
    top = decode("bmap", _v3(14, (1 << 62) - 1, b"\x01" + b"\0" * 7), lay, profile="v3",
                 role="misc")
    assert top.pages().extents() == [[MAX_FRAME - 3, 4]]
    with pytest.raises(DecodeError, match="start_pfn \\+ bitmap exceed the 64-bit frame"):
        decode("bmap", _v3(14, 1 << 62, b"\x01" + b"\0" * 7), lay, profile="v3", role="misc")
    # the same start with no bit set names no frame: nothing overflows
    d = decode("bmap", _v3(14, 1 << 62, b"\0" * 8), lay, profile="v3", role="misc")
    assert not d.pages()


@settings(max_examples=150, deadline=None)
@given(records=st.lists(st.tuples(st.integers(0, 5000), st.sampled_from([12, 13, 13, 14, 15,
                                                                          20, 63]),
                                  st.integers(0, 63), st.booleans(),
                                  st.lists(st.sampled_from([0x5555555555555555, 0, 1 << 63,
                                                            (1 << 64) - 1, 0xF0F0F0F0F0F0F0F1,
                                                            0x0123456789ABCDEF]),
                                           min_size=8, max_size=8)),
                        min_size=1, max_size=12))
def test_hybrid_records_of_any_order_and_phase(
        records: list[tuple[int, int, int, bool, list[int]]]) -> None:
    """Records of orders 0..51, aligned or not (misalignment is a finding, the frames are
    still start_pfn + bit * 2^order), overlapping or not: the pages are the union of what a
    bit-by-bit reading names, and the no-duplicate finding counts the frames named twice."""
    body = b""
    named = []
    for start, shift, blen, aligned, wvals in records:
        unit = 1 << (shift - 12)
        if aligned:
            start -= start % unit
        body += struct.pack("<Q", start | shift << 52 | blen << 58)
        body += b"".join(struct.pack("<Q", w) for w in wvals[:(blen + 7) // 8])
        bits = [start + bit * unit for bit in range(blen * 8)
                if wvals[bit // 64] >> (bit % 64) & 1] if blen else [start]
        named += [[b, unit] for b in bits]
    data = struct.pack("<BBHI", 0, 0, 0, len(body)) + body
    d = decode("hybrid", data, WireLayout(), profile="hybrid")
    want = PageSet.from_extents(named)
    same(d.pages(), want)
    total = sum(n for _, n in named)
    dup = [f for f in d.findings if f.rule == "hybrid.driver.pages.no-duplicate"]
    if any(blen for _, _, blen, _, _ in records):
        twice = total - want.page_count()
        assert [f.message.split(" ")[0] for f in dup] == ([str(twice)] if twice else [])


def test_hybrid_alternating_order_1_is_held_as_scaled_blocks() -> None:
    rec = b"".join(struct.pack("<Q", r * 2048 | 13 << 52 | 63 << 58)
                   + struct.pack("<Q", 0x5555555555555555) * 8 for r in range(64))
    d = decode("hybrid", struct.pack("<BBHI", 0, 0, 0, len(rec)) + rec, WireLayout(),
               profile="hybrid")
    ps = d.pages()
    assert ps.is_dense and ps._blk is not None and ps._blk.shift == 1
    assert ps.page_count() == 64 * 252 * 2 and ps.n_extents == 64 * 252
    assert ps.head(2) == [(0, 2), (4, 2)] and 4 in ps and 5 in ps and 6 not in ps


@pytest.mark.parametrize(("odd_start", "odd_shift", "scale"), [(1, 13, (0, 0)), (0, 12, (0, 0)),
                                                             (0, 14, (1, 0))])
def test_hybrid_records_of_two_scales_are_one_set_of_blocks(
        odd_start: int, odd_shift: int, scale: tuple[int, int]) -> None:
    """Order-1 records at phases 0 and 1, orders 0 and 1, orders 1 and 2: one scale holds
    them all (bits widened 2 or 4 units), not blocks of one and extents of the other."""
    body, named = b"", []
    for r in range(40):
        start, shift = (r * 4096 + odd_start, odd_shift) if r % 2 else (r * 4096, 13)
        body += struct.pack("<Q", start | shift << 52 | 63 << 58)
        body += struct.pack("<Q", 0x5555555555555555) * 8
        unit = 1 << (shift - 12)
        named += [[start + bit * unit, unit] for bit in range(0, 504, 2)]
    d = decode("hybrid", struct.pack("<BBHI", 0, 0, 0, len(body)) + body, WireLayout(),
               profile="hybrid")
    ps = d.pages()
    assert ps.is_dense and ps._blk is not None and (ps._blk.shift, ps._blk.phase) == scale
    same(ps, PageSet.from_extents(named))
    assert not [f for f in d.findings if f.rule == "hybrid.driver.pages.no-duplicate"]


@pytest.mark.parametrize("shape", ["v3 misc page_shift 14", "hybrid order 1",
                                   "hybrid overlapping order 3"])
def test_decoding_scaled_shapes_takes_memory_in_proportion_to_the_input(shape: str) -> None:
    """Issue 12's bound (<= 16x the input) on 1 MiB of the shapes that were 176x and 257x
    (bench/hostile.py measures them at 4-7 MiB in a child's peak RSS)."""
    import tracemalloc

    n = 1 << 20
    if shape.startswith("v3"):
        segs = _v3(14, 0, b"\x55" * n)
        kind, profile, layout, role = "bmap", "v3", WireLayout("le", 64, "le", 16384), "misc"
    else:
        stride, shift = (2048, 13) if shape == "hybrid order 1" else (64, 15)
        body = b"".join(struct.pack("<Q", r * stride | shift << 52 | 63 << 58)
                        + struct.pack("<Q", 0x5555555555555555) * 8 for r in range(n // 72))
        segs = [struct.pack("<BBHI", 0, 0, 0, len(body)) + body]
        kind, profile, layout, role = "hybrid", "hybrid", WireLayout(), "inflate"
    size = sum(len(s) for s in segs)
    tracemalloc.start()
    try:
        d = decode(kind, segs, layout, profile=profile, role=role)
        pages = d.pages()
        count = pages.page_count()
        runs = sum(int(s.size) for s, _ in pages._iter_runs())  # what the text is printed from
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pages.is_dense and count and runs == pages.n_extents
    assert peak <= 16 * size, f"{peak / size:.1f}x"


@pytest.mark.parametrize("seed", [1, 2])
def test_block_counts_across_count_chunks(seed: int) -> None:
    """run_count/popcount work COUNT_CHUNK blocks at a time: runs that cross a block edge at
    a chunk edge, gaps between blocks, against the unpacked bits."""
    rng = np.random.default_rng(seed)
    n = 2 * bb.COUNT_CHUNK + 7
    idx = np.cumsum(rng.choice([1, 1, 1, 2], size=n)).astype(np.uint64)
    rows = rng.choice(np.array([0x00, 0xFF, 0x55, 0x80, 0x01], dtype=np.uint8), size=(n, 64))
    rows[:, -1] |= 0x80  # bit 511 set: a run reaching the next block
    rows[:, 0] |= 0x01
    b = bb.make(idx, rows)
    assert b is not None
    bits = np.unpackbits(rows, axis=1, bitorder="little").astype(np.int8)
    frames = (idx[:, None] * np.uint64(512) + np.arange(512, dtype=np.uint64))[bits == 1]
    ref = PageSet.from_frames(frames)
    assert bb.popcount(b) == ref.page_count()
    assert bb.run_count(b) == ref.n_extents
    assert bb.merged_run_count(xa_empty(), xa_empty(), b) == ref.n_extents


def xa_empty() -> np.ndarray:  # type: ignore[type-arg]
    return np.zeros(0, dtype=np.uint64)
