"""TraceWriter's orjson line (trace/writer.py ``_dumps_line``) is the stdlib's line, byte for byte.

Traces are compared byte for byte (the corpus, vectors/, ``trace synth`` outputs), so the
fast path must never change a byte: every record here, whatever strings (non-ASCII, DEL,
control characters, lone surrogates), integers (beyond 64 bits) or ``ts`` floats it holds,
must come out as ``json.dumps(separators=(",", ":"), ensure_ascii=True)`` writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto.trace.writer import _dumps_line

keys = st.text(max_size=6)
strings = st.text(st.characters(codec=None, categories=None), max_size=12) | st.sampled_from(
    ["\x7f", "a\x00b", "\ud800", "é", "\u2028", "0x1066000", "9dcf0b00" * 4])
ints = st.integers(-(2**70), 2**70) | st.integers(0, 2**64 - 1)
scalars = st.none() | st.booleans() | ints | strings
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(keys, inner, max_size=4), max_leaves=20)


def stdlib_line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")


@settings(max_examples=300, deadline=None)
@given(rec=st.dictionaries(keys, values, max_size=6),
       ts=st.none() | st.floats(0, 1e30, allow_nan=False) | st.sampled_from([1e16, 1e-05, 2.5]))
def test_fast_line_is_the_stdlib_line(rec: dict[str, Any], ts: float | None) -> None:
    if ts is not None:
        rec["ts"] = ts
    assert _dumps_line(rec) == stdlib_line(rec)


def test_fast_line_on_synthesised_traces() -> None:
    """Every record of the shipped corpus (as read back) is written as the stdlib writes it."""
    corpus = Path(__file__).resolve().parent.parent / "conformance" / "traces"
    n = 0
    for path in sorted(corpus.rglob("*.jsonl"))[:40]:
        for line in path.read_bytes().splitlines():
            rec = json.loads(line)
            assert _dumps_line(rec) == stdlib_line(rec), path
            n += 1
    assert n > 1000
