"""The conformance adapter ``--device qemu[:OPTIONS]`` against real QEMU 7.2."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtio_balloon_proto.conformance.adapters import open_device
from virtio_balloon_proto.conformance.dut import DeviceUnderTest, Segment, Setup, Unsupported
from virtio_balloon_proto.conformance.qemu_adapter import QemuDevice
from virtio_balloon_proto.conformance.qemu_options import parse_options
from virtio_balloon_proto.conformance.runner import Runner, discover_cases
from virtio_balloon_proto.errors import PeerError, UsageError
from virtio_balloon_proto.profiles import VERSION_1
from virtio_balloon_proto.qemu.device import pfn_array
from virtio_balloon_proto.qemu.process import find_qemu

pytestmark = pytest.mark.qemu

STATS_VQ, DEFLATE_ON_OOM, PAGE_POISON, PAGE_REPORTING = 1 << 1, 1 << 2, 1 << 4, 1 << 5


def _require_qemu() -> None:
    try:
        find_qemu()
    except PeerError as e:
        pytest.fail(str(e))


@pytest.fixture(params=["modern", "legacy"])
def dev(request: pytest.FixtureRequest) -> Iterator[QemuDevice]:
    _require_qemu()
    d = QemuDevice(f"qemu:transport={request.param}")
    yield d
    d.stop()


def _out(data: bytes, addr: int = 0x1234000) -> Segment:
    return Segment(addr=addr, length=len(data), writable=False, data=data)


def test_options_and_protocol() -> None:
    assert parse_options("qemu:transport=legacy,deflate-on-oom=on") == {
        "transport": "legacy",
        "deflate-on-oom": "on",
    }
    d = QemuDevice("qemu:transport=legacy,deflate-on-oom=on")
    assert isinstance(d, DeviceUnderTest)
    assert d.name == "qemu:transport=legacy,deflate-on-oom=on"
    with pytest.raises(UsageError, match="unknown qemu option"):
        QemuDevice("qemu:bogus=1")
    with pytest.raises(UsageError, match="modern, legacy, mmio, mmio-legacy"):
        QemuDevice("qemu:transport=ccw")
    with pytest.raises(UsageError, match="on or off"):
        QemuDevice("qemu:page-poison=maybe")
    # the runner's factory passes hyphenated keys as keyword arguments
    assert isinstance(open_device("qemu:free-page-reporting=on"), QemuDevice)


def test_unsupported_profiles_and_options() -> None:
    d = QemuDevice()
    for profile in ("v3", "hybrid"):
        with pytest.raises(Unsupported, match="spec profile"):
            d.start(Setup(profile=profile, driver_features=STATS_VQ))
    with pytest.raises(Unsupported, match="little-endian"):
        d.start(Setup(profile="spec", driver_features=STATS_VQ, endian="be"))
    with pytest.raises(Unsupported, match="no option 'must-tell-host'"):
        d.start(Setup(profile="spec", driver_features=1, device_options={"must-tell-host": True}))


def test_inflate_deflate_observe(dev: QemuDevice) -> None:
    want = VERSION_1 | STATS_VQ | DEFLATE_ON_OOM
    neg = dev.start(Setup(profile="spec", driver_features=want))
    assert neg.queues == {"inflate": 0, "deflate": 1, "stats": 2}
    expected = want if dev.transport == "modern" else want & 0xFFFFFFFF
    assert neg.accepted == expected  # deflate-on-oom=on was switched on for DEFLATE_ON_OOM
    assert neg.config_size == 16  # QEMU offers PAGE_POISON by default
    used = dev.avail("inflate", 41, [_out(pfn_array(range(0x4000, 0x4020)))])
    assert [(u.id, u.length, u.written) for u in used] == [(41, 0, b"")]
    used = dev.avail("deflate", 7, [_out(pfn_array(range(0x4008, 0x4010)))])
    assert [(u.id, u.length) for u in used] == [(7, 0)]
    obs = dev.observe()
    assert obs["balloon"] == [[0x4000, 8], [0x4010, 0x10]]
    assert obs["num_pages"] == 0 and obs["actual"] == 0 and obs["stats"] == {}
    dev.config_write(4, struct.pack("<I", 24))
    assert dev.config_read(4, 4) == struct.pack("<I", 24)
    assert dev.host_request("set-target", {"num_pages": 1000}) == []
    assert dev.observe()["num_pages"] == 1000 and dev.observe()["actual"] == 24


def test_trailing_bytes_and_bad_pfns(dev: QemuDevice) -> None:
    dev.start(Setup(profile="spec", driver_features=VERSION_1))
    data = pfn_array([0x4000, 0xFEE00, 0x4001])[:10]  # 2.5 PFNs
    used = dev.avail("inflate", 3, [_out(data)])
    assert [(u.id, u.length) for u in used] == [(3, 0)]
    assert dev.observe()["balloon"] == [[0x4000, 1]]  # LAPIC page skipped, tail ignored


def test_stats_poll(dev: QemuDevice) -> None:
    dev.start(Setup(profile="spec", driver_features=VERSION_1 | STATS_VQ))
    buf = struct.pack("<HQ", 4, 123456) + struct.pack("<HQ", 5, 999999)
    assert dev.avail("stats", 0, [_out(buf)]) == []  # QEMU keeps the stats buffer
    assert dev.observe()["stats"] == {4: 123456, 5: 999999}
    used = dev.host_request("stats-poll", {})
    assert [(u.id, u.length) for u in used] == [(0, 0)]
    assert dev.host_request("stats-poll", {}) == []  # nothing outstanding any more


def test_reporting_observed_as_discard() -> None:
    _require_qemu()
    dev = QemuDevice("qemu:transport=modern")
    try:
        neg = dev.start(
            Setup(profile="spec", driver_features=VERSION_1 | STATS_VQ | PAGE_REPORTING)
        )
        assert neg.queues["reporting"] == 3
        seg = Segment(addr=0x6000000, length=4 << 20, writable=True)
        used = dev.avail("reporting", 5, [seg])
        assert [(u.id, u.length) for u in used] == [(5, 0)]
        assert dev.observe()["reported"] == [[0x6000, 1024]]
        with pytest.raises(Unsupported, match="free page queue"):  # FREE_PAGE_HINT not negotiated
            dev.host_request("hint-start", {"cmd_id": 0x80000000})
    finally:
        dev.stop()


def test_missing_role_is_unsupported(dev: QemuDevice) -> None:
    dev.start(Setup(profile="spec", driver_features=VERSION_1))
    with pytest.raises(Unsupported, match="free_page"):
        dev.avail("free_page", 0, [_out(b"\0\0\0\x80")])
    with pytest.raises(Unsupported):
        dev.avail("misc", 0, [_out(b"\0" * 16)])


def test_stop_kills_qemu(dev: QemuDevice) -> None:
    dev.start(Setup(profile="spec", driver_features=VERSION_1))
    assert dev.session is not None
    proc = dev.session.proc
    assert proc is not None and proc.alive()
    dev.stop()
    assert not proc.alive()
    with pytest.raises(PeerError, match="before start"):
        dev.observe()


def test_case_naming_the_adapter_window_is_unsupported(dev: QemuDevice) -> None:
    dev.start(Setup(profile="spec", driver_features=VERSION_1))
    assert dev.session is not None
    window_pfn = dev.session.window_base >> 12
    with pytest.raises(Unsupported, match="ring window"):
        dev.avail("inflate", 0, [_out(pfn_array([0x4000, window_pfn + 5]))])
    # the rings are intact: the next buffer still goes through
    assert [u.id for u in dev.avail("inflate", 1, [_out(pfn_array([0x4000]))])] == [1]


def test_pfn_past_case_ram_is_outside_qemu_ram(dev: QemuDevice) -> None:
    dev.start(Setup(profile="spec", driver_features=VERSION_1, memory_size=64 << 20))
    used = dev.avail("inflate", 0, [_out(pfn_array([0x3FFF, 0x4000]))])  # last page, first past
    assert [u.length for u in used] == [0]
    assert dev.observe()["balloon"] == [[0x3FFF, 1]]


@pytest.mark.parametrize("transport", ["modern", "legacy"])
def test_spec_corpus_passes_with_known_failures(transport: str) -> None:
    _require_qemu()
    repo = Path(__file__).resolve().parent.parent
    res = subprocess.run(
        [
            sys.executable, "-c", "from virtio_balloon_proto.cli import main; main()",
            "conform", "run",
            "--device", f"qemu:transport={transport}", "--profile", "spec",
            "--known-failures", str(repo / "conformance" / "known-failures" / "qemu-7.2.toml"),
        ],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "HYPOTHESIS_NO_PLUGINS": "1"},
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "CONFORMANCE PASSED" in res.stdout and " pass" in res.stdout


def test_guest_ram_in_several_regions_runs_on_q35_dimms() -> None:
    """RAM at 0, 4 GiB and 8 TiB (spec/inflate-high-ram-le): the regions past the first become
    pc-dimms (phys-bits raised past TCG's 40), so the case runs instead of being unsupported."""
    _require_qemu()
    repo = Path(__file__).resolve().parent.parent
    (case,) = discover_cases(
        repo / "conformance" / "traces", case_globs=["spec/inflate-high-ram-le"]
    )
    assert len(case.setup.memory_regions) == 3
    with pytest.raises(Unsupported, match="dimms=on"):
        QemuDevice("qemu").start(case.setup)
    runner = Runner("qemu:dimms=on")
    try:
        result = runner.run_case(case)
    finally:
        runner.close()
    assert result.outcome() == "pass", result.details_text()
    mmio = QemuDevice("qemu:transport=mmio,dimms=on")
    with pytest.raises(Unsupported, match="several regions"):
        mmio.start(case.setup)


@pytest.mark.parametrize("poison", [0xAAAAAAAA, 0])
def test_a_reported_page_inflated_later_is_not_a_discarded_report(poison: int) -> None:
    """Found by `vbproto fuzz` against 7.2 (legacy campaign, seed 102 sequence 617): the
    adapter read reported ranges back at each observation, so a page reported (QEMU keeps it:
    poison_val is not 0) and inflated afterwards (QEMU discards it) read zero and was judged a
    discarded report -- a false spec.device.reporting.poison-only.  Discards are now judged
    when QEMU uses the report."""
    from virtio_balloon_proto.conformance.fuzz import Campaign, Env, Program
    from virtio_balloon_proto.conformance.fuzz.program import Avail

    feats = frozenset({"PAGE_POISON", "PAGE_REPORTING"})
    page = 0x4AC3
    ops = (Avail("reporting", (Segment(page << 12, 4096, True),), "report"),
           Avail("inflate", (Segment(0x1066000, 4, False, struct.pack("<I", page)),), "pfns"))
    c = Campaign("qemu", timeout=30)
    try:
        res = c.judge(Program(Env(feats, feats, memory=((0, 128 << 20),), poison_val=poison),
                              ops))
    finally:
        c.close()
    assert res.outcome() == "pass", res.details_text()
    # QEMU 7.2 keeps a reported page while poison_val is set, discards it otherwise
    assert res.behaviour["reporting.discard"] == ["keeps" if poison else "discards"]
