"""The reference device's plain-PFN path (``_plain_pfns``) changes nothing but speed.

A PFN buffer in one descriptor, each frame named once (and, to inflate, inside one RAM region)
skips decode_buffer and the page sets; every other buffer takes the decoding path.  Both
paths, driven by the same random traffic -- repeats, frames outside RAM or above the byte map,
ragged and empty buffers, chained descriptors, several RAM layouts, both byte orders,
deflates between -- must give the same used answers and leave the same balloon, the same
observe_changes() answers at every step, the same bad pages and violations.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto.codecs import Segment
from virtio_balloon_proto.framemap import MAX_SPAN
from virtio_balloon_proto.models.device import ReferenceDevice
from virtio_balloon_proto.models.interface import Setup
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.profiles import get_profile

MIB = 1 << 20
REGIONS = [(), ((0, 64 * MIB), (128 * MIB, 32 * MIB)), ((0, 32 * MIB), (1 << 32, 16 * MIB))]

frames = st.one_of(
    st.integers(0, 64 * 256),  # in the first region (and the gap of the second layout)
    st.integers(0, (1 << 20) + 4096),  # around the 4 GiB region
    st.sampled_from([MAX_SPAN - 1, MAX_SPAN, 0xFFFFFFFF]),  # at and above the byte map
)
buffers = st.one_of(
    st.lists(frames, max_size=300).map(lambda xs: ("pfns", xs)),
    st.lists(st.integers(32 * 256, 32 * 256 + 600), max_size=256, unique=True)
    .map(lambda xs: ("pfns", xs)),  # the usual buffer: distinct, inside RAM
    st.lists(st.integers(32 * 256, 32 * 256 + 600), min_size=2, max_size=64, unique=True)
    .map(lambda xs: ("chained", xs)),  # the same, over two descriptors
    st.binary(max_size=9).map(lambda b: ("raw", b)),  # empty or ragged
)
#: "deflate-back": deflate the buffer inflated last (leak_balloon of what fill_balloon sent)
ops = st.lists(st.tuples(st.sampled_from(["inflate", "inflate", "deflate", "deflate-back",
                                          "observe"]), buffers), max_size=25)


def _device(endian: str, regions: tuple[tuple[int, int], ...], fast: bool,
            cls: type[ReferenceDevice] = ReferenceDevice) -> ReferenceDevice:
    dev = cls()
    if not fast:
        dev._plain_pfns = lambda segs, in_ram: None  # type: ignore[method-assign]
    prof = get_profile("spec")
    feats = prof.mask(["STATS_VQ", *(["VERSION_1"] if endian == "le" else [])])
    dev.start(Setup("spec", feats, endian, 64, endian, 4096, {}, 256 * MIB, regions))
    return dev


def _state(dev: ReferenceDevice) -> dict[str, Any]:
    s = dev.state
    return {"balloon": s.balloon.extents(), "count": len(s.pages.now),
            "bad": s.bad_pages.value.extents(), "violations": list(s.violations)}


def _segments(kind: str, payload: Any, dt: str) -> list[Segment]:
    data = payload if kind == "raw" else np.array(payload, dtype=np.uint64).astype(dt).tobytes()
    if kind == "chained":
        cut = 4 * (len(payload) // 2)
        return [Segment(0x1066000, cut, False, data[:cut]),
                Segment(0x1067000, len(data) - cut, False, data[cut:])]
    return [Segment(0x1066000, len(data), False, data)]


@settings(max_examples=150, deadline=None)
@given(endian=st.sampled_from(["le", "be"]), regions=st.sampled_from(REGIONS), steps=ops)
def test_fast_path_is_the_decoding_path(endian: str, regions: tuple[tuple[int, int], ...],
                                        steps: list[tuple[str, Any]]) -> None:
    fast, slow = _device(endian, regions, True), _device(endian, regions, False)
    dt = "<u4" if endian == "le" else ">u4"
    last: list[Segment] = []
    for head, (what, (kind, payload)) in enumerate(steps):
        if what == "observe":
            assert fast.observe_changes() == slow.observe_changes()
            continue
        segs = last if what == "deflate-back" else _segments(kind, payload, dt)
        role = "deflate" if what == "deflate-back" else what
        if role == "inflate":
            last = segs
        assert fast.avail(role, head % 128, segs) == slow.avail(role, head % 128, segs)
        assert _state(fast) == _state(slow)
    assert fast.observe_changes() == slow.observe_changes()
    assert fast.observe() == slow.observe()


def _plain(dev: ReferenceDevice, data: bytes, in_ram: bool = True) -> Any:
    return dev._plain_pfns([Segment(0x1066000, len(data), False, data)], in_ram=in_ram)


def test_the_usual_buffer_takes_the_fast_path() -> None:
    """Guards against the test above comparing the decoding path with itself."""
    dev = _device("le", (), True)
    assert _plain(dev, np.arange(5000, 5256, dtype="<u4").tobytes()) is not None
    assert _plain(dev, np.arange(5000, 5002, dtype="<u4").repeat(2).tobytes()) is None
    outside = np.array([5000, 256 * 256], dtype="<u4").tobytes()  # 256 MiB: past RAM
    assert _plain(dev, outside) is None and _plain(dev, outside, in_ram=False) is not None


@pytest.mark.parametrize("profile", ["v3", "hybrid"])
def test_bulk_encodings_never_take_it(profile: str) -> None:
    dev = ReferenceDevice()
    prof = get_profile(profile)
    dev.start(Setup(profile, prof.mask(["STATS_VQ", "PAGE_BITMAP", "VERSION_1"]), "le"))
    assert _plain(dev, np.arange(5000, 5256, dtype="<u4").tobytes()) is None


class _SmallRam(ReferenceDevice):
    """A faulty device (as tests/oracle_devices.py's): RAM judged as the first 1,024 frames."""

    def _in_ram(self, pages: PageSet) -> PageSet:
        return super()._in_ram(pages) & PageSet.from_range(0, 1024)


def test_a_subclass_hook_is_never_skipped() -> None:
    dev = _device("le", (), True, _SmallRam)
    data = np.arange(2000, 2256, dtype="<u4").tobytes()
    assert _plain(dev, data) is None
    dev.avail("inflate", 0, [Segment(0x1066000, len(data), False, data)])
    assert not dev.state.balloon  # its _in_ram dropped them all


def test_a_device_without_journal_observes_the_same() -> None:
    """``ReferenceDevice(journal=False)`` (trace synth's: it never asks for deltas) keeps no
    change log -- a 128 GiB inflate would hold 8 bytes a frame -- and answers
    observe_changes() with its full observe()."""
    with_log = _device("le", (), True)
    without = ReferenceDevice(journal=False)
    prof = get_profile("spec")
    without.start(Setup("spec", prof.mask(["STATS_VQ", "VERSION_1"]), "le", 64, "le", 4096, {},
                        256 * MIB, ()))
    data = np.arange(5000, 5256, dtype="<u4").tobytes()
    for dev in (with_log, without):
        dev.avail("inflate", 0, [Segment(0x1066000, len(data), False, data)])
    assert without.state.pages._changed == []
    assert without.observe_changes() == without.observe() == with_log.observe()
    with pytest.raises(RuntimeError, match="no change log"):
        without.state.pages.changes()
