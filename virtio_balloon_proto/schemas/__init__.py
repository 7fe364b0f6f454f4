"""JSON Schemas shipped with the package (trace format, results matrix), and their loader."""

from __future__ import annotations

import importlib.resources
import json
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]


@cache
def shipped_schema(name: str, package: str = "virtio_balloon_proto.schemas") -> dict[str, Any]:
    """The schema ``name`` of ``package``, read through importlib.resources (works from a
    wheel) and checked to be a valid JSON Schema 2020-12 (SchemaError otherwise: our bug)."""
    text = importlib.resources.files(package).joinpath(name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return schema
