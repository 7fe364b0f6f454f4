"""Round trips of every message kind, in every byte order, word size and word order.

Three properties per kind (issue 2, item 9):
* decode(encode(m)) == m for every message the strategies make (canonical messages);
* encode(decode(b).message) == b for canonical bytes;
* encode(decode(b).message) == b for *arbitrary* bytes wherever decode succeeds -- the wire
  layer is lossless, trailing partial elements included.
Plus: ``st.from_type`` works for every exported type (the hypothesis entry point is active).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtio_balloon_proto import strategies as vbst
from virtio_balloon_proto.errors import DecodeError
from virtio_balloon_proto.findings import NOTES
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.wire import KINDS, WireLayout, decode, encode, encode_segments
from virtio_balloon_proto.wire.messages import (
    KIND_PROFILES,
    BitmapMessage,
    ConfigSpace,
    HintCommand,
    HybridMessage,
    PfnArray,
    RequestHeader,
    Stat,
    StatsMessage,
)

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: all 16 layouts that change bytes: header order x word size x word order (page size apart)
LAYOUTS = [
    WireLayout(e, w, o) for e in ("le", "be") for w in (32, 64) for o in ("le", "be")
]


def _ids(lay: WireLayout) -> str:
    return f"{lay.endian}-w{lay.word_size}{lay.word_order}"


def _profile(kind: str) -> str:
    return KIND_PROFILES[kind][0]


def _roles(kind: str) -> tuple[str, ...]:
    # v3 bitmaps and hybrid records mean different pages per role; the bytes must not care
    return ("inflate", "misc") if kind in ("bmap", "hybrid") else ("inflate",)


#: word size and word order change the bytes of v3 bitmaps only; every kind gets both orders
CASES = [("bmap", lay) for lay in LAYOUTS] + [
    (k, WireLayout(e)) for k in KINDS if k != "bmap" for e in ("le", "be")
]


@pytest.mark.parametrize(("kind", "layout"), CASES, ids=[f"{k}-{_ids(v)}" for k, v in CASES])
@FAST
@given(data=st.data())
def test_decode_encode_is_identity_on_canonical_messages(
    kind: str, layout: WireLayout, data: st.DataObject
) -> None:
    # the page size changes only findings and the page mapping, never the bytes
    layout = WireLayout(layout.endian, layout.word_size, layout.word_order,
                        data.draw(st.sampled_from([4096, 16384, 65536])))
    m = data.draw(vbst.messages(kind, layout))
    for role in _roles(kind):
        segs = encode_segments(m, layout)
        d = decode(kind, segs, layout, profile=_profile(kind), role=role)
        assert d.message == m
        assert d.kind == kind
        # and the joined bytes read back to the same bytes (segmentation may differ)
        b = encode(m, layout)
        d2 = decode(kind, b, layout, profile=_profile(kind), role=role)
        assert encode(d2.message, layout) == b


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(data=st.data())
def test_encode_decode_is_identity_on_canonical_bytes(kind: str, data: st.DataObject) -> None:
    layout = data.draw(vbst.wire_layouts())
    b = data.draw(vbst.canonical_bytes(kind, layout))
    d = decode(kind, b, layout, profile=_profile(kind))
    assert encode(d.message, layout) == b
    assert encode_segments(d.message, layout) == [b] or kind == "bmap"


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=100, deadline=None)
@given(layout=vbst.wire_layouts(), raw=st.binary(max_size=160), role=st.sampled_from(["inflate",
                                                                                     "misc"]))
def test_arbitrary_bytes_are_lossless_wherever_decode_succeeds(
    kind: str, layout: WireLayout, raw: bytes, role: str
) -> None:
    try:
        d = decode(kind, raw, layout, profile=_profile(kind), role=role)
    except DecodeError as exc:
        # structural impossibility: the error must say where
        assert exc.field is not None or exc.offset is not None
        return
    assert encode(d.message, layout) == raw
    # decoding is deterministic and its findings name catalog-style dotted ids, or a known
    # note (findings.NOTES: names something no side breaks a rule by)
    again = decode(kind, raw, layout, profile=_profile(kind), role=role)
    assert again.message == d.message
    assert again.findings == d.findings
    for f in d.findings:
        assert f.rule.count(".") >= 3 or f.rule in NOTES, f.rule


@pytest.mark.parametrize("layout", LAYOUTS, ids=_ids)
@FAST
@given(
    hdr=st.binary(min_size=32, max_size=32),
    bufs=st.lists(st.binary(max_size=40), max_size=5),
    split=st.integers(0, 32),
)
def test_bmap_segments_keep_their_bytes(
    layout: WireLayout, hdr: bytes, bufs: list[bytes], split: int
) -> None:
    """A header split over two descriptors, then several bitmap descriptors: every byte
    comes back, and the bitmap buffers after the header's descriptor keep their boundaries."""
    segs = [hdr[:split], hdr[split:], *bufs] if split else [hdr, *bufs]
    try:
        d = decode("bmap", segs, layout, profile="v3")
    except DecodeError as exc:
        assert exc.field in ("page_shift", "start_pfn")
        return
    assert encode(d.message, layout) == b"".join(segs)
    assert isinstance(d.message, BitmapMessage)
    assert list(d.message.bitmap) == bufs


# --- st.from_type through the entry point --------------------------------------------------------
TYPES: list[type[Any]] = [
    PfnArray, BitmapMessage, RequestHeader, HybridMessage, StatsMessage, ConfigSpace,
    HintCommand, WireLayout, PageSet, Stat,
]


@pytest.mark.parametrize("typ", TYPES, ids=lambda t: t.__name__)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_from_type_yields_instances(typ: type[Any], data: st.DataObject) -> None:
    # no explicit _hypothesis_setup_hook() call: the installed entry point must have run
    value = data.draw(st.from_type(typ))
    assert isinstance(value, typ)


def test_entry_point_is_declared_and_loads_the_hook() -> None:
    from importlib.metadata import entry_points

    eps = [e for e in entry_points(group="hypothesis") if e.value.startswith("virtio_balloon")]
    assert len(eps) == 1
    assert eps[0].load() is vbst._hypothesis_setup_hook


MESSAGE_TYPES: dict[str, type[Any]] = {
    "pfns": PfnArray, "bmap": BitmapMessage, "req": RequestHeader, "stats": StatsMessage,
    "config": ConfigSpace, "hint-cmd": HintCommand,
}


@pytest.mark.parametrize("kind", sorted(MESSAGE_TYPES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_from_type_messages_round_trip(kind: str, data: st.DataObject) -> None:
    m = data.draw(st.from_type(MESSAGE_TYPES[kind]))
    layout = data.draw(st.from_type(WireLayout))
    assert decode(kind, encode_segments(m, layout), layout, profile=_profile(kind)).message == m


@settings(max_examples=40, deadline=None)
@given(m=st.from_type(HybridMessage))
def test_from_type_hybrid_round_trips_in_its_own_byte_order(m: HybridMessage) -> None:
    layout = WireLayout("le" if m._little else "be")
    assert decode("hybrid", encode(m, layout), layout, profile="hybrid").message == m


def test_strategies_reject_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown message kind"):
        vbst.messages("nope")


@settings(max_examples=30, deadline=None)
@given(ps=vbst.page_sets(max_frame=1 << 20))
def test_page_sets_strategy_gives_merged_sets(ps: PageSet) -> None:
    ext = ps.extents()
    assert ext == sorted(ext)
    assert all(b[0] > a[0] + a[1] for a, b in itertools.pairwise(ext))
    assert np.all(ps.to_frames() <= 1 << 20)


# --- pages -> message -> bytes -> pages ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["pfns", "bmap", "hybrid"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_encoding_pages_gives_the_same_pages_back(kind: str, data: st.DataObject) -> None:
    from virtio_balloon_proto.errors import EncodeError
    from virtio_balloon_proto.wire import message_from_json

    layout = data.draw(vbst.wire_layouts(page_size=None if kind == "bmap" else 4096))
    role = data.draw(st.sampled_from(["inflate", "misc"]))
    ps = data.draw(vbst.page_sets(max_frame=8191))
    fpp = layout.frames_per_page
    whole = PageSet.from_starts_counts(
        ps.to_frames() // np.uint64(fpp) * np.uint64(fpp),
        np.full(len(ps), fpp, dtype=np.uint64)) if len(ps) else ps
    try:
        m = message_from_json(kind, {"pages": ps.extents()}, layout, role=role)
    except EncodeError as exc:
        # only a bitmap of a 16/64 KiB guest cannot say a set that is not whole pages
        assert kind == "bmap" and whole != ps and exc.field == "pages"
        return
    d = decode(kind, encode(m, layout), layout, profile=_profile(kind), role=role)
    assert d.pages() == ps
