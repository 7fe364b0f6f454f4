"""``capture attach`` on a QEMU with a booted Linux guest (issue 14 item 3, "Done when" 2).

Marked ``guest``: it fetches Debian's 6.1 kernel and busybox (tools/build_guest.py, ~75 MB on
first use) and boots them under TCG.  Run: ``pytest -m guest tests/test_attach_guest.py``
(~40 s).  The window must decode to exactly the pages the guest inflated: as many as QEMU's
``query-balloon`` says the balloon took, each of which reads back as zero (QEMU discarded it),
and the stats buffer the snapshot found must hold the values QEMU's own ``guest-stats``
parsed from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.qemu.attach import PmemsaveMemory, connect_qmp, snapshot, write_snapshot
from virtio_balloon_proto.qemu.capture import APPEND, DRIVER_OK, GUEST_TRACE_EVENTS
from virtio_balloon_proto.qemu.process import QemuOptions, QemuProcess
from virtio_balloon_proto.qemu.tracelog import TraceLog
from virtio_balloon_proto.trace import TraceReader
from virtio_balloon_proto.tracedecode import Summary, decode_trace

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent


def test_attach_window_decodes_to_the_pages_the_guest_inflated(tmp_path: Path) -> None:
    build = subprocess.run([sys.executable, str(REPO / "tools" / "build_guest.py"), "--out",
                            str(REPO / "guest")], capture_output=True, text=True, timeout=900,
                           check=False)
    assert build.returncode == 0, build.stderr
    manifest = json.loads(build.stdout)
    sock = tmp_path / "user-qmp.sock"
    ram, target = 512 << 20, 384 << 20
    opts = QemuOptions(memory=ram, running=True, kernel=Path(manifest["kernel"]),
                       initrd=Path(manifest["initrd"]), append=APPEND,
                       trace_events=GUEST_TRACE_EVENTS, serial=tmp_path / "console.log",
                       extra_args=("-no-reboot", "-qmp", f"unix:{sock},server=on,wait=off"))
    with QemuProcess(opts, workdir=tmp_path / "run", timeout=30) as proc:
        log = TraceLog(proc.trace_log)
        deadline = time.monotonic() + 300
        while not any(v & DRIVER_OK for v in log.update().statuses):
            assert time.monotonic() < deadline and proc.alive(), proc.diagnose()
            time.sleep(0.1)
        proc.qmp.execute("qom-set", {"path": "/machine/peripheral/balloon0",
                                     "property": "guest-stats-polling-interval", "value": 1})
        time.sleep(2.5)  # the driver has answered a poll: QEMU holds a filled stats buffer
        # MemTotal as QEMU parsed it from that buffer (constant until the balloon moves)
        stats = proc.qmp.execute("qom-get", {"path": "/machine/peripheral/balloon0",
                                             "property": "guest-stats"})["stats"]
        # the "user" balloons the guest while we are attached and recording
        timer = threading.Timer(1.0, proc.qmp.execute, ("balloon", {"value": target}))
        qmp = connect_qmp(sock)
        try:
            timer.start()
            snap = snapshot(qmp, record=6.0, record_log=tmp_path / "rec.log",
                            command="vbproto capture attach --record 6")
            timer.join()
            assert int(proc.qmp.execute("query-balloon")["actual"]) == target
            out = tmp_path / "window.jsonl"
            write_snapshot(snap, out)
            summ = Summary()
            with TraceReader(out) as r:
                msgs = [m for m in decode_trace(r, None, summ) if m.direction == "avail"]
            inflated = PageSet.empty()
            for m in msgs:
                if m.role == "inflate" and m.buffer is not None:
                    inflated = inflated | m.buffer.pages
            assert len(inflated) == (ram - target) >> 12  # 32768 pages, none twice
            # independent of the trace: QEMU discarded those pages, they read as zero
            mem = PmemsaveMemory(qmp, snap.regions, tmp_path)
            frames = inflated.to_frames()
            for pfn in frames[:: len(frames) // 16][:16].tolist():
                assert mem.read(int(pfn) << 12, 4096) == bytes(4096)
        finally:
            qmp.close()
    # the stats buffer QEMU held when we attached: the same values QEMU parsed from it
    first = next(m for m in msgs if m.role == "stats")
    fields = first.buffer.decoded.fields() if first.buffer is not None else {}
    assert fields, "no stats buffer in the snapshot"
    assert summ.stats[5] == stats["stat-total-memory"]
    assert snap.paused_seconds < 5 and snap.reads >= 9
