"""virtio-mmio on ``-M microvm`` (``--device qemu:transport=mmio|mmio-legacy``): the balloon
found by microvm's layout, driven over qtest through both register layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtio_balloon_proto.conformance.dut import Segment, Setup
from virtio_balloon_proto.conformance.known_failures import KnownFailures
from virtio_balloon_proto.conformance.qemu_adapter import QemuDevice
from virtio_balloon_proto.conformance.runner import Runner, discover_cases
from virtio_balloon_proto.errors import PeerError
from virtio_balloon_proto.profiles import VERSION_1
from virtio_balloon_proto.qemu.device import QemuBalloon, pfn_array
from virtio_balloon_proto.qemu.mmio import MICROVM_MMIO_BASE, MICROVM_MMIO_STRIDE, MmioTransport
from virtio_balloon_proto.qemu.process import find_qemu

pytestmark = pytest.mark.qemu
REPO = Path(__file__).resolve().parent.parent
KNOWN = REPO / "conformance" / "known-failures"
STATS_VQ = 1 << 1


@pytest.fixture(autouse=True)
def _qemu() -> None:
    try:
        find_qemu()
    except PeerError as e:
        pytest.fail(str(e))


@pytest.mark.parametrize(("kind", "version"), [("mmio", 2), ("mmio-legacy", 1)])
def test_mmio_balloon_inflates_and_answers_config(kind: str, version: int) -> None:
    with QemuBalloon(transport=kind, memory=64 << 20) as b:
        assert isinstance(b.transport, MmioTransport)
        dev = b.transport.dev
        assert dev.version == version and dev.vendor_id == 0x554D4551  # "QEMU"
        assert (dev.base - MICROVM_MMIO_BASE) % MICROVM_MMIO_STRIDE == 0
        _, accepted = b.negotiate()
        assert bool(accepted & VERSION_1) == (version == 2)
        b.setup_queues()
        assert b.transport.get_status() & 0x4  # DRIVER_OK
        b.fill_pages(0x3000, 4, 0xAA)
        used = b.exchange("inflate", [pfn_array(range(0x3000, 0x3004))])
        assert [(u.id, u.len) for u in used] == [(0, 0)]
        assert b.pages_zero(0x3000, 4).all()  # QEMU discarded them
        assert b.isr() & 1 and b.isr() == 0  # InterruptStatus, acknowledged by the read
        b.set_target(b.vm_ram_size - 7 * 4096)
        assert b.num_pages() == 7 and b.isr() & 2  # configuration change interrupt


def test_mmio_adapter_stats_and_window() -> None:
    d = QemuDevice("qemu:transport=mmio")
    try:
        neg = d.start(
            Setup(profile="spec", driver_features=VERSION_1 | STATS_VQ, memory_size=32 << 20)
        )
        assert neg.queues == {"inflate": 0, "deflate": 1, "stats": 2}
        buf = bytes.fromhex("0400") + (77).to_bytes(8, "little")
        seg = Segment(addr=0x1000, length=len(buf), writable=False, data=buf)
        assert d.avail("stats", 3, [seg]) == []
        assert d.observe()["stats"] == {4: 77}
        assert [u.id for u in d.host_request("stats-poll", {})] == [3]
    finally:
        d.stop()


def test_mmio_column_passes_the_spec_corpus() -> None:
    cases = discover_cases(REPO / "conformance" / "traces", case_globs=["spec/*-le"])
    runner = Runner(
        "qemu:transport=mmio",
        known_failures=KnownFailures.load(
            REPO / "conformance" / "known-failures" / "qemu-7.2.toml"
        ),
    )
    try:
        outcomes = {c.id: runner.run_case(c) for c in cases}
    finally:
        runner.close()
    assert not {k: r.details_text() for k, r in outcomes.items() if r.outcome() == "fail"}
    assert sum(r.outcome() == "pass" for r in outcomes.values()) >= 16
