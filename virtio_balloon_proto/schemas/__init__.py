"""JSON Schemas shipped with the package (trace format, results matrix), and their loader."""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Iterator
from functools import cache
from typing import Any


@cache
def shipped_schema(name: str, package: str = "virtio_balloon_proto.schemas") -> dict[str, Any]:
    """The schema ``name`` of ``package``, read through importlib.resources (works from a
    wheel).  Not checked against the 2020-12 meta-schema here: that check took 0.75 s of
    every process that writes a trace (a third of importing a ring dump); the test suite
    checks every shipped schema (tests/test_trace_io.py)."""
    text = importlib.resources.files(package).joinpath(name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def check_shipped(name: str, package: str = "virtio_balloon_proto.schemas") -> None:
    """SchemaError unless the shipped schema ``name`` is a valid JSON Schema 2020-12."""
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

    Draft202012Validator.check_schema(shipped_schema(name, package))


@cache
def _ecma(pattern: str) -> re.Pattern[str]:
    """``pattern`` (ECMA-262, as JSON Schema's ``pattern`` is) for Python's ``re``: an
    unescaped ``$`` is the end of the string (``\\Z``); Python's ``$`` also matches before a
    final newline.  (A ``$`` inside a character class would be changed too: no shipped
    schema has one.)"""
    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))


@cache
def _ecma_validator_class() -> Any:
    from jsonschema import Draft202012Validator, ValidationError, validators

    def pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[Any]:
        if validator.is_type(instance, "string") and not _ecma(patrn).search(instance):
            yield ValidationError(f"{instance!r} does not match {patrn!r}")

    return validators.extend(Draft202012Validator, {"pattern": pattern})


def ecma_validator(schema: Any) -> Any:
    """A JSON Schema 2020-12 validator of ``schema`` (jsonschema's Draft202012Validator)
    whose ``pattern`` keywords match as the specification says (ECMA-262): with Python's
    ``re.search``, ``"0002\\n"`` passed ``^([0-9a-f]{2})*$`` (found by a differential
    check against jsonschema-rs, which refused it).  Every schema check of the package
    goes through here."""
    return _ecma_validator_class()(schema)
