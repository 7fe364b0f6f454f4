"""The JSON Schema of ``vbproto-trace/1`` records and its validators (docs/trace-format.md).

* :func:`trace_schema` -- the shipped schema (``schemas/trace-v1.schema.json``);
* :func:`schema_problems` -- one record's violations as short messages with the JSON path:
  jsonschema-rs (Rust) answers yes/no first, then the (ref-inlined) branch for the record's
  type, compiled once, explains a refusal;
* the relaxed validator :class:`~.reader.TraceReader` uses (``bytes`` as a character class,
  :data:`HEX_VALUES`).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from ..schemas import shipped_schema

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
