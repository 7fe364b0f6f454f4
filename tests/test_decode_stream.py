"""``decode`` of a trace writes each message's JSON in pieces (issue 12: memory follows the
input, not the output): a buffer of hybrid records with 0x55 bitmap words is ~28 bytes of
JSON per input byte, and printing it as one object took 4 GB for a 14.7 MB trace."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
from hybrid_traces import x55_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.trace import TraceReader
from virtio_balloon_proto.tracedecode import decode_trace
from virtio_balloon_proto.wire.messages import iter_extents_json

ROOT = Path(__file__).resolve().parents[1]
CORPUS = sorted((ROOT / "conformance" / "traces").glob("*/*.jsonl"))


def test_every_corpus_message_streams_the_json_it_would_dump() -> None:
    n = 0
    for trace in CORPUS:
        with TraceReader(str(trace)) as reader:
            for d in decode_trace(reader):
                assert "".join(d.iter_json(chunk=3)) == json.dumps(d.to_json()), trace.name
                n += 1
    assert n > 500


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, (1 << 64) - 1), st.integers(1, 1 << 20)),
                max_size=40), st.integers(1, 7))
def test_extents_json_in_pieces_is_json_dumps_of_extents(runs: list[tuple[int, int]],
                                                         chunk: int) -> None:
    ps = PageSet.empty()
    for first, count in runs:
        ps = ps | PageSet.from_extents([[first, min(count, (1 << 64) - first)]])
    assert "".join(iter_extents_json(ps, chunk)) == json.dumps(ps.extents())


def test_the_count_of_all_frames_is_two_to_the_64() -> None:
    whole = PageSet.from_extents([[0, 1 << 63]]) | PageSet.from_extents([[1 << 63, 1 << 63]])
    assert "".join(iter_extents_json(whole)) == "[[0, 18446744073709551616]]"


def _peak(trace: Path, out: str) -> tuple[int, int]:
    """(peak traced bytes, JSON characters written) decoding ``trace`` with output ``out``."""
    tracemalloc.start()
    try:
        written = 0
        with TraceReader(str(trace)) as reader:
            for d in decode_trace(reader):
                if out == "stream":
                    written += sum(len(piece) for piece in d.iter_json())
                elif out == "dumps":
                    written += len(json.dumps(d.to_json()))
        return tracemalloc.get_traced_memory()[1], written
    finally:
        tracemalloc.stop()


def test_decoding_a_big_buffer_to_json_takes_no_memory_for_the_output(tmp_path: Path) -> None:
    """The JSON of one 512 KiB buffer is 13x the trace; streaming it adds at most 2x the
    trace to what decoding alone peaks at (printing it as one object added ~115x).  Decoding
    alone peaks at ~16x in tracemalloc: orjson reserves ~12x a line it parses, most of it
    never touched (the CLI's peak RSS is ~8x a 14.7 MB trace: bench/hostile.py)."""
    trace = tmp_path / "big.jsonl"
    size = x55_trace(trace, 1 << 19, 256)
    _peak(trace, "none")  # imports and first-use caches out of the measure
    alone, _ = _peak(trace, "none")
    streamed, written = _peak(trace, "stream")
    assert written > 10 * size  # the output is far bigger than the input ...
    assert streamed - alone <= 2 * size, f"{(streamed - alone) / size:.1f}x"  # ... its memory not


def test_decode_json_cli_prints_the_streamed_objects(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    x55_trace(trace, 4096, 256)
    r = subprocess.run([sys.executable, "-m", "virtio_balloon_proto", "decode", "--json",
                        str(trace)], capture_output=True, text=True, check=True)
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    buf = [x for x in lines if x.get("kind") == "hybrid"]
    assert len(buf) == 1 and len(buf[0]["fields"]["records"]) == 4096 // 72
    frames = sum(c for _, c in buf[0]["pages"])
    assert frames == np.unique(np.concatenate(
        [r * 256 + np.arange(0, 504, 2) for r in range(4096 // 72)])).size
