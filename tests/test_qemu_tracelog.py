"""The ``-D`` trace-log parser, on lines written by hand in QEMU 7.2's formats
(hw/virtio/trace-events), and the small pure helpers of the QEMU peer."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto.errors import TraceError, UsageError
from virtio_balloon_proto.qemu.device import extents_from_trace, pfn_array, to_extents
from virtio_balloon_proto.qemu.firmware import halt_bios
from virtio_balloon_proto.qemu.memory import parse_size, q35_ram_regions
from virtio_balloon_proto.qemu.process import QemuOptions
from virtio_balloon_proto.qemu.tracelog import TraceLog

LOG = """\
virtio_set_status vdev 0x55f3e2c9c600 val 15
virtio_queue_notify vdev 0x55f3e2c9c600 n 0 vq 0x7fdde02b0010
virtqueue_pop vq 0x7fdde02b0010 elem 0x55f3e231c7c0 in_num 0 out_num 1
virtio_balloon_handle_output section name: pc.ram gpa: 0x8000000
virtio_balloon_bad_addr 0xfee00000
virtio_balloon_handle_output section name: pc.ram gpa: 0x8001000
virtqueue_fill vq 0x7fdde02b0010 elem 0x55f3e231c7c0 len 0 idx 0
virtqueue_flush vq 0x7fdde02b0010 count 1
virtio_notify vdev 0x55f3e2c9c600 vq 0x7fdde02b0010
virtio_queue_notify vdev 0x55f3e2c9c600 n 1 vq 0x7fdde02b0090
virtqueue_pop vq 0x7fdde02b0090 elem 0x55f3e231c7c0 in_num 0 out_num 1
virtio_balloon_handle_output section name: pc.ram gpa: 0x8000000
virtqueue_fill vq 0x7fdde02b0090 elem 0x55f3e231c7c0 len 0 idx 0
virtio_balloon_set_config actual: 16 oldactual: 0
virtio_balloon_to_target balloon target: 0xc800000 num_pages: 14336
"""


def test_parse_buffers_and_events(tmp_path: Path) -> None:
    p = tmp_path / "t.log"
    p.write_text(LOG)
    log = TraceLog(p).update()
    assert [b.queue for b in log.buffers] == [0, 1]
    first = log.buffers[0]
    assert first.pfns == [0x8000, 0xFEE00, 0x8001] and first.ok == [True, False, True]
    assert first.processed == [0x8000, 0x8001] and first.bad == [0xFEE00]
    assert first.used_len == 0 and first.line == 3
    assert log.statuses == [15] and log.notifies == [0, 1]
    assert log.set_config == [(16, 0)] and log.to_target == [(0xC800000, 14336)]
    assert extents_from_trace(log, 0, 1) == [(0x8001, 1)]


def test_incremental_update_reads_only_complete_lines(tmp_path: Path) -> None:
    p = tmp_path / "t.log"
    lines = LOG.splitlines(keepends=True)
    p.write_text("".join(lines[:4]) + lines[4][:10])  # a half-written line at the end
    log = TraceLog(p).update()
    assert log.buffers[0].pfns == [0x8000]
    p.write_text("".join(lines))
    log.update()
    assert log.buffers[0].pfns == [0x8000, 0xFEE00, 0x8001] and len(log.buffers) == 2


def test_timestamped_lines(tmp_path: Path) -> None:
    p = tmp_path / "t.log"
    p.write_text(
        "1234@1700000000.000001:virtqueue_pop vq 0x10 elem 0x20 in_num 0 out_num 1\n"
        "1234@1700000000.000002:virtio_balloon_handle_output section name: pc.ram gpa: 0x5000\n"
    )
    assert TraceLog(p).update().buffers[0].pfns == [5]


def test_pfn_line_without_pop_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "t.log"
    p.write_text("virtio_balloon_bad_addr 0x1000\n")
    with pytest.raises(TraceError, match=r"t.log:1"):
        TraceLog(p).update()


def test_missing_log_is_empty(tmp_path: Path) -> None:
    assert TraceLog(tmp_path / "none.log").update().buffers == []


@settings(max_examples=50)
@given(st.sets(st.integers(0, 5000)))
def test_to_extents_covers_exactly(pfns: set[int]) -> None:
    ext = to_extents(sorted(pfns))
    covered = [f + i for f, n in ext for i in range(n)]
    assert covered == sorted(pfns)
    assert all(a[0] + a[1] < b[0] for a, b in itertools.pairwise(ext))  # merged


def test_pfn_array_bytes() -> None:
    assert pfn_array([0x8000, 0x12345678]) == bytes.fromhex("0080000078563412")
    with pytest.raises(UsageError):
        pfn_array([1 << 32])


def test_halt_bios_reset_vector() -> None:
    img = halt_bios()
    assert len(img) == 65536 and img[0xFFF0:0xFFF4] == b"\xfa\xf4\xeb\xfd"
    assert img.count(0) == 65536 - 4


def test_q35_ram_layout() -> None:
    assert q35_ram_regions(256 << 20) == [(0, 256 << 20)]
    assert q35_ram_regions(4 << 30) == [(0, 2 << 30), (4 << 30, 2 << 30)]
    assert parse_size("512M") == 512 << 20 and parse_size("1G") == 1 << 30
    assert parse_size("256") == 256 << 20
    with pytest.raises(UsageError):
        parse_size("lots")


def test_command_line_matches_research() -> None:
    o = QemuOptions(device={"deflate-on-oom": True, "free-page-hint": True})
    cmd = o.command("qemu", Path("/d/q.sock"), Path("/d/m.sock"), Path("/d/t.log"))
    assert cmd[:5] == ["qemu", "-qtest", "unix:/d/q.sock", "-qtest-log", "/dev/null"]
    assert (
        cmd[-1] == "-S" and ["-accel", "tcg"] == cmd[cmd.index("-accel") : cmd.index("-accel") + 2]
    )
    dev = cmd[cmd.index("-device") + 1]
    assert dev == "virtio-balloon-pci,id=balloon0,deflate-on-oom=on,free-page-hint=on,iothread=io0"
    assert "iothread,id=io0" in cmd
    with pytest.raises(UsageError, match="unknown virtio-balloon-pci option"):
        QemuOptions(device={"bogus": True}).device_arg()
