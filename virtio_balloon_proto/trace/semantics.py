"""Rules of a ``vbproto-trace/1`` trace that its JSON schema cannot say (docs/trace-format.md).

:func:`semantic_problems`: feature names match their values, roles match the header's queue
map, out/in entries agree with the descriptors they came from, and every record is one the
header's ``window.captured`` says the source could see ("Windows").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..profiles import get_profile
from .header import _ROLES, FORMAT, FORMAT_1_1, FORMAT_1_2, TraceHeader, _int64


def semantic_problems(header: TraceHeader | None, o: Mapping[str, Any]) -> Iterable[str]:
    """Rules a schema cannot say: names match values, roles match the queue map, out/in agree
    with the descriptors they came from.  ``o`` is a schema-valid record."""
    t = o["type"]
    if t == "header":
        prof = get_profile(o["profile"])
        f = o["features"]
        for key in ("offered", "negotiated"):
            names = f.get(f"{key}_names")
            if names is not None and names != prof.names(_int64(f[key])):
                yield (
                    f"features.{key}_names {names} do not match {f[key]} in profile "
                    f"{o['profile']!r} ({prof.names(_int64(f[key]))})"
                )
        if "window" in o and o["format"] != FORMAT_1_2:
            yield f"window is a {FORMAT_1_2} field; the header says {o['format']!r}"
        if "memory" in o and o["format"] == FORMAT:
            yield f"memory is a {FORMAT_1_1} field; the header says {o['format']!r}"
        return
    if header is None:
        return
    if header.window is not None:
        yield from _window_problems(header, o)
    if t != "avail" and t != "used":
        return
    role = _ROLES[o["role"]]
    if role in header.queues and header.queues[role] != o["queue"]:
        yield (
            f"role {role.value!r} is queue {header.queues[role]} in the header, not {o['queue']}"
        )
    if role not in header.queues:
        qmap = {r.value: i for r, i in header.queues.items()}
        yield f"role {role.value!r} is not in the header's queue map {qmap}"
    if t == "avail" and o.get("descriptors") is not None:
        bufs = [d for d in o["descriptors"] if not d["flags"] & 4]  # INDIRECT entries name tables
        outs = [d for d in bufs if not d["flags"] & 2]
        ins = [d for d in bufs if d["flags"] & 2]
        if len(outs) != len(o["out"]):
            yield f"{len(o['out'])} out entries but {len(outs)} device-readable descriptors"
        else:
            for k, (d, h) in enumerate(zip(outs, o["out"], strict=True)):
                if h is not None and len(h) // 2 != d["len"]:
                    yield f"out[{k}] holds {len(h) // 2} bytes but its descriptor len is {d['len']}"
        if len(ins) != len(o["in"]):
            yield f"{len(o['in'])} in entries but {len(ins)} device-writable descriptors"
        else:
            for k, (d, n) in enumerate(zip(ins, o["in"], strict=True)):
                if n is not None and n != d["len"]:
                    yield f"in[{k}] is {n} but its descriptor len is {d['len']}"


#: record type -> what a window must have captured to hold it (docs/trace-format.md "Windows")
_CAPTURED_BY = {"status": "status", "features": "features", "config_read": "config",
                "config_write": "config", "host": "host", "avail": "avail", "used": "used"}


def _window_problems(header: TraceHeader, o: Mapping[str, Any]) -> Iterable[str]:
    """A record the header's ``window.captured`` says the source could not see: the trace
    contradicts itself (the oracle would judge it as not captured while holding it)."""
    win = header.window
    if win is None or win.captured is None:
        return
    t = o["type"]
    need = _CAPTURED_BY.get(t)
    cap = list(win.captured)
    if need == "config" and "config" not in win.captured and "config-actual" in win.captured:
        n = len(o["data"]) // 2
        if not o["offset"] + n <= 8:
            yield (f"a {t} record of bytes {o['offset']}-{o['offset'] + n - 1}, but the header's "
                   f"window.captured {cap} has 'config-actual' (bytes 0-7 only), not 'config'")
        return
    if need is not None and need not in win.captured:
        also = " or 'config-actual'" if need == "config" else ""
        yield (f"a {t} record, but the header's window.captured {cap} does not include "
               f"{need!r}{also}")
    elif t == "avail" and "driver-bytes" not in win.captured and any(
            h is not None for h in o["out"]):
        yield ("an avail record with driver-written bytes (a non-null out entry), but the "
               f"header's window.captured {cap} does not include 'driver-bytes'")
    elif t == "used" and o.get("data") is not None and "device-bytes" not in win.captured:
        yield ("a used record with data (bytes the device wrote), but the header's "
               f"window.captured {cap} does not include 'device-bytes'")
