"""``vbproto decode``: captures built by hand decode to the right pages (issue 4).

The split rings here are laid with ``struct.pack`` straight from the spec's C structs
(VIRTIO 1.2 2.7.5-2.7.8), not with our ring builder, so the test does not check our code
against itself.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from virtio_balloon_proto.cli import main
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.trace import TraceReader
from virtio_balloon_proto.tracedecode import Summary, decode_trace

DESC, AVAIL, USED, BUF = 0x1000, 0x1100, 0x2000, 0x3000
NEXT, WRITE = 1, 2


def hand_laid_dump(endian: str) -> bytes:
    """8 KiB of guest memory at GPA 0: a 4-entry split ring with two inflate buffers posted.

    desc[0] -> PFNs 0x8000,0x8001,0x8002 (12 bytes) ; desc[1] -> desc[2] chain: PFN 0x9000 and
    then 0x10 bytes the driver split into a second descriptor holding PFN 0x9001 + 2 junk bytes.
    avail.idx = 2 (heads 0, 1); used.idx = 0.
    """
    e = "<" if endian == "le" else ">"
    mem = bytearray(0x4000)
    # struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }
    struct.pack_into(e + "QIHH", mem, DESC + 0, BUF, 12, 0, 0)
    struct.pack_into(e + "QIHH", mem, DESC + 16, BUF + 0x100, 4, NEXT, 2)
    struct.pack_into(e + "QIHH", mem, DESC + 32, BUF + 0x200, 6, 0, 0)
    # struct virtq_avail { le16 flags; le16 idx; le16 ring[4]; le16 used_event; }
    struct.pack_into(e + "HH4HH", mem, AVAIL, 0, 2, 0, 1, 0, 0, 0)
    # struct virtq_used { le16 flags; le16 idx; ... }: nothing used yet
    struct.pack_into(e + "HH", mem, USED, 0, 0)
    # __virtio32 PFN arrays
    struct.pack_into(e + "3I", mem, BUF, 0x8000, 0x8001, 0x8002)
    struct.pack_into(e + "I", mem, BUF + 0x100, 0x9000)
    struct.pack_into(e + "I", mem, BUF + 0x200, 0x9001)
    mem[BUF + 0x204 : BUF + 0x206] = b"\xaa\xbb"
    return bytes(mem)


@pytest.mark.parametrize("endian", ["le", "be"])
def test_hand_laid_split_ring_decodes_to_the_right_pages(tmp_path: Path, endian: str) -> None:
    dump = tmp_path / "mem.bin"
    dump.write_bytes(hand_laid_dump(endian))
    trace = tmp_path / "t.jsonl"
    r = CliRunner().invoke(main, [
        "trace", "import", "split-ring", "--memory", f"{dump}@0", "--desc", hex(DESC),
        "--avail", hex(AVAIL), "--used", hex(USED), "--size", "4", "--role", "inflate",
        "--profile", "spec", "--endian", endian, "--negotiated",
        "0x100000000" if endian == "le" else "0x0", "-o", str(trace)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["decode", "--json", str(trace)])
    assert r.exit_code == 0, r.output
    msgs = [json.loads(line) for line in r.output.splitlines()]
    avail = [m for m in msgs if m["event"] == "avail"]
    assert [m["head"] for m in avail] == [0, 1]
    assert avail[0]["pages"] == [[0x8000, 3]]
    assert avail[0]["findings"] == []
    # the second chain is 4 + 6 bytes: PFNs 0x9000, 0x9001 and 2 trailing bytes -> a finding
    assert avail[1]["pages"] == [[0x9000, 2]]
    assert [f["rule"] for f in avail[1]["findings"]] == ["spec.driver.pfns.len-multiple-of-4"]
    assert avail[1]["fields"]["trailing"] == "aabb"


def test_summary_over_the_corpus_trace() -> None:
    root = Path(__file__).resolve().parent.parent / "conformance" / "traces"
    summ = Summary()
    with TraceReader(root / "spec" / "deflate-le.jsonl") as reader:
        msgs = list(decode_trace(reader, None, summ))
    inflated = PageSet.empty()
    deflated = PageSet.empty()
    for m in msgs:
        if m.direction == "avail" and m.buffer is not None:
            if m.role == "inflate":
                inflated = inflated | m.buffer.pages
            elif m.role == "deflate":
                deflated = deflated | m.buffer.pages
    assert len(inflated) == 1024 and len(deflated) == 512
    assert summ.balloon == inflated - deflated
    assert summ.pages == {"inflate": 1024, "deflate": 512}
    assert summ.targets == [1024, 512]


def test_seed_exact_trace_shows_the_seed_bugs_as_findings() -> None:
    root = Path(__file__).resolve().parent.parent / "conformance" / "traces"
    r = CliRunner().invoke(main, ["decode", "--json", "--queue", "inflate",
                                  str(root / "v3" / "linux-v3-exact-le.jsonl")])
    assert r.exit_code == 0, r.output
    inflate = [json.loads(x) for x in r.output.splitlines() if '"avail"' in x]
    rules = {f["rule"] for m in inflate for f in m["findings"]}
    # bug 3: the shared header leaks flag/req_id; bug 1: no bitmap buffer for a small window
    assert "v3.driver.bmap.inflate-fields-zero" in rules
    assert "v3.driver.bmap.len-matches-buffers" in rules
    assert inflate[0]["fields"]["req_id"] == 0x123456789ABC


def test_decode_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "header"}\n')
    for args in (["decode", str(bad)], ["decode", str(tmp_path / "missing.jsonl")]):
        p = subprocess.run([sys.executable, "-m", "virtio_balloon_proto", *args],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, p
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.startswith("vbproto: error:")
