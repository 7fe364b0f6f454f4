"""Reading and validating ``vbproto-trace/1`` files (docs/trace-format.md).

* Reading streams: one line at a time, each line bounded (``MAX_LINE``, 64 MiB), every record
  checked against the shipped JSON Schema (:mod:`.schema`, validator compiled once) and the
  rules the schema cannot express (``semantics.semantic_problems``).  Memory use is one
  record, whatever the file size.
* Validation reports every problem with its line number instead of stopping at the first
  (:func:`iter_problems`, :func:`validate_trace`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from ..errors import TraceError, VBProtoError
from ..limits import MAX_LINE, loads_json, number_shape, open_regular
from .events import _FROM_JSON, Event, event_from_json
from .header import TraceHeader, header_from_json
from .schema import _reading_validator, schema_problems
from .semantics import semantic_problems


@dataclass(frozen=True, slots=True)
class TraceProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def _open(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open a trace without blocking on a FIFO; pipes and devices are read as streams
    (every line is bounded, so ``/dev/zero`` ends with an error)."""
    f, _ = open_regular(path, what="trace", error=TraceError, allow_stream=True)
    return f


def _lines(f: IO[bytes], max_line: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without newline) -- or None for a line longer than ``max_line``,
    whose rest is skipped in bounded chunks; a line that does not end within another
    ``max_line`` bytes ends the stream (it is not a trace, e.g. ``/dev/zero``)."""
    n = 0
    while True:
        raw = f.readline(max_line + 1)
        if not raw:
            return
        n += 1
        if len(raw) > max_line and not raw.endswith(b"\n"):
            skipped = 0
            while True:  # skip the rest of the over-long line without keeping it
                chunk = f.readline(1 << 20)
                skipped += len(chunk)
                if not chunk or chunk.endswith(b"\n"):
                    break
                if skipped > max_line:
                    yield n, None
                    return
            yield n, None
            continue
        yield n, raw.rstrip(b"\r\n")


#: a number with a fraction or exponent, in :func:`~..limits.number_shape` classes (a literal
#: ':' first: the matcher jumps between the line's few ':' ',' '[' instead of walking its hex):
#: the only such number a trace may hold is ``ts``, and a JSON Schema "integer" also matches
#: 4096.0 (2020-12 counts a number by its value), so this finds the lines worth walking for a
#: float elsewhere
_FRACTION = re.compile(rb":-?0+\.")


def _float_path(node: Any, path: str) -> tuple[str, float] | None:
    """The first float in ``node`` that is not a ``ts`` value: (its JSON path, the value)."""
    if isinstance(node, float):
        return path, node
    if isinstance(node, dict):
        for k, v in node.items():
            if k != "ts" and isinstance(v, (float, dict, list)):
                hit = _float_path(v, f"{path}/{k}" if path else str(k))
                if hit:
                    return hit
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, (float, dict, list)):
                hit = _float_path(v, f"{path}/{i}")
                if hit:
                    return hit
    return None


def _parse_line(raw: bytes) -> Any:
    """One record: strict JSON (limits.loads_json: depth, NaN/Infinity, integer size), and
    every number an integer but ``ts`` (``"host_page_size": 4096.0`` passed the schema)."""
    shape = number_shape(raw)
    obj = loads_json(raw, what="record", error=TraceError, max_bytes=len(raw), shape=shape)
    if _FRACTION.search(shape):
        hit = _float_path(obj, "")
        if hit:
            raise TraceError(f"{hit[0]}: {hit[1]!r} is not an integer (only ts may have a "
                             "fraction or an exponent)")
    return obj


#: record types model.semantic_problems has rules for when the header has no window
_SEMANTIC_TYPES = frozenset({"header", "avail", "used"})


class TraceReader:
    """Stream a trace: ``header`` is read on open, ``events()`` yields the rest.

    Raises :class:`TraceError` naming the line at the first record that is not valid.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_line: int = MAX_LINE) -> None:
        self.path = str(path)
        self.max_line = max_line
        self._f = _open(path)
        self._lines = _lines(self._f, max_line)
        self.line = 0
        try:
            first = next(self._lines, None)
            if first is None:
                raise TraceError("empty file: no header record", where=self._where(1))
            self.line, raw = first
            obj = self._record(raw)
            if not isinstance(obj, dict) or obj.get("type") != "header":
                raise TraceError(
                    'line 1 must be the header record ({"type": "header", ...})',
                    where=self._where(1),
                )
            self._check(obj, None)
            self.header: TraceHeader = header_from_json(obj, where=self._where(1))
        except BaseException:
            self._f.close()
            raise

    def _where(self, line: int) -> str:
        return f"{self.path} line {line}"

    def _record(self, raw: bytes | None) -> Any:
        if raw is None:
            raise TraceError(
                f"line is longer than {self.max_line} bytes", where=self._where(self.line)
            )
        try:
            return _parse_line(raw)
        except TraceError as exc:
            raise TraceError(exc.message, where=self._where(self.line)) from None

    def _check(self, obj: Any, header: TraceHeader | None) -> None:
        probs = schema_problems(obj)
        if not probs:
            probs = list(semantic_problems(header, obj))
        if probs:
            raise TraceError("; ".join(probs), where=self._where(self.line))

    def events(self) -> Iterator[Event]:
        # a valid record costs one call of the compiled validator (hex checked by character
        # class) and its conversion, whose bytes.fromhex refuses what else the schema's hex
        # pattern would: anything it does not accept is checked against the whole schema,
        # which names the problem as before (issue 13)
        valid = _reading_validator().is_valid
        convert = _FROM_JSON
        header = self.header
        windowed = header.window is not None
        for line, raw in self._lines:
            self.line = line
            if raw is not None and (not raw or raw.isspace()):
                continue  # blank lines are allowed (docs/trace-format.md)
            obj = self._record(raw)
            ev: Event | None = None
            try:
                fine = valid(obj)
            except (ValueError, OverflowError, TypeError):
                fine = False
            if fine:
                try:
                    ev = convert[obj["type"]](obj)  # a header: KeyError, judged below
                except (KeyError, ValueError, TypeError):
                    pass
            if ev is not None:
                # the rules a schema cannot say concern windows and the queue records only
                if windowed or obj["type"] in _SEMANTIC_TYPES:
                    probs = list(semantic_problems(header, obj))
                    if probs:
                        raise TraceError("; ".join(probs), where=self._where(line))
            else:
                self._check(obj, header)  # names the problems (or finds none: checked again)
            if obj["type"] == "header":
                raise TraceError("a second header record", where=self._where(line))
            if ev is None:
                ev = event_from_json(obj, where=self._where(line))  # says what did not convert
            yield ev

    def numbered_events(self) -> Iterator[tuple[int, Event]]:
        """Events with the line each came from (for decoders that report positions)."""
        for ev in self.events():
            yield self.line, ev

    __iter__ = events

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_trace(path: str | os.PathLike[str]) -> tuple[TraceHeader, list[Event]]:
    """Read a whole (small) trace into memory.  Use :class:`TraceReader` for large ones."""
    with TraceReader(path) as r:
        return r.header, list(r.events())


def iter_problems(
    path: str | os.PathLike[str], *, max_line: int = MAX_LINE
) -> Iterator[TraceProblem]:
    """Every problem of a trace, in line order.

    Raises :class:`TraceError` (not a problem) when the file cannot be read as a trace at all:
    it cannot be opened, or its first line is not a JSON object.
    """
    with _open(path) as f:
        header: TraceHeader | None = None
        seen = False
        for n, raw in _lines(f, max_line):
            seen = True
            if raw is None:
                if n == 1:
                    raise TraceError(f"first line is longer than {max_line} bytes", where=str(path))
                yield TraceProblem(n, f"line is longer than {max_line} bytes")
                continue
            if n > 1 and not raw.strip():
                continue
            try:
                obj = _parse_line(raw)
            except TraceError as exc:
                if n == 1:
                    raise TraceError(f"not a trace: line 1: {exc.message}",
                                     where=str(path)) from None
                yield TraceProblem(n, exc.message)
                continue
            if n == 1 and not isinstance(obj, dict):
                raise TraceError("not a trace: line 1 is not a JSON object", where=str(path))
            probs = schema_problems(obj)
            if n == 1 and isinstance(obj, dict) and obj.get("type") != "header":
                probs.insert(0, "line 1 must be the header record")
            if n > 1 and isinstance(obj, dict) and obj.get("type") == "header":
                probs.insert(0, "a second header record (only line 1 may be a header)")
            if not probs:
                probs = list(semantic_problems(header, obj))
            for p in probs:
                yield TraceProblem(n, p)
            if n == 1 and not probs:
                try:
                    header = header_from_json(obj)
                except VBProtoError as exc:
                    yield TraceProblem(1, exc.message)
        if not seen:  # as the reader says it (vbproto decode)
            raise TraceError("empty file: no header record", where=f"{path} line 1")


def validate_trace(path: str | os.PathLike[str], *, limit: int | None = None) -> list[TraceProblem]:
    out = []
    for p in iter_problems(path):
        out.append(p)
        if limit is not None and len(out) >= limit:
            break
    return out
