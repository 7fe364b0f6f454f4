"""Writing ``vbproto-trace/1`` files (docs/trace-format.md).

Writing is atomic: records go to a temporary file in the target's directory, which is
flushed, fsync'ed and renamed over the target only when the writer closes without error
(:class:`TraceWriter`, :func:`write_trace`); each record is checked against the schema first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from ..errors import TraceError
from ..io import open_output
from .events import Event
from .header import TraceHeader
from .schema import schema_problems


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


def _dumps_line(obj: dict[str, Any]) -> bytes:
    """``_dumps(obj)`` as ASCII bytes with a newline, through orjson where that gives the same
    bytes (~10x faster; issue 13: ``trace synth`` writes 16.6 MB for the 7 GiB inflate).

    orjson writes compact JSON as the stdlib does except: non-ASCII and DEL (0x7F) unescaped
    (then the stdlib writes the line), integers beyond 64 bits and lone surrogates refused
    (same), and floats spelled differently (``1e16``, not ``1e+16``): a record with ``ts``,
    the only number a trace may hold that is not an integer (the reader refuses any other
    float, ``_FLOAT_TOKEN``), goes to the stdlib.  tests/test_trace_write_fast.py checks the two
    agree."""
    if "ts" not in obj:
        try:
            out = orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
        except (orjson.JSONEncodeError, TypeError):
            pass
        else:
            if out.isascii() and b"\x7f" not in out:
                return out
    return (_dumps(obj) + "\n").encode("ascii")


class TraceWriter:
    """Write a trace: ``with TraceWriter(path, header) as w: w.write(event)``.

    The output contract of :mod:`virtio_balloon_proto.io`: ``-`` streams to stdout, a device
    or FIFO is written in place, a regular file (or a symlink's target) is replaced atomically
    -- nothing appears there until the block ends without an exception, so readers never see
    half a trace.  Every record is checked against the schema as it is written
    (``validate=False`` skips that).
    """

    def __init__(
        self, path: str | os.PathLike[str], header: TraceHeader, *, validate: bool = True
    ) -> None:
        self.path = Path(path)
        self.validate = validate
        self.count = 0
        self._out = open_output(path)
        try:
            self._put(header.to_json())
        except BaseException:
            self.abort()
            raise

    def _put(self, obj: dict[str, Any]) -> None:
        if self.validate:
            probs = schema_problems(obj)
            if probs:
                raise TraceError(
                    "refusing to write an invalid record: " + "; ".join(probs),
                    where=f"{self.path} record {self.count + 1}",
                )
        self._out.write(_dumps_line(obj))
        self.count += 1

    def write(self, event: Event) -> None:
        self._put(event.to_json())

    def commit(self) -> None:
        self._out.commit()

    def abort(self) -> None:
        self._out.abort()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_trace(
    path: str | os.PathLike[str], header: TraceHeader, events: Iterator[Event] | list[Event]
) -> int:
    """Write ``header`` and ``events`` atomically; returns the number of events."""
    with TraceWriter(path, header) as w:
        for ev in events:
            w.write(ev)
        return w.count - 1
