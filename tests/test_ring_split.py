"""Split ring: byte-exact layouts, builder -> walker round trips, and every refusal."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto.errors import RingError, UsageError
from virtio_balloon_proto.virtqueue.chains import (
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
)
from virtio_balloon_proto.virtqueue.memory import MemoryImage
from virtio_balloon_proto.virtqueue.split_device import SplitQueueDevice
from virtio_balloon_proto.virtqueue.split_driver import SplitQueueDriver
from virtio_balloon_proto.virtqueue.split_ring import compact_layout, legacy_layout, split_structs

BASE = 0x100000
BUF = 0x180000
TABLES = 0x1C0000


def ring(size: int = 8, le: bool = True, start_idx: int = 0):  # type: ignore[no-untyped-def]
    mem = MemoryImage([(BASE, bytes(0x100000))])
    lay = legacy_layout(BASE, size)
    drv = SplitQueueDriver(mem, size, lay.desc, lay.avail, lay.used, le, start_idx=start_idx)
    dev = SplitQueueDevice(mem, size, lay.desc, lay.avail, lay.used, le)
    return mem, drv, dev


def test_desc_bytes_match_c_layout_both_orders() -> None:
    # struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; } written by hand
    v = {"addr": 0x1122334455667788, "len": 0x400, "flags": 3, "next": 5}
    le = bytes.fromhex("88776655443322110004000003000500")
    be = bytes.fromhex("11223344556677880000040000030005")
    assert split_structs(True).virtq_desc.build(v) == le
    assert split_structs(False).virtq_desc.build(v) == be
    assert split_structs(True).virtq_used_elem.build({"id": 1, "len": 2}) == struct.pack(
        "<II", 1, 2
    )
    avail = (
        split_structs(True)
        .virtq_avail(2)
        .build({"flags": 1, "idx": 2, "ring": [3, 4], "used_event": 5})
    )
    assert avail == bytes.fromhex("01000200030004000500")


def test_legacy_layout_aligns_used_to_4096() -> None:
    lay = legacy_layout(0x100000, 128)
    assert (lay.desc, lay.avail, lay.used) == (0x100000, 0x100800, 0x101000)
    lay = compact_layout(0x100001, 4)
    assert (
        lay.desc == 0x100010 and lay.avail == 0x100050 and lay.used == 0x100060
    )  # 0x10005e rounded up to 4


def test_queue_size_must_be_power_of_two() -> None:
    with pytest.raises(UsageError, match="power of 2"):
        legacy_layout(0, 100)


def test_hand_laid_ring_decodes_pfns() -> None:
    """A ring written byte by byte (no builder) decodes to the PFNs that were put there."""
    mem = MemoryImage([(0, bytes(0x10000))])
    pfns = [0x8000, 0x8001, 0x12345]
    mem.write(0x3000, struct.pack("<3I", *pfns))
    mem.write(0x0000 + 16 * 2, struct.pack("<QIHH", 0x3000, 12, 0, 0))  # desc[2]
    mem.write(0x0040, struct.pack("<HHHHHH", 0, 1, 2, 0, 0, 0))  # avail: idx 1, ring[0]=2
    dev = SplitQueueDevice(mem, 4, 0x0, 0x40, 0x1000)
    (chain,) = list(dev.available(0))
    assert chain.head == 2
    assert list(struct.unpack("<3I", chain.out_bytes)) == pfns


def seg_lists() -> st.SearchStrategy[list[tuple[int, bool]]]:
    # (length, writable), readable ones first as 2.7.4.2 requires
    return st.lists(st.tuples(st.integers(1, 64), st.booleans()), min_size=1, max_size=6).map(
        lambda s: sorted(s, key=lambda x: x[1])
    )


@settings(max_examples=60, deadline=None)
@given(
    chains=st.lists(st.tuples(seg_lists(), st.booleans()), min_size=1, max_size=6),
    le=st.booleans(),
    start=st.sampled_from([0, 5, 0xFFFC, 0xFFFF]),
)
def test_builder_walker_round_trip(
    chains: list[tuple[list[tuple[int, bool]], bool]], le: bool, start: int
) -> None:
    mem, drv, dev = ring(8, le, start)
    expect = []
    addr = BUF
    for k, (segs, indirect) in enumerate(chains):
        raw = []
        for length, writable in segs:
            data = bytes((addr + i) & 0xFF for i in range(length))
            mem.write(addr, data)
            raw.append((addr, length, writable))
            addr += 0x100
        if drv.num_free == 0:
            break
        if not indirect and len(raw) > drv.num_free:
            indirect = True
        head = drv.add_and_publish(raw, indirect_addr=TABLES + 0x1000 * k if indirect else None)
        expect.append((head, raw))
    got = list(dev.available(start))
    assert [c.head for c in got] == [h for h, _ in expect]
    assert [c.avail_idx for c in got] == [(start + k) & 0xFFFF for k in range(len(expect))]
    for c, (_, raw) in zip(got, expect, strict=True):
        assert [(d.addr, d.len, d.writable) for d in c.buffers] == raw
        for d in c.out_descriptors:
            assert d.data == mem.read(d.addr, d.len)
        assert not c.findings
    assert dev.avail_idx() == (start + len(expect)) & 0xFFFF


def test_used_ring_wraps_16_bits() -> None:
    _mem, drv, dev = ring(4, True, 0xFFFE)
    heads = [drv.add_and_publish([(BUF, 4, False)]) for _ in range(3)]
    u = 0xFFFE
    for h in heads:
        u = dev.push_used(u, h, 7)
    assert u == 1
    got = drv.poll_used()
    assert [(e.used_idx, e.id, e.len) for e in got] == [
        (0xFFFE, heads[0], 7),
        (0xFFFF, heads[1], 7),
        (0, heads[2], 7),
    ]
    assert drv.num_free == 4


def test_loop_is_refused_quickly() -> None:
    _, drv, dev = ring(32768 // 64)
    n = drv.size
    for i in range(n):
        drv.write_desc(i, BUF, 4, VIRTQ_DESC_F_NEXT, (i + 1) % n)  # one big cycle
    drv.write_avail_entry(0, 0)
    drv.set_avail_idx(1)
    t = time.monotonic()
    with pytest.raises(RingError) as ei:
        list(dev.available(0))
    assert time.monotonic() - t < 1.0
    assert ei.value.clause == "spec.driver.ring.no-loop"
    assert f"descriptor {n - 1} (chain head 0)" in str(ei.value)


def test_self_loop_in_indirect_table() -> None:
    _, drv, dev = ring()
    drv.write_desc(0, TABLES, 32, VIRTQ_DESC_F_INDIRECT, 0)
    drv.write_desc(0, BUF, 4, VIRTQ_DESC_F_NEXT, 1, table=TABLES)
    drv.write_desc(1, BUF, 4, VIRTQ_DESC_F_NEXT, 0, table=TABLES)
    with pytest.raises(RingError, match="loop") as ei:
        dev.read_chain(0)
    assert "indirect descriptor 1" in str(ei.value)


@pytest.mark.parametrize(
    ("setup", "clause", "where"),
    [
        ("head", "spec.driver.ring.head-in-range", "avail.ring[0]"),
        ("next", "spec.driver.ring.next-in-range", "descriptor 0 (chain head 0)"),
        ("nested", "spec.driver.ring.indirect-nested", "indirect descriptor 0"),
        ("ind_next", "spec.driver.ring.indirect-with-next", "descriptor 0 (chain head 0)"),
        ("ind_len", "spec.driver.ring.indirect-len", "descriptor 0 (chain head 0)"),
        ("outside", "spec.driver.ring.addr-in-memory", "descriptor 1 (chain head 0)"),
        ("outside_w", "spec.driver.ring.addr-in-memory", "descriptor 0 (chain head 0)"),
        ("ind_outside", "spec.driver.ring.addr-in-memory", "descriptor 0 (chain head 0)"),
        ("ind_next_range", "spec.driver.ring.next-in-range", "indirect descriptor 0"),
        ("jump", "spec.driver.ring.avail-idx-advance", "avail ring"),
    ],
)
def test_refusals_name_descriptor_and_clause(setup: str, clause: str, where: str) -> None:
    _, drv, dev = ring()
    head = 0
    if setup == "head":
        head = 8
    elif setup == "next":
        drv.write_desc(0, BUF, 4, VIRTQ_DESC_F_NEXT, 8)
    elif setup == "nested":
        drv.write_desc(0, TABLES, 16, VIRTQ_DESC_F_INDIRECT, 0)
        drv.write_desc(0, TABLES + 0x100, 16, VIRTQ_DESC_F_INDIRECT, 0, table=TABLES)
    elif setup == "ind_next":
        drv.write_desc(0, TABLES, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1)
    elif setup == "ind_len":
        drv.write_desc(0, TABLES, 24, VIRTQ_DESC_F_INDIRECT, 0)
    elif setup == "outside":
        drv.write_desc(0, BUF, 4, VIRTQ_DESC_F_NEXT, 1)
        drv.write_desc(1, 0x7000_0000, 4, 0, 0)
    elif setup == "outside_w":
        drv.write_desc(0, BASE + 0xFFFFC, 8, VIRTQ_DESC_F_WRITE, 0)  # straddles the end
    elif setup == "ind_outside":
        drv.write_desc(0, 0x9000_0000, 32, VIRTQ_DESC_F_INDIRECT, 0)
    elif setup == "ind_next_range":
        drv.write_desc(0, TABLES, 16, VIRTQ_DESC_F_INDIRECT, 0)
        drv.write_desc(0, BUF, 4, VIRTQ_DESC_F_NEXT, 1, table=TABLES)
    drv.write_avail_entry(0, head)
    drv.set_avail_idx(9 if setup == "jump" else 1)
    with pytest.raises(RingError) as ei:
        list(dev.available(0))
    assert ei.value.clause == clause
    assert where in str(ei.value)


def test_chain_then_indirect_is_walked() -> None:
    """2.7.5.3.2: normal chained descriptors followed by a single INDIRECT descriptor."""
    mem, drv, dev = ring()
    mem.write(BUF, b"abcd")
    drv.write_desc(0, BUF, 2, VIRTQ_DESC_F_NEXT, 1)
    drv.write_desc(1, TABLES, 16, VIRTQ_DESC_F_INDIRECT, 0)
    drv.write_desc(0, BUF + 2, 2, 0, 0, table=TABLES)
    c = dev.read_chain(0)
    assert c.out_bytes == b"abcd"
    assert [d.table for d in c.descriptors] == [None, None, TABLES]


def test_writable_before_readable_is_a_finding_not_an_error() -> None:
    mem, drv, dev = ring()
    mem.write(BUF, b"xy")
    drv.write_desc(0, BUF + 0x10, 4, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)
    drv.write_desc(1, BUF, 2, 0, 0)
    c = dev.read_chain(0)
    assert c.out_bytes == b"xy"
    assert [f.rule for f in c.findings] == ["spec.driver.ring.writable-after-readable"]


def test_indirect_table_longer_than_queue_is_a_finding() -> None:
    _mem, drv, dev = ring(2)
    head = drv.add_and_publish([(BUF, 1, False)] * 3, indirect_addr=TABLES)
    (c,) = list(dev.available(0))
    assert c.head == head and len(c.buffers) == 3
    assert [f.rule for f in c.findings] == ["spec.driver.ring.chain-len"]


def test_chain_byte_budget() -> None:
    _mem, drv, dev = ring()
    dev.max_chain_bytes = 100
    drv.add_and_publish([(BUF, 64, False), (BUF, 64, False)])
    with pytest.raises(RingError, match="exceed 100 bytes"):
        list(dev.available(0))


def test_driver_free_list_exhaustion() -> None:
    _, drv, _ = ring(4)
    drv.add_chain([(BUF, 1, False)] * 4)
    with pytest.raises(UsageError, match="free"):
        drv.add_chain([(BUF, 1, False)])
