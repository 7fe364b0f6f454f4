"""Bounds on everything that comes from outside, declared and enforced in one place.

Every reader of external bytes (files, stdin, pipes to peers, trace lines, JSON documents)
goes through this module, so that each bound has one name, one value and one error message
that quotes it.  Sizes from outside are checked *before* anything is allocated.

* :func:`read_bounded` -- a whole file (or ``-`` for stdin) up to ``limit`` bytes; never blocks
  opening a FIFO (``O_NONBLOCK``), refuses devices and directories.
* :func:`loads_json` -- strict JSON: a byte cap, a nesting-depth cap (a parser RecursionError
  is reported as that cap), no ``NaN``/``Infinity``, no float that overflows to infinity, no
  integer of more than :data:`MAX_INT_DIGITS` digits.
* :func:`check_int` -- an integer from outside, with a range.

Errors are the caller's class of :class:`~.errors.VBProtoError` (``TraceError`` for a trace,
``PeerError`` for a testee, ``UsageError`` for a command-line value), naming the limit.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
from typing import Any, BinaryIO

import orjson

from .errors import UsageError, VBProtoError

#: one message file (``message decode @FILE``, stdin), one memory image, one status file
MAX_INPUT = 64 << 20
#: one JSON document from a peer or a file (a frame, a queue-status file, a request)
MAX_JSON = 64 << 20
#: one frame of either stdio protocol
MAX_FRAME = 16 << 20
#: one line of a trace
MAX_LINE = 64 << 20
#: nesting of JSON arrays/objects (the deepest document we ship nests 6)
MAX_JSON_DEPTH = 64
#: decimal digits of a JSON integer (a u64 has 20; Python's own cap is 4,300)
MAX_INT_DIGITS = 40
#: descriptors one chain's walk yields before a finding cuts it short (a balloon buffer uses
#: at most 33: a v3 header and 32 bitmap pages; Linux and QEMU accept indirect tables of any
#: length, the spec's MUST is the queue size, which we report and do not enforce)
MAX_CHAIN_DESCRIPTORS = 4096
#: descriptors one walk of a ring yields in all, so that work and output stay linear in the
#: input even when every chain of a full ring names the same large indirect table
MAX_WALK_DESCRIPTORS = 1 << 17

#: bytes ``message encode`` / ``message_from_json`` may produce per byte of the JSON that
#: asked for them, above :data:`MAX_ENCODE_FLOOR`: the ``pages`` form is a description
#: (``{"pages": [[0, 13700000]]}``, 32 bytes, asked for 13.7 M PFNs = 55 MB), so its output
#: is capped in proportion to it
MAX_ENCODE_RATIO = 64
#: output any ``pages`` JSON may ask for: 1 MiB, one v3 message of 32 buffers of 8 pages
#: (4 KiB pages) or 262,144 PFNs (1,024 full 256-PFN buffers); a whole inflate is encoded
#: with ``codecs.encode_pages``, which splits it into messages
MAX_ENCODE_FLOOR = 1 << 20


def encode_budget(input_bytes: int) -> int:
    """Bytes an encoder may produce for ``input_bytes`` of JSON: MAX_ENCODE_FLOOR +
    MAX_ENCODE_RATIO per byte, never over MAX_INPUT (what the decoder would read back)."""
    return min(MAX_INPUT, MAX_ENCODE_FLOOR + MAX_ENCODE_RATIO * max(0, input_bytes))


def json_depth(obj: Any, limit: int = 1 << 30) -> int:
    """The deepest nesting of lists/dicts in a parsed document (iterative: no recursion);
    stops counting once ``limit`` is passed."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
            stack.extend((v, depth) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _bad_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (non-finite numbers are refused)")


def _parse_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:40]} overflows a double")
    return v


def _parse_int(text: str) -> int:
    digits = len(text) - (text[0] == "-")
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"integer of {digits} digits exceeds the limit of {MAX_INT_DIGITS} "
                         "(MAX_INT_DIGITS)")
    return int(text)


#: byte classes of the number prefilters (issue 13): digit -> "0"; a byte a JSON number may
#: follow (":", ",", "[") -> ":"; "-" -> "-"; a fraction or exponent mark (".", "e", "E") ->
#: "."; JSON whitespace dropped; anything else -> "x".  One C-speed ``translate`` (~0.6 ns a
#: byte), then regexes with the literal prefix ":" (the matcher jumps from ':' to ':'): the
#: character-class regexes they replace walked every byte of a line at ~8 ns (a trace line is
#: mostly hex, so "20 digits in a row" was no filter).  Inside a string they find false
#: candidates only, which take the exact path.
_SHAPE = bytes(ord("0") if 0x30 <= b <= 0x39 else ord(":") if b in b":,[" else ord("-")
               if b == 0x2D else ord(".") if b in b".eE" else ord("x") for b in range(256))
_JSON_SPACE = b" \t\r\n"
#: an integer orjson would not keep exact: 20+ digits (beyond u64 from 18446744073709551616),
#: or a negative of 19+ (beyond i64 from -9223372036854775809); orjson reads both as a float
_BIG_INT = re.compile(rb":(?:0{20}|-0{19})")
_BIG_TOP = (b"0" * 20, b"-" + b"0" * 19)  # the whole document one such number
_NOT_FAST = object()


def number_shape(data: bytes) -> bytes:
    """``data`` in the byte classes above (:data:`_SHAPE`): where its numbers are, cheaply."""
    return data.translate(_SHAPE, _JSON_SPACE)


def loads_json(raw: bytes | str, *, what: str, error: type[VBProtoError] = UsageError,
               max_bytes: int = MAX_JSON, max_depth: int = MAX_JSON_DEPTH,
               where: str | None = None, shape: bytes | None = None) -> Any:
    """Parse strict JSON from outside; any problem raises ``error`` naming ``what``.

    Refuses: more than ``max_bytes`` bytes (MAX_JSON), nesting deeper than ``max_depth``
    (MAX_JSON_DEPTH), ``NaN``/``Infinity``/``-Infinity``, floats that overflow, integers of
    more than MAX_INT_DIGITS digits, text that is not UTF-8.  Lone surrogates written as
    ``\\udXXX`` escapes are accepted (they are valid JSON) and kept; reports escape them.
    ``shape``: :func:`number_shape` of ``raw``, when the caller computed it already.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > max_bytes:
        raise error(f"{what} is {len(data)} bytes, over the limit of {max_bytes} (MAX_JSON)",
                    where=where)
    # fast path (issue 13: a trace line in ~1/100 of the stdlib's time): orjson is strict
    # JSON, refuses NaN/Infinity, overflowing floats, integers beyond 64 bits (so within
    # MAX_INT_DIGITS) and invalid UTF-8 or lone surrogates; whatever it refuses goes the
    # stdlib way below, which accepts surrogate escapes and names each problem as before
    try:
        # orjson reads an integer beyond 64 bits as a float: such a number takes the stdlib
        # path, which keeps it exact
        t = number_shape(data) if shape is None else shape
        big = _BIG_INT.search(t) or t.startswith(_BIG_TOP)
        obj = _NOT_FAST if big else orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = _NOT_FAST
    if obj is not _NOT_FAST:
        # every nesting level past the first follows its parent's '[' or a ':' in its parent
        # object, so depth <= 1 + (':' ',' '[' in the shape): one count of the shorter shape
        if t.count(b":") < max_depth or data.count(b"[") + data.count(b"{") <= max_depth \
                or json_depth(obj, max_depth) <= max_depth:
            return obj
        raise error(f"{what} nests deeper than the limit of {max_depth} (MAX_JSON_DEPTH)",
                    where=where)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 JSON (invalid UTF-8 at byte {exc.start})",
                    where=where) from None
    try:
        obj = json.loads(text, parse_constant=_bad_constant, parse_float=_parse_float,
                         parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not JSON: {exc.msg.removesuffix(' at')} at char {exc.pos}",
                    where=where) from None
    except RecursionError:
        raise error(f"{what} nests deeper than the limit of {max_depth} (MAX_JSON_DEPTH)",
                    where=where) from None
    except (ValueError, OverflowError) as exc:
        raise error(f"{what}: {str(exc)[:200]}", where=where) from None
    if json_depth(obj, max_depth) > max_depth:
        raise error(f"{what} nests deeper than the limit of {max_depth} (MAX_JSON_DEPTH)",
                    where=where)
    return obj


def check_int(value: Any, *, field: str, lo: int = 0, hi: int = (1 << 64) - 1,
              error: type[VBProtoError] = UsageError, where: str | None = None) -> int:
    """``value`` if it is a true integer (not a bool, not a float) in ``[lo, hi]``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise error(f"must be an integer, got {type(value).__name__}", field=field, where=where)
    if not lo <= value <= hi:
        shown = str(value) if abs(value) < 10**40 else f"a {value.bit_length()}-bit integer"
        raise error(f"{shown} is outside [{lo}, {hi}]", field=field, where=where)
    return value


def open_regular(path: str | os.PathLike[str], *, what: str,
                 error: type[VBProtoError] = UsageError,
                 allow_stream: bool = False) -> tuple[BinaryIO, int | None]:
    """Open ``path`` for reading without ever blocking (``O_NONBLOCK``: a FIFO with no writer
    opens at once and reads as empty) and refuse anything but a regular file -- or, with
    ``allow_stream``, a pipe or character device, read later under a byte cap.  Returns the
    file and its size (None for a stream)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"cannot open {what} {os.fspath(path)!r}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path
        raise error(f"cannot open {what} {os.fspath(path)!r}: {exc}") from None
    try:
        st = os.fstat(fd)
        stream = stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)
        if not stat.S_ISREG(st.st_mode) and not (allow_stream and stream):
            kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a directory"
                    if stat.S_ISDIR(st.st_mode) else "a device" if
                    stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
            raise error(f"{what} {os.fspath(path)!r} is {kind}; a regular file is needed")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), None if stream else st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | os.PathLike[str], *, what: str, limit: int = MAX_INPUT,
                 error: type[VBProtoError] = UsageError, allow_stream: bool = False) -> bytes:
    """All bytes of a regular file (or of stdin for ``-``), at most ``limit`` (MAX_INPUT).

    With ``allow_stream`` a pipe or character device (``/dev/stdin``) is read too, in chunks,
    and refused once it passes the limit, so ``/dev/zero`` ends with an error instead of
    filling memory; stdin (``-``) is always read that way.
    """
    if os.fspath(path) == "-":
        return read_stream(sys.stdin.buffer, what=what, limit=limit, error=error)
    f, size = open_regular(path, what=what, error=error, allow_stream=allow_stream)
    with f:
        if size is not None and size > limit:
            raise error(f"{what} {os.fspath(path)!r} is {size} bytes, over the limit of "
                        f"{limit} (MAX_INPUT)")
        return read_stream(f, what=what, limit=limit, error=error)


def read_stream(f: BinaryIO, *, what: str, limit: int = MAX_INPUT,
                error: type[VBProtoError] = UsageError) -> bytes:
    """Read ``f`` to its end, refusing more than ``limit`` bytes (MAX_INPUT)."""
    chunks: list[bytes] = []
    got = 0
    while True:
        chunk = f.read(min(1 << 20, limit + 1 - got))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        got += len(chunk)
        if got > limit:
            raise error(f"{what} is over the limit of {limit} bytes (MAX_INPUT)")


def json_safe(obj: Any, _depth: int = 0) -> Any:
    """A copy of ``obj`` that strict JSON can hold: non-finite floats become strings
    (``"NaN"``, ``"Infinity"``), bytes become hex, anything else unknown becomes ``str``;
    nesting deeper than MAX_JSON_DEPTH is cut with a marker string."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj).replace("inf", "Infinity").replace(
            "nan", "NaN")
    if _depth >= MAX_JSON_DEPTH:
        return "<nested too deep>"
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: json_safe(v, _depth + 1)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, _depth + 1) for v in obj]
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    return str(obj)


#: characters XML 1.0 cannot hold (C0 controls but tab/LF/CR, lone surrogates, U+FFFE/F)
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def clean_text(s: str) -> str:
    """``s`` with every character XML cannot hold (and UTF-8 cannot encode: lone surrogates)
    written as a visible escape (``\\x00``, ``\\ud800``)."""
    return _NOT_XML.sub(lambda m: (f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                                   else f"\\u{ord(m[0]):04x}"), s)


def dumps_strict(obj: Any, **kw: Any) -> str:
    """``json.dumps`` that can only produce JSON: ``allow_nan=False`` on a
    :func:`json_safe` copy; ASCII output, so lone surrogates travel as ``\\udXXX``."""
    return json.dumps(json_safe(obj), allow_nan=False, ensure_ascii=True, **kw)


__all__ = [
    "MAX_CHAIN_DESCRIPTORS",
    "MAX_ENCODE_FLOOR",
    "MAX_ENCODE_RATIO",
    "MAX_FRAME",
    "MAX_INPUT",
    "MAX_INT_DIGITS",
    "MAX_JSON",
    "MAX_JSON_DEPTH",
    "MAX_LINE",
    "MAX_WALK_DESCRIPTORS",
    "check_int",
    "clean_text",
    "dumps_strict",
    "encode_budget",
    "json_depth",
    "json_safe",
    "loads_json",
    "open_regular",
    "read_bounded",
    "read_stream",
]
