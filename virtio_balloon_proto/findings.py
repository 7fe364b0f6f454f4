"""Findings: input that decodes but breaks a rule -- or, for a ``note.*`` rule, input worth
naming that breaks nothing.

A finding never changes what was decoded; it sits next to it.  ``rule`` is a clause id of the
catalog in ``conformance/clauses.toml`` (one namespace: the wire layer has no list of its own;
``tests/test_wire_rule_ids.py`` checks that every rule the code can emit is in the catalog), or
a note id of :data:`NOTES`: a note blames neither side and is never a clause verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: a stats buffer carries tags the spec does not define (VIRTIO 1.2-1.4 define 0-9)
UNKNOWN_STATS_TAG = "note.stats.unknown-tag"

#: note id -> why it is a note.  A note names something in the bytes that neither side breaks a
#: rule by; what a *device* must do with it is a device clause, judged from what the device did.
NOTES: dict[str, str] = {
    UNKNOWN_STATS_TAG: (
        "A stats buffer with tags the spec does not define (Linux >= 6.12 sends 10-15, crosvm "
        "65534/65535). No driver rule forbids them (5.5.6.3.1 asks for 'one struct "
        "virtio_balloon_stat entry for each statistic that it supports'); the device 'MUST "
        "ignore entries with tag values that it does not recognize' (VIRTIO 1.2 5.5.6.3.2) -- "
        "that is spec.device.stats.ignores-unknown-tag, judged from what the device does with "
        "the buffer, never from the buffer alone."),
}


def is_note(rule: str) -> bool:
    """Is ``rule`` a note id (never a clause, never a failure)?"""
    return rule.startswith("note.")


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
