#!/usr/bin/env python3
"""Issue 12 bench: memory and work bounded by the input, on the worst shapes measured.

    python3 bench/hostile.py            # prints the table
    python3 bench/hostile.py overlap ring   # only rows whose name holds a word (ring: rings)

Each row runs one ``vbproto`` command in a child process and reads the child's peak RSS
(``os.wait4``: that child's own rusage); the floor is a child
that imports the CLI and numpy and does nothing.  Ratios are (peak - floor) / input bytes,
so they mean the same on any machine; the target is <= 16 for every row.  The alternating-bit
rows are the worst case for extents (4 runs per input byte, 16 bytes each: 178x and 345x
before PageSet's bit-block form, 176x and 257x for pages of 2^k frames before its scaled
form); the unaligned row starts its bitmap off a 512-frame block.
The trace rows run ``decode`` on a trace whose one inflate buffer is such a message (its
ratio is per trace byte: the hex is twice the message), and ``conform check`` on one where the
device also used it (the oracle's balloon takes its pages; exit 1, a clause broken, counts).
The ring rows time the import of a split/packed ring dump whose chains all share one
65,536-entry indirect table (issue 12: 52 s before; target < 2 s wall).
Every row prints the child's wall and CPU seconds (user + system: on a loaded machine the
CPU time says more); the load average (1, 5, 15 min) is printed before and after the table.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CLI = [sys.executable, "-m", "virtio_balloon_proto"]


def child_peak(argv: list[str], ok: tuple[int, ...] = (0,)) -> tuple[int, float]:
    """(peak RSS in bytes, seconds) of one child run: ``wait4`` gives that child's own
    rusage (RUSAGE_CHILDREN is the largest of any child so far, which hid every row smaller
    than an earlier one).  The child's CPU seconds (user + system) are kept in LAST_CPU: on
    a loaded machine they say more than the wall clock."""
    global LAST_CPU
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    took = time.perf_counter() - t0
    if p.returncode not in ok:
        raise SystemExit(f"{argv}: exit {p.returncode}: {err[-500:]}")
    LAST_CPU = usage.ru_utime + usage.ru_stime
    return usage.ru_maxrss * 1024, took


LAST_CPU = 0.0


def v3_bitmap(fill: int, n: int = 4 << 20, start_pfn: int = 0, page_shift: int = 12) -> bytes:
    hdr = struct.pack("<HHHHQQQ", 0, page_shift, 0, 0, 0, start_pfn, n)
    return hdr + bytes([fill]) * n


def hybrid_records(fill: int, n: int = 7 << 20, stride: int = 1024, page_shift: int = 12,
                   odd_phase: int = 0, odd_shift: int | None = None, phases: int = 2,
                   orders: int = 1) -> bytes:
    """Records of 8 bitmap words each; ``stride`` frames apart (< 504 << order: they overlap).
    Every odd record has page_shift ``odd_shift`` (default: the same; with ``orders`` > 1,
    record r has page_shift ``page_shift + r % orders``), and record r starts
    ``(r % phases) * odd_phase`` frames later: records of several scales."""
    body = bytearray()
    for r in range(n // 72):
        shift = (page_shift + r % orders if odd_shift is None
                 else page_shift if r % 2 == 0 else odd_shift)
        start = r * stride + (r % phases) * odd_phase
        body += struct.pack("<Q", start | shift << 52 | 63 << 58)
        body += struct.pack("<Q", fill) * 8
    return struct.pack("<BBHI", 0, 0, 0, len(body)) + bytes(body)


def hybrid_small(n: int = 7 << 20, stride: int = 2, blen: int = 0, orders: int = 1,
                 phases: int = 1, word: int = 1, order: int = 0) -> bytes:
    """Records of at most one bitmap word (``word``: bit 0 set; ``blen`` 0: plain records),
    ``stride`` frames apart, record r of order ``order + r % orders`` starting ``r % phases``
    later: the most records, and the most runs, per input byte."""
    body = bytearray()
    word = struct.pack("<Q", word) if blen else b""
    for r in range(n // (8 + len(word))):
        start = r * stride + r % phases
        body += struct.pack("<Q", start | (12 + order + r % orders) << 52 | blen << 58) + word
    return struct.pack("<BBHI", 0, 0, 0, len(body)) + bytes(body)


def hybrid_mixed(n: int = 7 << 20, plain: int = 64, phases: int = 8, page_shift: int = 15,
                 once: bool = False, reverse: bool = False) -> bytes:
    """``plain`` plain order-0 records (at odd frames, every other one) after each record of
    8 words of 0x55.. of page_shift ``page_shift`` at one of ``phases`` phases (``once``:
    after the first only; ``reverse``: records in descending start order): records of two
    forms, the most per byte, in a message that is swept (hybridset.py)."""
    nrec = 1
    while 72 * (nrec + 1) + 8 * plain * (1 if once else nrec + 1) <= n - 8:
        nrec += 1
    size = 72 * nrec + 8 * plain * (1 if once else nrec)
    body = bytearray(size)
    at = size if reverse else 0
    frame = 0

    def put(rec: bytes) -> None:
        nonlocal at
        if reverse:
            at -= len(rec)
            body[at:at + len(rec)] = rec
        else:
            body[at:at + len(rec)] = rec
            at += len(rec)

    for r in range(nrec):
        put(struct.pack("<Q", frame + r % phases | page_shift << 52 | 63 << 58)
            + struct.pack("<Q", 0x5555555555555555) * 8)
        frame += 504 << (page_shift - 12)
        for _ in range(plain if r == 0 or not once else 0):
            put(struct.pack("<Q", frame + 1 | 12 << 52))
            frame += 2
    return struct.pack("<BBHI", 0, 0, 0, len(body)) + bytes(body)


def hybrid_trace(msg: bytes, used: bool = False) -> str:
    """A hybrid trace (the corpus's inflate-le header lines) whose one inflate buffer is
    ``msg``: its resp header and records in two descriptors (``used``: and the device's used
    element for it, so ``conform check``'s oracle puts its pages in the balloon)."""
    src = Path(__file__).resolve().parent.parent / "conformance/traces/hybrid/inflate-le.jsonl"
    head = src.read_text().splitlines()[:8]  # header .. the first config_read
    hdr, body = msg[:8], msg[8:]
    ev = {"type": "avail", "role": "inflate", "queue": 0, "id": 0, "avail_idx": 0,
          "descriptors": [{"addr": "0x106a000", "len": 8, "flags": 1, "next": 1, "index": 0},
                          {"addr": "0x1100000", "len": len(body), "flags": 0, "next": 0,
                           "index": 1}],
          "out": [hdr.hex(), body.hex()], "in": []}
    tail = (json.dumps({"type": "used", "role": "inflate", "queue": 0, "id": 0, "len": 0}) + "\n"
            if used else "")
    return "\n".join(head) + "\n" + json.dumps(ev, separators=(",", ":")) + "\n" + tail


def shared_table_dump(kind: str, chains: int) -> bytes:
    table, data = 0x100000, 0x200000
    mem = bytearray(0x300000)
    for k in range(65536):
        if kind == "split":
            last = k == 65535
            struct.pack_into("<QIHH", mem, table + 16 * k, data + 16 * k, 16,
                             0 if last else 1, 0 if last else k + 1)
        else:
            struct.pack_into("<QIHH", mem, table + 16 * k, data + 16 * k, 16, 0, 0)
    for c in range(chains):
        if kind == "split":
            struct.pack_into("<QIHH", mem, 16 * c, table, 65536 * 16, 4, 0)
            struct.pack_into("<H", mem, 0x80000 + 4 + 2 * c, c)
        else:
            struct.pack_into("<QIHH", mem, 16 * c, table, 65536 * 16, c, 4 | (1 << 7))
    if kind == "split":
        struct.pack_into("<HH", mem, 0x80000, 0, chains)
    return bytes(mem)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="vbproto-bench-") as name:
        return _bench(Path(name))


def _bench(tmp: Path) -> int:
    floor, _ = child_peak([sys.executable, "-c", "import virtio_balloon_proto.cli, numpy"])
    print(f"load average before: {_load()}")
    print(f"floor (interpreter + imports): {floor / 2**20:.0f} MiB\n")
    print(f"{'row':64} {'input':>7} {'peak':>7} {'ratio':>6} {'wall':>6} {'cpu':>6}")
    rows: list[tuple[str, Callable[[], bytes], list[str]]] = [
        ("v3 bitmap 4 MiB all ones", lambda: v3_bitmap(0xFF),
         ["--profile", "v3", "--kind", "bmap"]),
        ("hybrid 7 MiB, bitmap words all ones", lambda: hybrid_records(0xFFFFFFFFFFFFFFFF),
         ["--profile", "hybrid", "--kind", "hybrid"]),
        ("v3 bitmap 4 MiB 0x55 (worst: 4 runs/byte)", lambda: v3_bitmap(0x55),
         ["--profile", "v3", "--kind", "bmap"]),
        ("hybrid 7 MiB, words 0x55.. (worst)", lambda: hybrid_records(0x5555555555555555),
         ["--profile", "hybrid", "--kind", "hybrid"]),
        ("v3 bitmap 4 MiB 0x55, start_pfn 0x12345", lambda: v3_bitmap(0x55, start_pfn=0x12345),
         ["--profile", "v3", "--kind", "bmap"]),
        ("v3 bitmap 4 MiB 0x55, page_shift 14", lambda: v3_bitmap(0x55, page_shift=14),
         ["--profile", "v3", "--kind", "bmap", "--page-size", "16384"]),
        ("v3 bitmap 4 MiB 0x55, page_shift 16 (overlap)", lambda: v3_bitmap(0x55, page_shift=16),
         ["--profile", "v3", "--kind", "bmap", "--page-size", "65536"]),
        ("v3 bitmap 4 MiB 0x55, page_shift 14, misc", lambda: v3_bitmap(0x55, page_shift=14),
         ["--profile", "v3", "--kind", "bmap", "--page-size", "16384", "--role", "misc"]),
        ("hybrid 7 MiB, order 1, words 0x55..",
         lambda: hybrid_records(0x5555555555555555, page_shift=13, stride=2048),
         ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, overlapping, words 0x55..",
         lambda: hybrid_records(0x5555555555555555, stride=256),
         ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, overlapping order 3, 0x55..",
         lambda: hybrid_records(0x5555555555555555, stride=64, page_shift=15),
         ["--profile", "hybrid", "--kind", "hybrid"]),
        # two scales in one message: one set of blocks, bits widened (hybridbits.py)
        ("hybrid 7 MiB, order 1, phases 0/1, 0x55..",
         lambda: hybrid_records(0x5555555555555555, page_shift=13, stride=2048, odd_phase=1),
         ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, orders 0/1, 0x55..",
         lambda: hybrid_records(0x5555555555555555, page_shift=12, stride=2048, odd_shift=13),
         ["--profile", "hybrid", "--kind", "hybrid"]),
        # scales no widening by <= 4 units joins (hybridset.py: the records are swept in
        # start order, their union never built; 107x and 190x before)
        ("hybrid 7 MiB, order 3, 8 phases, 0x55..",
         lambda: hybrid_records(0x5555555555555555, page_shift=15, stride=8192, odd_phase=1,
                                phases=8),
         ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, order 20, 4 phases, 0x55..",
         lambda: hybrid_records(0x5555555555555555, page_shift=32, stride=1 << 29,
                                odd_phase=1, phases=4),
         ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, order 20, 4 phases, overlapping, 0x55..",
         lambda: hybrid_records(0x5555555555555555, page_shift=32, stride=3 << 20,
                                odd_phase=1, phases=4),
         ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, orders 0-51, 7 phases, 0x55..",
         lambda: hybrid_records(0x5555555555555555, page_shift=12, stride=1 << 35,
                                odd_phase=1, phases=7, orders=52),
         ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, 64 plain records per 0x55.. record at 8 phases",
         lambda: hybrid_mixed(), ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, 256 plain records per 0x55.. record at 8 phases",
         lambda: hybrid_mixed(plain=256), ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, 240 plain records per 0x55.. record at 1 phase",
         lambda: hybrid_mixed(plain=240, phases=1), ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, 8 plain records per 0x55.. record at 1 phase",
         lambda: hybrid_mixed(plain=8, phases=1), ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, 0x55.. records of order 3 and one plain record",
         lambda: hybrid_mixed(plain=1, phases=1, once=True),
         ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, 64 plain records per 0x55.. record, descending",
         lambda: hybrid_mixed(reverse=True), ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, two-run records, orders 0-7, 3 phases",
         lambda: hybrid_small(stride=4096, blen=1, orders=8, phases=3, word=0b101),
         ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, one-word records 0x55.., order 3, 5 phases",
         lambda: hybrid_small(stride=512, blen=8, phases=5, order=3, word=0x5555555555555555),
         ["--profile", "hybrid", "--kind", "hybrid"]),
        # the most records per byte: the decoder's per-record arrays (one-bit records far
        # apart were a 72-byte block each before hybridbits.blocks_pay sent them to extents)
        ("hybrid 7 MiB, plain order-0 records, alternating",
         lambda: hybrid_small(), ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, one-bit records, stride 1024",
         lambda: hybrid_small(stride=1024, blen=1), ["--profile", "hybrid", "--kind", "hybrid"]),
        ("hybrid 7 MiB, one-bit records, orders 0-7, 3 phases",
         lambda: hybrid_small(stride=4096, blen=1, orders=8, phases=3),
         ["--profile", "hybrid", "--kind", "hybrid"]),
    ]
    only = sys.argv[1:]  # substrings of row names: run only those (and skip the rings)
    for name, make, opts in rows:
        if only and not any(o in name for o in only):
            continue
        path = tmp / "msg.bin"
        data = make()
        path.write_bytes(data)
        size = len(data)
        # a child's peak RSS counts the pages it shares with this process before exec: the
        # rows' inputs built at once (59 MiB) made every row at least 92 MiB (15.8x "peak")
        del data
        peak, took = child_peak([*CLI, "message", "decode", *opts, f"@{path}"])
        ratio = (peak - floor) / size
        print(f"{name:64} {size / 2**20:5.1f}Mi {peak / 2**20:5.0f}Mi {ratio:6.1f} "
              f"{took:5.1f}s {LAST_CPU:5.1f}s")
    # decode (the capture decoder) of a trace holding one such message (hex: twice its bytes)
    for name, make in [("trace: one hybrid message, order 3, 8 phases (decode)",
                        lambda: hybrid_records(0x5555555555555555, page_shift=15, stride=8192,
                                               odd_phase=1, phases=8)),
                       ("trace: one hybrid message, one-word records (decode)",
                        lambda: hybrid_small(stride=512, blen=8, phases=5, order=3,
                                             word=0x5555555555555555))]:
        if only and not any(o in name for o in only):
            continue
        path = tmp / "trace.jsonl"
        path.write_text(hybrid_trace(make()))
        size = path.stat().st_size
        peak, took = child_peak([*CLI, "decode", str(path)])
        print(f"{name:64} {size / 2**20:5.1f}Mi {peak / 2**20:5.0f}Mi "
              f"{(peak - floor) / size:6.1f} {took:5.1f}s {LAST_CPU:5.1f}s")
    # conform check of such a trace, the message used: the oracle's balloon (a FrameMap) takes
    # its pages (issue 12: 1.3-2.2 GB before FrameMap read sets a chunk of runs at a time)
    for name, make in [("trace: one hybrid message, 0x55.., order 0 (conform check)",
                        lambda: hybrid_records(0x5555555555555555)),
                       ("trace: one hybrid message, order 20, 4 phases (conform check)",
                        lambda: hybrid_records(0x5555555555555555, page_shift=32,
                                               stride=1 << 29, odd_phase=1, phases=4)),
                       ("trace: one hybrid message, order 3, 8 phases (conform check)",
                        lambda: hybrid_records(0x5555555555555555, page_shift=15, stride=8192,
                                               odd_phase=1, phases=8)),
                       ("trace: one hybrid message, orders 0-51, 7 phases (conform check)",
                        lambda: hybrid_records(0x5555555555555555, stride=1 << 35,
                                               odd_phase=1, phases=7, orders=52))]:
        if only and not any(o in name for o in only):
            continue
        path = tmp / "trace.jsonl"
        path.write_text(hybrid_trace(make(), used=True))
        size = path.stat().st_size
        # exit 1: a clause broken (a hostile driver's buffer may break some) is still a run
        peak, took = child_peak([*CLI, "conform", "check", str(path)], ok=(0, 1))
        print(f"{name:64} {size / 2**20:5.1f}Mi {peak / 2**20:5.0f}Mi "
              f"{(peak - floor) / size:6.1f} {took:5.1f}s {LAST_CPU:5.1f}s")
    for kind in ("split", "packed") if not only or "ring" in only else ():
        for chains in (8, 256):
            dump = tmp / f"{kind}.bin"
            dump.write_bytes(shared_table_dump(kind, chains))
            args = [*CLI, "trace", "import", f"{kind}-ring", "--memory", f"{dump}@0", "--size",
                    "256", "--role", "inflate", "--desc", "0", "--profile", "spec",
                    "-o", str(tmp / "t.jsonl")]
            args += (["--avail", "0x80000", "--used", "0xC0000", "--last-avail", "0"]
                     if kind == "split" else ["--position", "0", "--wrap", "1"])
            _, took = child_peak(args)
            size = os.path.getsize(tmp / "t.jsonl")
            name = f"{kind} ring, {chains} chains share a 64Ki table"
            print(f"{name:64} {'3.0Mi':>7} {'':>7} {'':>6} {took:5.2f}s {LAST_CPU:5.2f}s  "
                  f"(trace {size / 2**20:.1f} MiB, load {os.getloadavg()[0]:.1f})")
    print(f"\nload average after: {_load()}")
    return 0


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"


if __name__ == "__main__":
    sys.exit(main())
