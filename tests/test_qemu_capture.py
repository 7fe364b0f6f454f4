"""Real Linux guest capture (slow: boots Debian's 6.1 kernel under TCG once, ~6-15 s) and the
QMP feature decoding the capture relies on."""

from __future__ import annotations

import itertools
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from virtio_balloon_proto.errors import PeerError
from virtio_balloon_proto.profiles import QueueRole
from virtio_balloon_proto.qemu.capture import capture_guest, features_from_qmp, offered_by_transport
from virtio_balloon_proto.qemu.device import BACKEND_PATH, QemuBalloon
from virtio_balloon_proto.qemu.process import find_qemu
from virtio_balloon_proto.trace import AvailEvent, HostEvent, UsedEvent, read_trace

pytestmark = pytest.mark.qemu

REPO = Path(__file__).resolve().parent.parent


def _flat(lists: list[list[int]]) -> list[int]:
    return list(itertools.chain.from_iterable(lists))


def _require_qemu() -> None:
    try:
        find_qemu()
    except PeerError as e:
        pytest.fail(str(e))


@pytest.mark.parametrize("transport", ["modern", "legacy"])
def test_qmp_features_match_the_registers(transport: str) -> None:
    _require_qemu()
    dev = {"free-page-reporting": True, "deflate-on-oom": True}
    with QemuBalloon(transport=transport, device=dev) as b:
        offered, accepted = b.negotiate()
        st = b.qmp("x-query-virtio-status", {"path": BACKEND_PATH})
        assert offered_by_transport(features_from_qmp(st["host-features"]), transport) == offered
        assert features_from_qmp(st["guest-features"]) == accepted


def test_unknown_qmp_feature_name_is_an_error() -> None:
    with pytest.raises(PeerError, match="unknown feature name"):
        features_from_qmp({"dev-features": ["VIRTIO_BALLOON_F_FROBNICATE: ?"]})


@pytest.mark.slow
def test_real_guest_capture(tmp_path: Path) -> None:
    _require_qemu()
    build = subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_guest.py"), "--out", str(REPO / "guest")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    manifest = json.loads(build.stdout)
    out = tmp_path / "capture.jsonl"
    cap = capture_guest(
        Path(manifest["kernel"]),
        Path(manifest["initrd"]),
        memory="512M",
        balloon_to="384M",
        output=out,
        workdir=tmp_path / "run",
        provenance=f"test capture, kernel {manifest['kernel_release']}",
    )
    assert manifest["ready_mark"] in cap.console  # all six modules loaded, init reached the end
    ballooned_pages = 128 * 256  # 128 MiB in 4 KiB pages
    lists = cap.pfn_lists()
    inflate = [x["pfns"] for x in lists if x["role"] == "inflate"]
    deflate = [x["pfns"] for x in lists if x["role"] == "deflate"]
    assert sum(map(len, inflate)) == ballooned_pages
    assert sum(map(len, deflate)) == ballooned_pages
    assert max(map(len, inflate + deflate)) <= 256  # Linux's VIRTIO_BALLOON_ARRAY_PFNS_MAX
    # every page inflated comes back, none twice
    assert sorted(_flat(inflate)) == sorted(_flat(deflate))
    assert len(set(_flat(inflate))) == ballooned_pages

    # independent of the parser: every handle_output gpa in the raw log is in the capture
    raw = (tmp_path / "run" / "trace.log").read_text()
    gpas = [
        int(g, 16) >> 12
        for g in re.findall(r"handle_output section name: \S+ gpa: (0x[0-9a-f]+)", raw)
    ]
    assert sorted(gpas) == sorted(_flat(inflate) + _flat(deflate))

    # independent of the trace: the driver's PFN array read from guest RAM after the inflate
    snap = cap.ring_snapshot
    assert snap is not None and snap["desc"]["len"] == 4 * len(inflate[-1])
    assert list(struct.unpack(f"<{len(inflate[-1])}I", snap["data"])) == inflate[-1]

    # the trace file reads back and decodes to the same PFNs
    header, events = read_trace(out)
    assert header.queues[QueueRole.INFLATE] == 0 and header.index_model == "offered"
    assert header.features_negotiated >> 1 & 1  # Linux 6.1 negotiates STATS_VQ
    avail = [e for e in events if isinstance(e, AvailEvent) and e.role is QueueRole.INFLATE]
    decoded = [np.frombuffer(e.out_bytes, dtype="<u4").tolist() for e in avail]
    assert decoded == inflate
    used = [e for e in events if isinstance(e, UsedEvent) and e.role is QueueRole.INFLATE]
    assert len(used) == len(avail) and {e.len for e in used} == {0}
    hosts = [e for e in events if isinstance(e, HostEvent)]
    assert [h.num_pages for h in hosts] == [ballooned_pages, 0]
    # the set-target comes before the first inflate buffer
    assert events.index(hosts[0]) < events.index(avail[0])
