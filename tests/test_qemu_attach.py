"""``capture attach``'s snapshot against a real QEMU 7.2 balloon (issue 14 item 3).

Our qtest driver (qemu/device.py) plays the guest: it leaves one used inflate chain and one
chain in flight, then attach reads the rings through a second QMP monitor, as it would from a
QEMU someone else runs.  What attach must see is known exactly: the PFNs we wrote, the chain
QEMU itself reports (``x-query-virtio-queue-element``), the features the registers showed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from virtio_balloon_proto.errors import PeerError, RingError
from virtio_balloon_proto.profiles import QueueRole
from virtio_balloon_proto.qemu.attach import (
    PmemsaveMemory,
    connect_qmp,
    ram_regions,
    snapshot,
    status_byte,
    write_snapshot,
)
from virtio_balloon_proto.qemu.device import QemuBalloon, pfn_array, stats_buffer
from virtio_balloon_proto.trace import AvailEvent, FeaturesEvent, StatusEvent, UsedEvent, read_trace

pytestmark = pytest.mark.qemu


@pytest.mark.parametrize("transport", ["modern", "legacy"])
def test_attach_sees_the_chain_in_flight(tmp_path: Path, transport: str) -> None:
    sock = tmp_path / "attach.sock"
    with QemuBalloon(transport=transport,
                     extra_args=("-qmp", f"unix:{sock},server=on,wait=off")) as b:
        offered, accepted = b.negotiate()
        b.setup_queues()
        b.exchange("inflate", [pfn_array(range(0x8000, 0x8010))])  # used: 16 pages
        inflight = b.post("inflate", [pfn_array(range(0x9000, 0x9004))], notify=False)
        stats = stats_buffer({0: 7, 4: 123456789})
        b.post("stats", [stats], notify=False)
        before = b.query_balloon()
        qmp = connect_qmp(sock)
        try:
            snap = snapshot(qmp)
            # read-only: nothing moved, and the stopped (-S) VM stays stopped
            assert b.query_balloon() == before
            assert qmp.execute("query-status")["running"] is False
        finally:
            qmp.close()
        # the driver's view is unchanged: the chain is still in flight, nothing was used
        assert b.used("inflate") == []
    h = snap.header
    assert (h.features_offered, h.features_negotiated) == (offered, accepted)
    assert h.virtio_endian == "le" and h.queues[QueueRole.INFLATE] == 0
    # format 1.2: a window from mid-life, cut with chains in flight; no config space read
    assert h.window is not None and (h.window.start, h.window.end) == ("mid", "cut")
    assert h.window.sees("driver-bytes") and not h.window.sees("config")
    assert h.memory is not None and any(g <= 0x9000 << 12 < g + n for g, n in h.memory)
    evs = snap.events
    assert isinstance(evs[0], FeaturesEvent) and evs[0].driver == accepted
    assert isinstance(evs[1], StatusEvent) and evs[1].value == 0xF - (0 if accepted >> 32 else 8)
    used = [e for e in evs if isinstance(e, UsedEvent) and e.role is QueueRole.INFLATE]
    avail = [e for e in evs if isinstance(e, AvailEvent)]
    assert [(e.id, e.len) for e in used] == [(0, 0)]
    inflate = [e for e in avail if e.role is QueueRole.INFLATE]
    assert len(inflate) == 1 and inflate[0].id == inflight.head
    pfns = np.frombuffer(inflate[0].out_bytes, dtype="<u4").tolist()
    assert pfns == [0x9000, 0x9001, 0x9002, 0x9003]
    (st,) = [e for e in avail if e.role is QueueRole.STATS]
    assert st.out_bytes == stats
    # QEMU's own reading of the chain agrees with ours, descriptor for descriptor
    (elem,) = snap.elements[0]
    assert [(d["addr"], d["len"]) for d in elem["descs"]] == [
        (d.addr, d.len) for d in inflate[0].descriptors or ()
    ]
    # bounded: three rings of three queues and two buffers, nothing else
    assert snap.reads == 3 * 3 + 2 and snap.bytes_read < 64 << 10
    out = tmp_path / "snap.jsonl"
    write_snapshot(snap, out)
    header, events = read_trace(out)
    assert header == h and events == evs


def test_pmemsave_memory_refuses_what_is_not_ram_or_over_budget(tmp_path: Path) -> None:
    sock = tmp_path / "a.sock"
    with QemuBalloon(extra_args=("-qmp", f"unix:{sock},server=on,wait=off")) as b:
        b.fill_pages(0x100, 1, 0x5A)
        qmp = connect_qmp(sock)
        try:
            regions = ram_regions(qmp)
            assert regions[0][2] == "pc.ram" and sum(n for _, n, _ in regions) < 256 << 20
            mem = PmemsaveMemory(qmp, regions, tmp_path, budget=8192)
            assert mem.read(0x100000, 16) == b"\x5a" * 16
            with pytest.raises(RingError, match="not inside guest RAM"):
                mem.read(0xFEC00000, 4)  # the IOAPIC: pmemsave would read MMIO
            with pytest.raises(RingError, match="budget"):
                mem.read(0x200000, 8192)
            with pytest.raises(RingError, match="never writes"):
                mem.write(0x100000, b"x")
        finally:
            qmp.close()


def test_attach_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(PeerError, match="cannot connect to QMP socket"):
        connect_qmp(tmp_path / "nothing.sock", timeout=1)
    with pytest.raises(PeerError, match="unknown status name"):
        status_byte({"statuses": ["VIRTIO_CONFIG_S_FROB: ?"]})
    assert status_byte({"statuses": ["VIRTIO_CONFIG_S_ACKNOWLEDGE: x",
                                     "VIRTIO_CONFIG_S_DRIVER_OK: y"]}) == 5


def test_cli_capture_attach(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    sock = tmp_path / "cli.sock"
    out = tmp_path / "cli.jsonl"
    with QemuBalloon(extra_args=("-qmp", f"unix:{sock},server=on,wait=off")) as b:
        b.negotiate()
        b.setup_queues()
        b.post("deflate", [pfn_array([0x8000, 0x8001])], notify=False)
        r = subprocess.run([sys.executable, "-m", "virtio_balloon_proto", "capture", "attach",
                            "--qmp", str(sock), "-o", str(out), "--json"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["wrote"] == str(out) and rep["in_flight"] == 1 and rep["status"] == 0xF
    _, events = read_trace(out)
    (d,) = [e for e in events if isinstance(e, AvailEvent) and e.role is QueueRole.DEFLATE]
    assert d.out_bytes == pfn_array([0x8000, 0x8001])
    # no QEMU there: one line, exit 2
    r = subprocess.run([sys.executable, "-m", "virtio_balloon_proto", "capture", "attach",
                        "--qmp", str(tmp_path / "none.sock"), "-o", str(out)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "cannot connect to QMP socket" in r.stderr


def test_cli_attach_records_a_quiet_device_and_keeps_an_interrupted_recording(
    tmp_path: Path,
) -> None:
    """QA 15/21: an idle guest logs nothing during ``--record`` -- that is a quiet window, not
    "was QEMU run with -trace?" (attach switches the events on itself); SIGTERM during the
    recording keeps the snapshot and what was recorded (exit 130, one JSON object, partial)."""
    import json
    import signal
    import subprocess
    import sys
    import time

    from virtio_balloon_proto.trace import HostEvent

    sock = tmp_path / "rec.sock"
    quiet, cut = tmp_path / "quiet.jsonl", tmp_path / "cut.jsonl"
    cmd = [sys.executable, "-m", "virtio_balloon_proto", "capture", "attach", "--json",
           "--qmp", str(sock)]
    with QemuBalloon(extra_args=("-qmp", f"unix:{sock},server=on,wait=off")) as b:
        b.negotiate()
        b.setup_queues()
        r = subprocess.run([*cmd, "-o", str(quiet), "--record", "0.5"], capture_output=True,
                           text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["wrote"] == str(quiet)
        _, events = read_trace(quiet)
        (note,) = [e for e in events if isinstance(e, HostEvent)]
        assert "none logged" in (note.note or "")
        p = subprocess.Popen([*cmd, "-o", str(cut), "--record", "60"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        log = Path(f"{cut}.qemu.log")
        deadline = time.monotonic() + 30
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        b.exchange("inflate", [pfn_array([0x8100])])  # recorded before the signal
        time.sleep(0.3)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    rep = json.loads(out)
    assert rep["partial"] is True and rep["exit_code"] == 130 and rep["wrote"] == str(cut)
    header, events = read_trace(cut)
    assert header.window is not None and header.window.end == "cut"
    recorded = [e for e in events if isinstance(e, AvailEvent) and e.role is QueueRole.INFLATE]
    assert [np.frombuffer(e.out_bytes, "<u4").tolist() for e in recorded] == [[0x8100]]


def test_attach_before_any_negotiation_shows_the_modern_offer(tmp_path: Path) -> None:
    """QA 16: with status 0 (no driver yet) the offered word was the legacy 32-bit view
    (no VERSION_1) of a transitional device; it is the modern interface's, and says so."""
    sock = tmp_path / "s0.sock"
    with QemuBalloon(extra_args=("-qmp", f"unix:{sock},server=on,wait=off")) as b:
        qmp = connect_qmp(sock)
        try:
            snap = snapshot(qmp)
        finally:
            qmp.close()
        offered_modern, _ = b.negotiate()  # what the modern registers show, read afterwards
    h = snap.header
    assert h.features_negotiated == 0 and h.features_offered >> 32 & 1
    assert not h.features_offered & (1 << 24 | 1 << 27 | 1 << 30)  # legacy-only bits
    assert h.features_offered == offered_modern
    assert "no driver had negotiated" in (h.source.provenance or "")
