"""Hostile input to the CLI and the library: one clear error, never a traceback, a hang or
memory that grows with something other than the input (issue 12).

Every CLI run here goes through ``sys.executable -m virtio_balloon_proto`` with a timeout, so
a regression to a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from virtio_balloon_proto.errors import EncodeError, PeerError, TraceError, UsageError
from virtio_balloon_proto.limits import (
    MAX_CHAIN_DESCRIPTORS,
    MAX_INT_DIGITS,
    MAX_JSON_DEPTH,
    MAX_WALK_DESCRIPTORS,
    dumps_strict,
    loads_json,
    read_bounded,
)
from virtio_balloon_proto.trace import read_trace
from virtio_balloon_proto.trace.import_core import QueueStatus, load_queue_status

CLI = [sys.executable, "-m", "virtio_balloon_proto"]


def vbproto(*args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kw)


def one_clear_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vbproto: error:"), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


# --------------------------------------------------------------------------- strict JSON
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("NaN", "NaN"),
        ("[Infinity]", "Infinity"),
        ('{"a": -Infinity}', "Infinity"),
        ("1e309", "overflows"),
        ("9" * 5000, "MAX_INT_DIGITS"),
        ("[" * 100_000 + "]" * 100_000, "MAX_JSON_DEPTH"),
        ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "MAX_JSON_DEPTH"),
        (b"\xff\xfe", "UTF-8"),
        ("{", "not JSON"),
    ],
)
def test_loads_json_refuses_with_the_projects_error(text: str | bytes, needle: str) -> None:
    with pytest.raises(TraceError, match=needle):
        loads_json(text, what="record", error=TraceError)


def test_loads_json_keeps_what_json_allows() -> None:
    depth = MAX_JSON_DEPTH
    assert loads_json("[" * depth + "]" * depth, what="x") is not None
    assert loads_json("9" * MAX_INT_DIGITS, what="x") == int("9" * MAX_INT_DIGITS)
    assert loads_json('"\\ud800"', what="x") == "\ud800"  # lone surrogate: valid JSON text


def test_dumps_strict_writes_only_json() -> None:
    text = dumps_strict({"a": float("nan"), "b": [float("inf"), -float("inf")], "c": "\ud800"})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "a": "NaN", "b": ["Infinity", "-Infinity"], "c": "\ud800"}
    text.encode("ascii")  # lone surrogates travel as escapes


# --------------------------------------------------------------------------- bounded readers
@pytest.mark.parametrize(
    "args",
    [
        ("decode", "/dev/zero"),
        ("trace", "validate", "/dev/zero"),
        ("message", "decode", "--kind", "pfns", "@/dev/zero"),
    ],
)
def test_dev_zero_ends_with_a_clear_error(args: tuple[str, ...]) -> None:
    one_clear_error(vbproto(*args), "67108864")


def test_hex_stdin_is_capped() -> None:
    with open("/dev/zero", "rb") as zero:
        r = vbproto("message", "decode", "--kind", "pfns", "-", stdin=zero)
    one_clear_error(r, "limit")


def _fifo(tmp_path: Path) -> Path:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return fifo


def test_fifo_memory_is_refused_not_waited_for(tmp_path: Path) -> None:
    r = vbproto("trace", "import", "split-ring", "--memory", f"{_fifo(tmp_path)}@0",
                "--size", "8", "--role", "inflate", "--desc", "0", "--avail", "0x100",
                "--used", "0x200", "--profile", "spec", "-o", str(tmp_path / "o.jsonl"),
                timeout=30)
    one_clear_error(r, "FIFO")


def test_fifo_trace_without_writer_does_not_block(tmp_path: Path) -> None:
    one_clear_error(vbproto("decode", str(_fifo(tmp_path)), timeout=30), "no header")


def test_read_bounded_refuses_a_directory_and_an_oversized_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="directory"):
        read_bounded(tmp_path, what="input")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(UsageError, match="over the limit of 100"):
        read_bounded(big, what="input", limit=100)


# --------------------------------------------------------------------------- typed values
@pytest.mark.parametrize(
    ("value", "needle"),
    [(8.9, "float"), (True, "bool"), ("8", "str"), (None, "NoneType"), ([8], "list"),
     (-1, "outside"), (1 << 64, "outside")],
)
def test_queue_status_fields_are_true_integers(value: Any, needle: str) -> None:
    good = {"queue-index": 0, "vring-num": 256, "vring-desc": 0x1000, "vring-avail": 0x2000,
            "vring-used": 0x3000, "last-avail-idx": 0, "used-idx": 0}
    assert QueueStatus.from_json(good, "t").vring_num == 256
    for key in ("vring-num", "vring-desc", "last-avail-idx"):
        with pytest.raises(TraceError, match=needle) as ei:
            QueueStatus.from_json({**good, key: value}, "t")
        assert ei.value.field == key


def test_queue_status_file_nan_and_depth(tmp_path: Path) -> None:
    p = tmp_path / "q.json"
    p.write_text('{"return": {"queue-index": NaN}}')
    with pytest.raises(TraceError, match="NaN"):
        load_queue_status([p])
    p.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(TraceError, match="MAX_JSON_DEPTH"):
        load_queue_status([p])


def test_analyze_pages_of_the_whole_u64_space() -> None:
    one_clear_error(vbproto("analyze", "--pages", "0-18446744073709551615"), "MAX_ANALYZE")


def test_message_encode_json_input_is_strict() -> None:
    r = vbproto("message", "encode", "--kind", "pfns", "-",
                input='{"pages": [[NaN, 1]]}')
    one_clear_error(r, "NaN")
    r = vbproto("message", "encode", "--kind", "pfns", "-", input="[" * 100_000)
    one_clear_error(r, "MAX_JSON_DEPTH")


# --------------------------------------------------------------------------- codec server
def test_reference_codec_answers_malformed_ops() -> None:
    from virtio_balloon_proto.vectorgen.reference import handle

    for req in ({"op": []}, {"op": {}}, {"op": None}, [], "x", {"op": "decode", "params": []}):
        ans = handle(req)
        assert isinstance(ans, dict) and ("unsupported" in ans or "error" in ans), (req, ans)


def test_v3_misc_max_pfn_of_2_63_is_refused_without_allocating() -> None:
    from virtio_balloon_proto.vectorgen.reference import handle

    ans = handle({"op": "encode_pages", "params": {"profile": "v3", "role": "misc",
                                                   "endian": "le", "wordSize": 64,
                                                   "wordOrder": "le", "pageSize": 4096},
                  "pages": [], "reqId": 1, "maxPfn": 1 << 63})
    assert ans == {"error": {"class": "EncodeError", "field": "max_pfn"}}


def test_codec_server_survives_hostile_frames() -> None:
    """The stdio codec server answers every frame and never dies on one."""
    proc = subprocess.Popen([sys.executable, "-m", "virtio_balloon_proto.vectorgen.serve"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    bodies = [b'{"op": []}', b'{"op": "walk", "memory": [{"gpa": "x"}]}',
              b'{"op": "encode", "params": {"pageSize": 1e300}}', b"[[[[[[]]]]]]"]
    try:
        for body in bodies:
            proc.stdin.write(struct.pack("<I", len(body)) + body)
            proc.stdin.flush()
            (n,) = struct.unpack("<I", proc.stdout.read(4))
            ans = json.loads(proc.stdout.read(n))
            assert "unsupported" in ans or "error" in ans, (body, ans)
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_v3_encode_error_is_the_projects_error() -> None:
    from virtio_balloon_proto.codecs import v3
    from virtio_balloon_proto.pageset import PageSet
    from virtio_balloon_proto.wire import WireLayout

    drv = v3.SeedV3Driver(WireLayout("le", 64, "le", 4096), 1, False)
    with pytest.raises(EncodeError, match="MAX_ANSWER_CHAINS"):
        drv.answer_unused(PageSet(), 1, 1 << 63)


# --------------------------------------------------------------------------- ring walks
def shared_table_dump(path: Path, kind: str, chains: int) -> None:
    """``chains`` chains whose INDIRECT descriptors all name one 65,536-entry table (1 MiB),
    each entry a distinct 16-byte readable buffer."""
    table, data = 0x100000, 0x200000
    mem = bytearray(0x300000)
    for k in range(65536):
        if kind == "split":
            last = k == 65535
            struct.pack_into("<QIHH", mem, table + 16 * k, data + 16 * k, 16,
                             0 if last else 1, 0 if last else k + 1)
        else:
            struct.pack_into("<QIHH", mem, table + 16 * k, data + 16 * k, 16, 0, 0)
    if kind == "split":
        for c in range(chains):
            struct.pack_into("<QIHH", mem, 16 * c, table, 65536 * 16, 4, 0)
            struct.pack_into("<H", mem, 0x80000 + 4 + 2 * c, c)
        struct.pack_into("<HH", mem, 0x80000, 0, chains)
    else:
        for c in range(chains):
            struct.pack_into("<QIHH", mem, 16 * c, table, 65536 * 16, c, 4 | (1 << 7))
    path.write_bytes(bytes(mem))


@pytest.mark.parametrize("kind", ["split", "packed"])
@pytest.mark.parametrize("chains", [8, 256])
def test_shared_indirect_table_walk_is_capped(tmp_path: Path, kind: str, chains: int) -> None:
    dump, out = tmp_path / "mem.bin", tmp_path / "t.jsonl"
    shared_table_dump(dump, kind, chains)
    args = ["trace", "import", f"{kind}-ring", "--memory", f"{dump}@0", "--size", "256",
            "--role", "inflate", "--desc", "0", "--profile", "spec", "-o", str(out)]
    if kind == "split":
        args += ["--avail", "0x80000", "--used", "0xC0000", "--last-avail", "0"]
    else:
        args += ["--position", "0", "--wrap", "1"]
    r = vbproto(*args)
    assert r.returncode == 0, r.stderr
    _, events = read_trace(out)
    assert len(events) == chains
    total = 0
    for ev in events:
        n = len(ev.descriptors)
        total += n
        assert n <= MAX_CHAIN_DESCRIPTORS + 1
        assert any(f.rule == "spec.driver.ring.chain-len" for f in ev.findings)
    assert total <= MAX_WALK_DESCRIPTORS + 2 * chains
    assert out.stat().st_size < 40 << 20  # was 62.7 MB for 8 chains


# --------------------------------------------------------------------------- SIGTERM
SLOW_IMPORT = """
import sys, time
from virtio_balloon_proto.trace import writer as tio
orig = tio.TraceWriter.write
def slow(self, ev):
    print("writing", flush=True)
    time.sleep(0.3)
    return orig(self, ev)
tio.TraceWriter.write = slow
from virtio_balloon_proto.cli import main
main(prog_name="vbproto")
"""


def test_sigterm_during_trace_import_leaves_no_tmp(tmp_path: Path) -> None:
    dump, out = tmp_path / "mem.bin", tmp_path / "t.jsonl"
    shared_table_dump(dump, "split", 8)
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_IMPORT, "trace", "import", "split-ring", "--memory",
         f"{dump}@0", "--size", "256", "--role", "inflate", "--desc", "0", "--avail",
         "0x80000", "--used", "0xC0000", "--last-avail", "0", "--profile", "spec", "-o",
         str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    assert list(tmp_path.glob(".t.jsonl.*.tmp"))  # the writer's temporary file exists
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not list(tmp_path.glob(".*.tmp")) and not out.exists()


def test_peer_error_names_the_step() -> None:
    """A FramedProcess whose child never reads: the write is bounded by the timeout."""
    from virtio_balloon_proto.framing import FramedProcess

    peer = FramedProcess([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5,
                         max_frame=1 << 20, role="testee")
    peer.spawn()
    t0 = time.monotonic()
    try:
        with pytest.raises(PeerError, match="did not read the request") as ei:
            peer.exchange({"blob": "a" * (1 << 20)}, "avail inflate head 0")
    finally:
        peer.kill()
    assert time.monotonic() - t0 < 5
    assert ei.value.where == "avail inflate head 0"


# --------------------------------------------------------------------------- bitmap runs
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from virtio_balloon_proto.wire import bulk  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), ws=st.sampled_from([32, 64]),
       order=st.sampled_from(["le", "be"]), nbits=st.none() | st.integers(0, 1700),
       chunk=st.sampled_from([1, 3, 8, 1 << 20]))
def test_bitmap_runs_are_the_set_bits(data: bytes, ws: int, order: str, nbits: int | None,
                                      chunk: int) -> None:
    """Runs (first, length) cover exactly the positions bitmap_positions lists, in order,
    whatever the chunking (runs crossing a chunk boundary are one run)."""
    old = bulk._RUN_CHUNK
    bulk._RUN_CHUNK = chunk
    try:
        first, run = bulk.bitmap_runs(data, ws, order, nbits)
    finally:
        bulk._RUN_CHUNK = old
    pos = bulk.bitmap_positions(data, ws, order, nbits)
    expanded = [f + k for f, n in zip(first.tolist(), run.tolist(), strict=True)
                for k in range(n)]
    assert expanded == pos.tolist()
    assert all(n > 0 for n in run.tolist())
    ends = (first + run).tolist()
    assert all(ends[i] < first[i + 1] for i in range(len(ends) - 1))  # separate runs
    assert bulk.bitmap_popcount(data, ws, order, nbits) == pos.size


def test_v3_all_ones_bitmap_decodes_to_one_extent() -> None:
    from virtio_balloon_proto.wire import WireLayout, decode

    hdr = bytes.fromhex("00000c00000000000000000000000000"
                        "0000000000000000") + struct.pack("<Q", 1 << 16)
    d = decode("bmap", [hdr, b"\xff" * (1 << 16)], WireLayout("le", 64, "le", 4096),
               profile="v3", role="inflate")
    assert d.pages().n_extents == 1 and not d.pages().is_dense
    assert d.extents() == [[0, 1 << 19]]


@settings(max_examples=200, deadline=None)
@given(records=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(12, 15),
                                  st.integers(0, 63), st.lists(st.integers(0, (1 << 64) - 1),
                                                               min_size=8, max_size=8)),
                        max_size=12))
def test_hybrid_runs_are_the_blocks_bit_by_bit(
        records: list[tuple[int, int, int, list[int]]]) -> None:
    """The run-based hybrid decoder denotes exactly the blocks a bit-by-bit reading gives
    (little-endian records: start_pfn | page_shift << 52 | bmap_len << 58)."""
    from virtio_balloon_proto.pageset import PageSet
    from virtio_balloon_proto.wire import WireLayout, decode

    body = b""
    want: list[tuple[int, int]] = []
    for start, shift, blen, wvals in records:
        unit = 1 << (shift - 12)
        body += struct.pack("<Q", start | shift << 52 | blen << 58)
        if blen == 0:
            want.append((start, unit))
            continue
        nw = (blen + 7) // 8
        body += b"".join(struct.pack("<Q", w) for w in wvals[:nw])
        for bit in range(blen * 8):
            if wvals[bit // 64] >> (bit % 64) & 1:
                want.append((start + bit * unit, unit))
    data = struct.pack("<BBHI", 0, 0, 0, len(body)) + body
    d = decode("hybrid", data, WireLayout("le", 64, "le", 4096), profile="hybrid")
    expect = PageSet.from_extents([list(w) for w in want]) if want else PageSet()
    assert d.pages().extents() == expect.extents()


HOSTILE_CODEC = r"""
import struct, sys, time
inp, out = sys.stdin.buffer, sys.stdout.buffer
n = 0
while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    inp.read(struct.unpack("<I", head)[0])
    n += 1
    if n == 3:
        time.sleep(3600)  # a hang: one request fails, the codec is restarted
    body = [b'{"error": {"class": "\\ud800\\u0000\\u001b[31m"}}', b'{"fields": NaN}',
            b'{"pages": [["x", 1]]}', b'[' * 5000, b'{"chains": 1e309}'][n % 5]
    out.write(struct.pack("<I", len(body)) + body)
    out.flush()
"""


def test_vectors_verify_against_a_hostile_codec(tmp_path: Path) -> None:
    """Every answer garbage, one hang: verify ends (exit 1), JUnit parses, no traceback."""
    import xml.etree.ElementTree as ET

    codec = tmp_path / "codec.py"
    codec.write_text(HOSTILE_CODEC)
    r = vbproto("vectors", "verify", "--impl", f"stdio:{sys.executable} {codec}",
                "--timeout", "1", "--junit", str(tmp_path / "v.xml"), timeout=600)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr + r.stdout
    root = ET.parse(tmp_path / "v.xml").getroot()
    assert int(root.get("failures", "0")) > 0


# --------------------------------------------------------------------------- CLI sweep
SWEEP = [
    ["conform", "run", "--known-failures", "{fifo}", "--case", "spec/inflate-le"],
    ["conform", "run", "--known-failures", "/dev/zero", "--case", "spec/inflate-le"],
    ["trace", "import", "qemu-log", "{fifo}", "--profile", "spec", "-o", "{out}"],
    ["trace", "import", "qemu-log", "/dev/zero", "--profile", "spec", "-o", "{out}"],
    ["trace", "import", "qemu-core", "{fifo}", "--queue-status", "{fifo}", "--profile", "spec",
     "-o", "{out}"],
    ["conform", "check", "{fifo}"],
    ["trace", "validate", "{dir}"],
    ["message", "decode", "--kind", "pfns", "@{fifo}"],
    ["message", "decode", "--kind", "pfns", "--page-size", "18446744073709551616", "00"],
    ["message", "encode", "--kind", "hybrid", "--profile", "hybrid",
     '{"pages": [[67777777777777777, 1]]}'],
    ["analyze", "--pages", "9" * 5000],
    ["analyze", "--shape", "sparse", "--frames", "18446744073709551616"],
]


@pytest.mark.parametrize("args", SWEEP, ids=[" ".join(a)[:60] for a in SWEEP])
def test_cli_sweep_no_traceback_no_hang(args: list[str], tmp_path: Path) -> None:
    """Malformed invocations found by a sweep of 280 (every one must end, exit 0-2, and
    never print a traceback); these three used to hang: a FIFO or /dev/zero as the
    known-failures file or as a QEMU trace log."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    argv = [a.replace("{fifo}", str(fifo)).replace("{dir}", str(tmp_path))
            .replace("{out}", str(tmp_path / "o.jsonl")) for a in args]
    r = vbproto(*argv, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode in (0, 1, 2), (r.returncode, r.stderr[-1000:])


def test_known_failures_file_with_a_huge_integer_is_a_usage_error(tmp_path: Path) -> None:
    """Found by tests/test_fuzz.py (known_failures target): tomllib's int() of a 5000-digit
    value raised a bare ValueError (Python's int_max_str_digits), a traceback."""
    import pytest

    from virtio_balloon_proto.conformance.known_failures import KnownFailures
    from virtio_balloon_proto.errors import UsageError

    kf = tmp_path / "kf.toml"
    kf.write_text("[[failure]]\ncase = " + "9" * 5000 + "\n")
    with pytest.raises(UsageError, match="not a valid TOML file"):
        KnownFailures.load(kf)
