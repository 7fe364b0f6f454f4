"""Packed ring: builder -> walker round trips with wrap counters, indirect tables, refusals."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto.errors import RingError
from virtio_balloon_proto.virtqueue.chains import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT
from virtio_balloon_proto.virtqueue.memory import MemoryImage
from virtio_balloon_proto.virtqueue.packed_device import PackedQueueDevice
from virtio_balloon_proto.virtqueue.packed_driver import PackedQueueDriver
from virtio_balloon_proto.virtqueue.packed_ring import (
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_USED,
    EventSuppress,
    avail_flags,
    packed_structs,
)

DESC = 0x100000
BUF = 0x180000
TABLES = 0x1C0000


def ring(size: int = 4, le: bool = True):  # type: ignore[no-untyped-def]
    mem = MemoryImage([(DESC, bytes(0x100000))])
    return (
        mem,
        PackedQueueDriver(mem, size, DESC, le),
        PackedQueueDevice(mem, size, DESC, None, None, le),
    )


def test_pvirtq_desc_bytes_match_c_layout() -> None:
    # struct pvirtq_desc { le64 addr; le32 len; le16 id; le16 flags; }
    raw = packed_structs(True).pvirtq_desc.build(
        {"addr": 0x1000, "len": 16, "id": 7, "flags": VIRTQ_DESC_F_AVAIL | 1}
    )
    assert raw == struct.pack("<QIHH", 0x1000, 16, 7, 0x81)
    assert VIRTQ_DESC_F_AVAIL == 0x80 and VIRTQ_DESC_F_USED == 0x8000


def test_event_suppress_off_wrap() -> None:
    e = EventSuppress.parse(struct.pack("<HH", 0x8000 | 5, 2))
    assert (e.off, e.wrap, e.flags, e.reserved) == (5, 1, 2, 0)
    assert e.build() == struct.pack("<HH", 0x8005, 2)


@settings(max_examples=40, deadline=None)
@given(
    rounds=st.lists(
        st.lists(st.tuples(st.integers(1, 3), st.booleans()), min_size=1, max_size=3),
        min_size=1,
        max_size=4,
    ),
    le=st.booleans(),
)
def test_round_trip_across_wraps(rounds: list[list[tuple[int, bool]]], le: bool) -> None:
    """Several rounds of add -> walk -> use; positions wrap and flip the wrap counter."""
    mem, drv, dev = ring(5, le)
    pos, wrap, used_pos, used_wrap = 0, 1, 0, 1
    addr = BUF
    for batch in rounds:
        expect = []
        for n, indirect in batch:
            segs = []
            for _ in range(n):
                mem.write(addr, addr.to_bytes(8, "little"))
                segs.append((addr, 8, False))
                addr += 0x40
            if not indirect and n > drv.size - sum(drv.chain_lengths.values()):
                indirect = True
            if sum(drv.chain_lengths.values()) + (1 if indirect else n) > drv.size:
                break
            ident = drv.add_chain(segs, indirect_addr=TABLES + (addr - BUF) if indirect else None)
            expect.append((ident, segs))
        got = list(dev.available(pos, wrap))
        assert [c.head for c in got] == [i for i, _ in expect]
        for c, (_, segs) in zip(got, expect, strict=True):
            assert [(d.addr, d.len, d.writable) for d in c.buffers] == segs
            assert c.out_bytes == b"".join(mem.read(a, 8) for a, _, _ in segs)
        # the device returns them in order; the driver frees them
        for c in got:
            n_ring = drv.chain_lengths[c.head]
            dev.push_used(used_pos, used_wrap, c.head, 0)
            used_pos += n_ring
            if used_pos >= drv.size:
                used_pos -= drv.size
                used_wrap ^= 1
        back = list(dev.used_entries(pos, wrap, drv.chain_lengths))
        assert [u.id for u in back] == [c.head for c in got]
        for c in got:
            drv.release(c.head)
        pos, wrap = drv.position, drv.wrap_counter


def test_chain_that_never_ends_is_refused() -> None:
    _mem, drv, dev = ring(4)
    for p in range(4):
        drv.write_desc(p, BUF, 4, 0, VIRTQ_DESC_F_NEXT | avail_flags(1))
    with pytest.raises(RingError) as ei:
        list(dev.available(0, 1))
    assert ei.value.clause == "spec.driver.packed.chain-len"
    assert "packed descriptor 3" in str(ei.value)


def test_nested_indirect_is_refused() -> None:
    _mem, drv, dev = ring()
    drv.write_desc(0, TABLES, 16, 0, VIRTQ_DESC_F_INDIRECT | avail_flags(1))
    drv.write_desc(0, TABLES, 16, 0, VIRTQ_DESC_F_INDIRECT, table=TABLES)
    with pytest.raises(RingError) as ei:
        list(dev.available(0, 1))
    assert ei.value.clause == "spec.driver.packed.indirect-nested"


def test_indirect_with_next_is_refused() -> None:
    _mem, drv, dev = ring()
    drv.write_desc(0, TABLES, 16, 0, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT | avail_flags(1))
    with pytest.raises(RingError, match="INDIRECT and NEXT"):
        list(dev.available(0, 1))


def test_outside_memory_is_refused() -> None:
    _mem, drv, dev = ring()
    drv.add_chain([(0x5000_0000, 4, False)])
    with pytest.raises(RingError) as ei:
        list(dev.available(0, 1))
    assert ei.value.clause == "spec.driver.ring.addr-in-memory"
    assert "packed descriptor 0" in str(ei.value)


def test_stops_at_unavailable_descriptor() -> None:
    _mem, drv, dev = ring()
    drv.add_chain([(BUF, 4, False)])
    assert len(list(dev.available(0, 1))) == 1
    assert list(dev.available(0, 0)) == []  # wrong wrap counter: nothing is available
