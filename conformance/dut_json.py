"""What crosses the device-under-test boundary, checked and mapped to JSON (docs/stdio-protocol.md).

* validation: every result a testee returns (python or stdio) is checked against
  ``/<name>`` of the shipped ``stdio-protocol.schema.json``; fast checks
  (:func:`_extents_ok`, :func:`_used_ok`, :func:`_observe_ok`) accept the common shapes
  without the schema and never accept what it refuses (tests/test_adapter_validation.py);
* the JSON mapping of :class:`~.dut.Setup`, :class:`~.dut.Segment`, :class:`~.dut.Used` and
  :class:`~.dut.Negotiated` the stdio protocol speaks.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

from virtio_balloon_proto.errors import PeerError
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.schemas import shipped_schema

from .dut import Negotiated, Segment, Setup, Used

SCHEMA_RESOURCE = "stdio-protocol.schema.json"


def _protocol_schema() -> dict[str, Any]:
    return shipped_schema(SCHEMA_RESOURCE, "virtio_balloon_proto.conformance")


@cache
def _result_validator(name: str) -> Any:
    """A validator for ``$defs/<name>`` of the shipped protocol schema (refs resolve inside)."""
    schema = _protocol_schema()
    # imported here: only an answer the fast checks below do not certainly accept needs the
    # schema, and jsonschema costs ~40-60 ms of every conform command's start-up
    from virtio_balloon_proto.schemas import ecma_validator

    return ecma_validator({"$defs": schema["$defs"], "$ref": f"#/$defs/{name}"})


_U64 = (1 << 64) - 1
#: results whose extent lists are checked by :func:`_extents_ok` before the schema sees the rest
_EXTENT_KEYS = {"observe_result": ("balloon", "hinted", "reported")}


def _extents_ok(v: Any) -> bool:
    """True if ``v`` certainly matches ``$defs/extents`` (a list of ``[u64, u64]`` lists).

    A fast sufficient test (plain ints only): False sends the value to the schema validator,
    which decides (and names the problem), so the verdict is the schema's either way.  The
    schema's per-item walk costs ~0.1 ms per extent: a 262,144-page balloon took 117 s.
    A PageSet (what an in-process device may answer: its extents are u64 by construction)
    is accepted as it is."""
    if type(v) is not list:
        return isinstance(v, PageSet)  # also a subclass (wire.hybridset.HybridPageSet)
    for e in v:
        if type(e) is not list or len(e) != 2:
            return False
        a, b = e
        if type(a) is not int or type(b) is not int or not (0 <= a <= _U64 and 0 <= b <= _U64):
            return False
    return True


_HEX = re.compile(r"(?:[0-9a-f]{2})*")


def _used_ok(raw: Any) -> bool:
    """True if ``raw`` certainly matches ``$defs/used_result`` (the same contract as
    :func:`_extents_ok`: False leaves the verdict to the schema)."""
    if type(raw) is not dict or type(raw.get("used")) is not list:
        return False
    for u in raw["used"]:
        if type(u) is not dict or not u.keys() <= {"id", "len", "written"}:
            return False
        i, n, w = u.get("id"), u.get("len"), u.get("written", "")
        if (type(i) is not int or type(n) is not int or not (0 <= i <= 0xFFFF)
                or not (0 <= n <= 0xFFFFFFFF) or type(w) is not str or not _HEX.fullmatch(w)):
            return False
    return True


_DIGITS = re.compile(r"[0-9]+")
_PAGE_SIZE_KEY = re.compile(r"0x[0-9a-f]+")


def _observe_ok(raw: Any) -> bool:
    """True if ``raw`` certainly matches ``$defs/observe_result`` (the same contract as
    :func:`_extents_ok`); anything unusual goes to the schema."""
    if type(raw) is not dict:
        return False
    for k, each in (("unused", _extents_ok), ("unused_done", lambda v: type(v) is int and v >= 0)):
        m = raw.get(k, {})
        if type(m) is not dict or not all(
                type(a) is str and _PAGE_SIZE_KEY.fullmatch(a) and each(v) for a, v in m.items()):
            return False
    for k in ("num_pages", "actual", "hint_cmd_id"):
        v = raw.get(k, 0)
        if type(v) is not int or not 0 <= v <= 0xFFFFFFFF:
            return False
    stats = raw.get("stats", {})
    if type(stats) is not dict or not all(
            type(k) is str and _DIGITS.fullmatch(k) and type(v) is int and 0 <= v <= _U64
            for k, v in stats.items()):
        return False
    return all(_extents_ok(raw[k]) for k in ("balloon", "hinted", "reported") if k in raw)


def validate_result(raw: Any, name: str, step: str) -> None:
    """Check a testee's result against ``$defs/<name>`` of stdio-protocol.schema.json; the
    first problem (with its JSON path) becomes a PeerError naming the step."""
    if ((name == "extents" and _extents_ok(raw)) or (name == "used_result" and _used_ok(raw))
            or (name == "observe_result" and _observe_ok(raw))):
        return
    keys = _EXTENT_KEYS.get(name, ())
    if keys and type(raw) is dict and all(_extents_ok(raw[k]) for k in keys if k in raw):
        raw = {k: ([] if k in keys else v) for k, v in raw.items()}  # checked above
    err = next(iter(_result_validator(name).iter_errors(raw)), None)
    if err is not None:
        path = "/".join(str(p) for p in err.absolute_path) or "(result)"
        raise PeerError(f"{name.replace('_', ' ')} does not follow the protocol schema: "
                        f"{path}: {err.message[:200]}", where=step)


# --------------------------------------------------------------------------- JSON mapping
def setup_to_json(setup: Setup) -> dict[str, Any]:
    return {
        "profile": setup.profile,
        "driver_features": setup.driver_features,
        "endian": setup.endian,
        "word_size": setup.word_size,
        "word_order": setup.word_order,
        "page_size": setup.page_size,
        "device_options": dict(setup.device_options),
        "memory_size": setup.memory_size,
    }


def segment_to_json(seg: Segment) -> dict[str, Any]:
    return {"addr": seg.addr, "len": seg.length, "writable": seg.writable, "data": seg.data.hex()}


def _int(obj: dict[str, Any], key: str, step: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise PeerError(f"'{key}' must be an integer in [{lo}, {hi}], got {v!r}", where=step)
    return v


def _hex(obj: dict[str, Any], key: str, step: str, default: str | None = None) -> bytes:
    v = obj.get(key, default)
    if not isinstance(v, str):
        raise PeerError(f"'{key}' must be a hex string, got {type(v).__name__}", where=step)
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise PeerError(f"'{key}' is not valid hex: {v[:40]!r}", where=step) from None


def used_from_json(raw: Any, step: str) -> list[Used]:
    if not isinstance(raw, list):
        raise PeerError("'used' must be a list", where=step)
    out = []
    for i, u in enumerate(raw):
        if not isinstance(u, dict):
            raise PeerError(f"used[{i}] is not an object", where=step)
        written = _hex(u, "written", step, "")
        out.append(
            Used(
                id=_int(u, "id", step, hi=0xFFFF),
                length=_int(u, "len", step, hi=0xFFFFFFFF),
                written=written,
            )
        )
    return out


def negotiated_from_json(raw: Any, step: str) -> Negotiated:
    if not isinstance(raw, dict):
        raise PeerError("start result must be an object", where=step)
    validate_result(raw, "start_result", step)
    queues = raw.get("queues")
    if not isinstance(queues, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 65536
        for k, v in queues.items()
    ):
        raise PeerError("'queues' must map role names to queue indices", where=step)
    return Negotiated(
        offered=_int(raw, "offered", step),
        accepted=_int(raw, "accepted", step),
        queues=dict(queues),
        config_size=_int(raw, "config_size", step, hi=4096),
    )


def _checked_used(raw: Any, step: str) -> list[Used]:
    """An in-process device's used buffers, checked as a stdio testee's ``used`` answer is."""
    if not isinstance(raw, (list, tuple)):
        raise PeerError(f"expected a list of Used, got {type(raw).__name__}", where=step)
    if all(type(u) is Used and type(u.id) is int and 0 <= u.id <= 0xFFFF
           and type(u.length) is int and 0 <= u.length <= 0xFFFFFFFF and type(u.written) is bytes
           for u in raw):
        # certainly what the schema and used_from_json accept and give back (the usual answer:
        # one Used(head, 0) per buffer), without a JSON round trip per step
        return list(raw)
    as_json = []
    for i, u in enumerate(raw):
        if not isinstance(u, Used) or not isinstance(u.written, (bytes, bytearray)):
            raise PeerError(f"used[{i}] is {type(u).__name__}, not Used with bytes written",
                            where=step)
        as_json.append({"id": u.id, "len": u.length, "written": bytes(u.written).hex()})
    validate_result({"used": as_json}, "used_result", step)
    return used_from_json(as_json, step)


def _checked_observe(result: Any) -> dict[str, Any]:
    """An in-process device's observation, checked as a stdio testee's is (``balloon_delta``'s
    ``add``/``remove`` as extents too)."""
    if not isinstance(result, dict):
        raise PeerError(f"observe returned {type(result).__name__}, not a dict", where="observe")
    validate_result(result, "observe_result", "observe")
    delta = result.get("balloon_delta")
    if delta is not None:
        if not isinstance(delta, dict):
            raise PeerError("balloon_delta must be an object", where="observe")
        for key in ("add", "remove"):
            validate_result(delta.get(key, []), "extents", "observe")
    return result


def _text(v: Any, limit: int = 300) -> str:
    """A testee's free text for a report: a string (or the JSON of anything else), cut to
    ``limit`` characters; control characters and lone surrogates are escaped by the reports."""
    t = v if isinstance(v, str) else json.dumps(v, default=str)[:limit]
    return t[:limit]
