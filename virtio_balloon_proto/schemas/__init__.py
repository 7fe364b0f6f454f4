"""JSON Schemas shipped with the package (trace format, results matrix), and their loader."""

from __future__ import annotations

import importlib.resources
import json
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
