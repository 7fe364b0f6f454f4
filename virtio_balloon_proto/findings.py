"""Findings: input that decodes but breaks a rule.

A finding never changes what was decoded; it sits next to it.  ``rule`` is a clause id of the
catalog in ``conformance/clauses.toml`` (one namespace: the wire layer has no list of its own;
``tests/test_catalog.py`` checks that every rule the code can emit is in the catalog).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    message: str
    field: str | None = None
    offset: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.offset is not None:
            out["offset"] = self.offset
        return out

    def __str__(self) -> str:
        where = ""
        if self.field is not None:
            where += f" field '{self.field}'"
        if self.offset is not None:
            where += f" at byte {self.offset}"
        return f"[{self.rule}]{where}: {self.message}"
