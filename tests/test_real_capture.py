"""The committed real capture (QEMU 7.2 + Linux 6.1, issue 7) decodes to what QEMU processed.

The trace was recorded by ``vbproto capture qemu-guest`` from QEMU's own
``virtio_balloon_handle_output`` trace lines (one per PFN QEMU processed); ballooning a 512 MiB
guest to 384 MiB and back moves 128 MiB = 32,768 4 KiB pages each way.
"""

from __future__ import annotations

from pathlib import Path

from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.trace import TraceReader
from virtio_balloon_proto.tracedecode import Summary, decode_trace

REAL = Path(__file__).resolve().parent.parent / "conformance" / "traces" / "real"


def test_real_capture_decodes_to_the_pfns_qemu_processed() -> None:
    (path,) = sorted(REAL.glob("qemu-7.2-linux-6.1-*.jsonl"))
    summ = Summary()
    with TraceReader(path) as r:
        prov = r.header.source.provenance or ""
        assert "QEMU emulator version 7.2" in prov and "Linux 6.1" in prov
        msgs = [m for m in decode_trace(r, {"inflate", "deflate"}, summ) if m.direction == "avail"]
    inflate = [m for m in msgs if m.role == "inflate"]
    deflate = [m for m in msgs if m.role == "deflate"]
    assert len(inflate) == len(deflate) == 128
    # Linux fills vb->pfns[256] per tell_host(): every buffer is exactly 256 PFNs, no findings
    for m in msgs:
        assert m.buffer is not None and m.error is None
        assert m.buffer.kind == "pfns" and len(m.buffer.decoded.fields()["pfns"]) == 256
        assert m.buffer.findings == ()
    inflated = PageSet.empty()
    for m in inflate:
        inflated = inflated | m.buffer.pages
    deflated = PageSet.empty()
    for m in deflate:
        deflated = deflated | m.buffer.pages
    assert len(inflated) == 32768  # 128 MiB, no page sent twice
    assert deflated == inflated  # the balloon went back to where it started
    assert inflated.max() < (512 << 20) >> 12  # every PFN is guest RAM
    assert summ.balloon == PageSet.empty()
    assert summ.targets[0] == (512 - 384) << 8  # QMP balloon 384M: num_pages = 32768
