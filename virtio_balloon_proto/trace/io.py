"""Reading, writing and validating ``vbproto-trace/1`` files (docs/trace-format.md).

* Reading streams: one line at a time, each line bounded (``MAX_LINE``, 64 MiB), every record
  checked against the shipped JSON Schema (validator compiled once) and the rules the schema
  cannot express (``model.semantic_problems``).  Memory use is one record, whatever the file
  size.
* Writing is atomic: records go to a temporary file in the target's directory, which is
  flushed, fsync'ed and renamed over the target only when the writer closes without error.
* Validation reports every problem with its line number instead of stopping at the first.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import orjson

from ..errors import TraceError, VBProtoError
from ..io import open_output
from ..limits import MAX_LINE as MAX_LINE
from ..limits import loads_json, number_shape, open_regular
from ..schemas import shipped_schema
from .events import _FROM_JSON, Event, event_from_json
from .header import TraceHeader, header_from_json
from .semantics import semantic_problems

if TYPE_CHECKING:  # jsonschema (~40 ms to import) only explains a record jsonschema-rs refused
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

SCHEMA_RESOURCE = "trace-v1.schema.json"
_MSG_MAX = 300


def trace_schema() -> dict[str, Any]:
    """The shipped schema, loaded through importlib.resources (works from a wheel)."""
    return shipped_schema(SCHEMA_RESOURCE)


@cache
def _validator() -> Draft202012Validator:
    from ..schemas import ecma_validator

    validator: Draft202012Validator = ecma_validator(trace_schema())
    return validator


def _inline(node: Any, root: dict[str, Any]) -> Any:
    """``node`` with every local ``$ref`` replaced by its target (the schema has no cycles)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target[part]
            rest = {k: _inline(v, root) for k, v in node.items() if k != "$ref"}
            merged = _inline(target, root)
            return {"allOf": [merged, rest]} if rest else merged
        return {k: _inline(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, root) for v in node]
    return node


@cache
def _type_validators() -> dict[str, Draft202012Validator]:
    """One validator per record type, compiled once.

    The schema's top level is "type is one of these" plus ``allOf: [if type == T then
    $ref #/$defs/T]``, so for a record whose ``type`` is T the whole schema says exactly what
    the T branch says.  Validating against the (ref-inlined) branch is the same check, five
    times faster than evaluating every ``if`` (tests/test_trace_schema.py proves the two agree).
    """
    from ..schemas import ecma_validator

    schema = trace_schema()
    _validator()  # checks the schema itself once
    out: dict[str, Draft202012Validator] = {}
    for branch in schema["allOf"]:
        rtype = branch["if"]["properties"]["type"]["const"]
        out[rtype] = ecma_validator(_inline(branch["then"], schema))
    return out


def _short(text: str) -> str:
    return text if len(text) <= _MSG_MAX else text[: _MSG_MAX - 3] + "..."


@cache
def _fast_validator() -> Any:
    """The schema compiled by jsonschema-rs (Rust): ~500x faster on a record with thousands
    of descriptors; only its yes/no is used."""
    import jsonschema_rs

    return jsonschema_rs.validator_for(trace_schema())


#: the values the schema types ``bytes`` (``^([0-9a-f]{2})*$``): each is converted by
#: ``bytes.fromhex`` (header.py), which refuses an odd length (tests/test_lazy_decode.py keeps
#: this list and the schema in step)
HEX_VALUES = (("avail", "out"), ("used", "data"), ("config", "data"))


@cache
def _reading_validator() -> Any:
    """:func:`_fast_validator` with ``bytes`` as ``^[0-9a-f]*$``, for :class:`TraceReader`:
    the schema's pattern walks a 256-PFN buffer's 2 KiB of hex at ~1.6 ns a character (3 of
    an avail record's 4.6 us); the even length it adds is what the reader's conversion
    (``bytes.fromhex``) refuses, and such a record is then checked against the whole schema."""
    import copy

    import jsonschema_rs

    schema = copy.deepcopy(trace_schema())
    if schema["$defs"]["bytes"].get("pattern") != "^([0-9a-f]{2})*$":
        return _fast_validator()  # not the pattern this relaxes: the whole schema, as written
    schema["$defs"]["bytes"]["pattern"] = "^[0-9a-f]*$"
    return jsonschema_rs.validator_for(schema)


def schema_problems(record: Any, *, fast: bool = True) -> list[str]:
    """Schema violations of one record, as short messages with the JSON path."""
    if fast:
        try:
            if _fast_validator().is_valid(record):
                return []
        except (ValueError, OverflowError, TypeError):
            pass
    rtype = record.get("type") if isinstance(record, dict) else None
    v = _type_validators().get(rtype) if isinstance(rtype, str) else None
    if v is None:
        v = _validator()
    elif v.is_valid(record):
        return []
    out = []
    for err in sorted(v.iter_errors(record), key=lambda e: list(map(str, e.absolute_path))):
        path = "/".join(str(p) for p in err.absolute_path)
        out.append(_short(f"{path or '(record)'}: {err.message}"))
    return out


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
