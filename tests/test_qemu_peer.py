"""QEMU 7.2's virtio-balloon device driven for real over qtest (research/qemu-peer.md).

Each test starts its own QEMU (~70 ms).  Without qemu-system-x86_64 these tests FAIL with the
apt-get line that installs it; run ``pytest -m "not qemu"`` to leave them out.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from virtio_balloon_proto.errors import PeerError, UsageError
from virtio_balloon_proto.profiles import VERSION_1, QueueRole
from virtio_balloon_proto.qemu.device import QemuBalloon, pfn_array, stats_buffer, to_extents
from virtio_balloon_proto.qemu.pci import DEVICE_BALLOON_MODERN, DEVICE_BALLOON_TRANSITIONAL
from virtio_balloon_proto.qemu.process import INSTALL_HINT, QemuOptions, QemuProcess, find_qemu

pytestmark = pytest.mark.qemu

STATS_VQ, DEFLATE_ON_OOM, PAGE_POISON, PAGE_REPORTING = 1 << 1, 1 << 2, 1 << 4, 1 << 5


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); look at its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
def open_balloon() -> Iterator[Any]:
    """Factory of started sessions; fails (not skips) when QEMU is missing."""
    started: list[QemuBalloon] = []

    def make(**kw: Any) -> QemuBalloon:
        try:
            find_qemu()
        except PeerError as e:
            pytest.fail(str(e))
        b = QemuBalloon(**kw).start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()
        assert b.pid is not None and _wait_gone(b.pid), "QEMU outlived its session"


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.01)
    return False


# --- enumeration and features --------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "ident"),
    [({}, DEVICE_BALLOON_TRANSITIONAL), ({"disable-legacy": True}, DEVICE_BALLOON_MODERN)],
)
def test_enumeration_finds_balloon_ids(
    open_balloon: Any, device: dict[str, bool], ident: int
) -> None:
    b = open_balloon(device=device)
    assert b.fn.vendor == 0x1AF4 and b.fn.device == ident
    assert (b.fn.bars.get(0) is not None) == (ident == DEVICE_BALLOON_TRANSITIONAL)
    assert b.fn.bars[4].addr == 0xE0000000 and b.fn.bars[4].is64


def test_modern_offer_and_negotiation(open_balloon: Any) -> None:
    b = open_balloon()
    offered, accepted = b.negotiate()
    # QEMU never offers MUST_TELL_HOST; STATS_VQ and PAGE_POISON are on by default;
    # DEFLATE_ON_OOM only with the property
    assert not offered & 1
    assert offered & STATS_VQ and offered & PAGE_POISON and not offered & DEFLATE_ON_OOM
    assert offered & VERSION_1
    assert accepted == offered & (0x3F | VERSION_1)
    assert b.transport.get_status() & 0x8  # FEATURES_OK kept
    assert b.transport.num_queues() == 3


def test_deflate_on_oom_option_adds_bit(open_balloon: Any) -> None:
    offered, _ = open_balloon(device={"deflate-on-oom": True}).negotiate()
    assert offered & DEFLATE_ON_OOM


def test_legacy_offer_has_no_high_bits(open_balloon: Any) -> None:
    b = open_balloon(transport="legacy")
    offered, accepted = b.negotiate()
    assert offered >> 32 == 0 and offered & (1 << 30)  # BAD_FEATURE offered on legacy
    assert accepted == offered & 0x3F


def test_legacy_on_modern_only_device_is_refused(open_balloon: Any) -> None:
    with pytest.raises(UsageError, match="disable-legacy"):
        open_balloon(transport="legacy", device={"disable-legacy": True})


# --- inflate / deflate ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["modern", "legacy"])
def test_inflate_discards_pages(open_balloon: Any, transport: str) -> None:
    b = open_balloon(transport=transport)
    b.negotiate()
    b.setup_queues()
    b.fill_pages(0x8000, 17, 0xAA)
    used = b.exchange("inflate", [pfn_array(range(0x8000, 0x8010))])
    assert [(u.id, u.len) for u in used] == [(0, 0)]  # QEMU always returns used len 0
    assert b.pages_zero(0x8000, 16).all()
    assert b.read_pages(0x8010, 1) == b"\xaa" * 4096  # the next page is untouched
    (buf,) = b.trace().buffers
    assert buf.queue == 0 and buf.out_num == 1 and buf.in_num == 0
    assert buf.processed == list(range(0x8000, 0x8010)) and buf.sections == {"pc.ram"}
    assert buf.used_len == 0
    assert b.balloon_extents() == [(0x8000, 16)]


@pytest.mark.parametrize("transport", ["modern", "legacy"])
def test_deflate_removes_from_balloon(open_balloon: Any, transport: str) -> None:
    b = open_balloon(transport=transport)
    b.negotiate()
    b.setup_queues()
    b.exchange("inflate", [pfn_array(range(0x8000, 0x8100))])
    used = b.exchange("deflate", [pfn_array(range(0x8010, 0x8020))])
    assert [u.len for u in used] == [0]
    bufs = b.trace().buffers
    assert [x.queue for x in bufs] == [0, 1]
    assert bufs[1].processed == list(range(0x8010, 0x8020))
    assert b.balloon_extents() == [(0x8000, 0x10), (0x8020, 0xE0)]
    st = b.queue_status(1)
    assert st["last-avail-idx"] == 1 and st["used-idx"] == 1


def test_full_linux_sized_buffer(open_balloon: Any) -> None:
    b = open_balloon()
    b.negotiate()
    b.setup_queues()
    pfns = list(range(0x8000, 0x8000 + 256 * 3, 3))
    assert len(b.exchange("inflate", [pfn_array(pfns)])) == 1
    assert b.trace().buffers[0].processed == pfns
    assert b.balloon_extents() == to_extents(pfns)


def test_bad_pfns_are_traced_and_skipped(open_balloon: Any) -> None:
    b = open_balloon()
    b.negotiate()
    b.setup_queues()
    b.fill_pages(0x8000, 1, 0xAA)
    # LAPIC page, last page below 4 GiB (not RAM with 256 MiB), a RAM page
    used = b.exchange("inflate", [pfn_array([0xFEE00, 0xFFFFF, 0x8000])])
    assert [u.len for u in used] == [0]  # the buffer is still returned
    (buf,) = b.trace().buffers
    assert buf.pfns == [0xFEE00, 0xFFFFF, 0x8000] and buf.ok == [False, False, True]
    assert buf.bad == [0xFEE00, 0xFFFFF]
    assert b.pages_zero(0x8000, 1).all()
    assert b.balloon_extents() == [(0x8000, 1)]


def test_trailing_bytes_of_pfn_buffer_are_ignored(open_balloon: Any) -> None:
    b = open_balloon()
    b.negotiate()
    b.setup_queues()
    b.fill_pages(0xA000, 2, 0xAA)
    used = b.exchange("inflate", [pfn_array([0xA000, 0xA001])[:6]])
    assert [u.len for u in used] == [0]
    assert b.trace().buffers[0].pfns == [0xA000]
    assert b.pages_zero(0xA000, 2).tolist() == [True, False]


def test_write_only_descriptor_on_inflate_is_not_read(open_balloon: Any) -> None:
    b = open_balloon()
    b.negotiate()
    b.setup_queues()
    addr = b.place(pfn_array([0xB000]))
    b.fill_pages(0xB000, 1, 0xAA)
    used = b.exchange("inflate", [(addr, 4, True)])
    assert [u.len for u in used] == [0]
    (buf,) = b.trace().buffers
    assert buf.in_num == 1 and buf.out_num == 0 and buf.pfns == []
    assert not b.pages_zero(0xB000, 1).any()


# --- config and host requests --------------------------------------------------------------


@pytest.mark.parametrize("transport", ["modern", "legacy"])
def test_config_actual_and_target(open_balloon: Any, transport: str) -> None:
    b = open_balloon(transport=transport)
    b.negotiate()
    b.setup_queues()
    assert b.config_read(0, 8) == bytes(8)
    b.set_actual(16)
    assert b.actual() == 16
    assert b.query_balloon() == (256 << 20) - 16 * 4096  # ram_size - actual pages
    assert b.trace().set_config[-1] == (16, 0)
    b.isr()  # clear
    b.set_target(200 << 20)
    assert b.num_pages() == (56 << 20) // 4096  # 14336 pages to give back
    assert b.isr() == 0x3  # queue bit and config bit both set by QEMU
    assert b.trace().to_target[-1] == (200 << 20, 14336)


# --- stats (needs virtual time) ------------------------------------------------------------


def test_stats_buffer_held_until_poll(open_balloon: Any) -> None:
    b = open_balloon(stats_clock=True)
    b.negotiate()
    b.setup_queues()
    b.cont()
    # tags 0 swap-in, 4 free, 7 disk caches, and 99 (unknown: must be ignored)
    assert b.exchange("stats", [stats_buffer({0: 1, 4: 1000, 7: 12345, 99: 5})]) == []
    stats = b.guest_stats()["stats"]
    assert stats["stat-swap-in"] == 1 and stats["stat-free-memory"] == 1000
    assert stats["stat-disk-caches"] == 12345
    assert stats["stat-total-memory"] == (1 << 64) - 1  # unreported: -1
    assert len(stats) == 10  # tags 0-9; 99 has nowhere to go
    b.set_stats_interval(1)
    used = b.wait_used("stats")
    assert [(u.id, u.len) for u in used] == [(0, 0)]
    b.exchange("stats", [stats_buffer({5: 4242})])
    assert b.guest_stats()["stats"]["stat-total-memory"] == 4242
    assert b.guest_stats()["stats"]["stat-free-memory"] == (1 << 64) - 1  # stale values reset
    assert len(b.wait_used("stats")) == 1


def test_stats_buffer_never_returned_without_clock(open_balloon: Any) -> None:
    b = open_balloon()
    b.negotiate()
    b.setup_queues()
    b.set_stats_interval(1)
    assert b.exchange("stats", [stats_buffer({4: 1})]) == []
    time.sleep(0.2)
    assert b.used("stats") == []  # -S: virtual time stands still


# --- free page reporting and queue numbering ------------------------------------------------


def test_reporting_on_queue_3(open_balloon: Any) -> None:
    b = open_balloon(device={"free-page-reporting": True})
    b.negotiate()
    b.setup_queues()
    assert b.queue_roles()[QueueRole.REPORTING] == 3
    assert b.transport.queue_max_size(3) == 32  # QEMU's reporting queue is short
    b.fill_pages(0x9000, 513, 0x5A)
    used = b.exchange("reporting", [(0x9000 * 4096, 2 << 20, True)])
    assert [u.len for u in used] == [0]
    assert b.pages_zero(0x9000, 512).all()
    assert not b.pages_zero(0x9000 + 512, 1).any()
    buf = b.trace().buffers[-1]
    assert buf.queue == 3 and buf.in_num == 1 and buf.pfns == []


@pytest.mark.parametrize("transport", ["legacy", "modern"])
def test_rings_of_every_queue_are_disjoint(open_balloon: Any, transport: str) -> None:
    """A legacy queue keeps the device's size, and QEMU's free page queue has 1,024 entries
    (28 KiB of rings): at a fixed 12 KiB stride they overlapped the reporting queue's, and a
    used id read back as 0x50004 (found by `vbproto fuzz` against 7.2 legacy)."""
    b = open_balloon(transport=transport, device={"free-page-hint": True,
                                                   "free-page-reporting": True})
    b.negotiate()
    b.setup_queues()
    spans = sorted((q.desc_addr, q.used_addr + 6 + 8 * q.size) for q in b.queues.values())
    assert len(spans) == 5
    if transport == "legacy":  # the device's own sizes (modern: the driver lowers them)
        assert max(q.size for q in b.queues.values()) == 1024
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))
    assert spans[-1][1] <= b.scratch_base


def test_queues_numbered_by_offered_features(open_balloon: Any) -> None:
    b = open_balloon(device={"free-page-reporting": True})
    _, accepted = b.negotiate(VERSION_1 | PAGE_REPORTING)
    assert accepted == VERSION_1 | PAGE_REPORTING
    b.setup_queues()
    # Linux would call the reporting queue 2 here (negotiated numbering); QEMU keeps 3
    assert b.queue_roles() == {QueueRole.INFLATE: 0, QueueRole.DEFLATE: 1, QueueRole.REPORTING: 3}
    b.fill_pages(0x9000, 512, 0x5A)
    assert b.exchange(2, [(0x9000 * 4096, 2 << 20, True)]) == []  # eaten by the stats handler
    assert not b.pages_zero(0x9000, 512).any()
    assert len(b.exchange(3, [(0x9000 * 4096, 2 << 20, True)])) == 1
    assert b.pages_zero(0x9000, 512).all()


# --- lifetime and errors -------------------------------------------------------------------


def test_stop_leaves_no_qemu(open_balloon: Any) -> None:
    b = open_balloon()
    pid = b.pid
    assert pid is not None and not _gone(pid)
    b.stop()
    assert _wait_gone(pid)
    with pytest.raises(PeerError, match="not running"):
        b.negotiate()


def test_qemu_dies_with_its_parent() -> None:
    try:
        find_qemu()
    except PeerError as e:
        pytest.fail(str(e))
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, time
                from virtio_balloon_proto.qemu.process import QemuProcess
                q = QemuProcess().start()
                print(q.pid, flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    pid = int(child.stdout.readline())
    assert not _gone(pid)
    os.kill(child.pid, signal.SIGKILL)  # no atexit, no finally: only PDEATHSIG can help
    child.wait()
    assert _wait_gone(pid)


def test_qemu_startup_failure_reports_stderr() -> None:
    try:
        find_qemu()
    except PeerError as e:
        pytest.fail(str(e))
    with pytest.raises(PeerError, match=r"QEMU exited.*no-such-option"):
        QemuProcess(QemuOptions(extra_args=("-no-such-option",))).start()


def test_hung_qemu_times_out_with_peer_error() -> None:
    try:
        find_qemu()
    except PeerError as e:
        pytest.fail(str(e))
    # start with a normal timeout (a loaded machine may take longer than 0.3 s to answer the
    # handshake: that is not the hang under test), then wait 0.3 s for a stopped QEMU
    q = QemuProcess().start()
    q.qtest._ch.timeout = 0.3
    try:
        assert q.pid is not None
        os.kill(q.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(PeerError, match=r"no reply within 0\.3 s"):
            q.qtest.readl(0)
        assert time.monotonic() - t0 < 2
    finally:
        q.close(graceful=False)  # a stopped QEMU cannot answer QMP quit
    assert q.pid is not None and _wait_gone(q.pid)


def test_missing_binary_says_how_to_install() -> None:
    with pytest.raises(PeerError, match="apt-get install -y --no-install-recommends"):
        find_qemu("qemu-system-does-not-exist")
    assert "qemu-system-x86" in INSTALL_HINT
