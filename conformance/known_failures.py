"""Known-failures file: failures a device team has accepted for now (protobuf's failure list).

Format (TOML)::

    [[failure]]
    case = "spec.inflate.*"                 # case id glob (fnmatch)
    clause = "spec.device.used.len-written" # clause id glob
    reason = "our device reports the chain length as used len (bug #123)"

Semantics:

* a broken clause of a case covered by an entry does not fail the run; the case's outcome is
  ``expected-failure``;
* an entry that matches a case which was checked against a matching clause and *passed* is an
  **unexpected pass**: it fails the run, so the list cannot rot (remove the entry);
* an entry that matches no case of the run at all is reported as unmatched (informational:
  the run may have been filtered).

``--update-known-failures`` rewrites the file so that it lists exactly the current failures
(exact case and clause ids; reasons of entries that still match are kept).
"""

from __future__ import annotations

import fnmatch
import json
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from virtio_balloon_proto.errors import UsageError
from virtio_balloon_proto.io import write_atomic
from virtio_balloon_proto.limits import MAX_INPUT, read_bounded

from .verdicts import CaseResult, Verdict


@dataclass(frozen=True)
class KnownFailure:
    case: str
    clause: str
    reason: str = ""

    def matches_case(self, case_id: str) -> bool:
        return fnmatch.fnmatchcase(case_id, self.case)

    def matches(self, case_id: str, clause_id: str) -> bool:
        return self.matches_case(case_id) and fnmatch.fnmatchcase(clause_id, self.clause)

    def label(self) -> str:
        return f"case={self.case} clause={self.clause}"


class KnownFailures:
    def __init__(self, entries: Iterable[KnownFailure], path: str | None = None) -> None:
        self.entries = list(entries)
        self.path = path
        self._used: set[int] = set()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KnownFailures:
        p = Path(path)
        if not p.exists() and not p.is_symlink():
            # a missing file is an empty list: --update-known-failures creates it
            return cls([], str(p))
        # a regular file only (a FIFO or /dev/zero would block or never end), capped
        raw = read_bounded(p, what="known-failures file", limit=MAX_INPUT)
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except ValueError as exc:  # TOMLDecodeError, UnicodeDecodeError, and an integer of
            # more than 4300 digits (tomllib's int() hits Python's int_max_str_digits)
            raise UsageError(f"not a valid TOML file: {exc}", where=str(p)) from None
        except RecursionError:  # tomllib recurses once per nested array/inline table
            raise UsageError("not a valid TOML file: nested too deeply", where=str(p)) from None
        entries = []
        extra_top = set(data) - {"failure"}
        if extra_top:
            raise UsageError(f"unknown top-level keys {sorted(extra_top)}", where=str(p))
        failures = data.get("failure", [])
        if not isinstance(failures, list):
            raise UsageError("'failure' must be an array of tables ([[failure]])", where=str(p))
        for i, item in enumerate(failures):
            where = f"{p} [[failure]] #{i + 1}"
            if not isinstance(item, dict):
                raise UsageError("entry is not a table", where=where)
            extra = set(item) - {"case", "clause", "reason"}
            if extra:
                raise UsageError(f"unknown keys {sorted(extra)}", where=where)
            case, clause = item.get("case"), item.get("clause", "*")
            if not isinstance(case, str) or not case or not isinstance(clause, str) or not clause:
                raise UsageError(
                    "'case' (and 'clause' if given) must be non-empty strings", where=where
                )
            reason = item.get("reason", "")
            if not isinstance(reason, str):
                raise UsageError("'reason' must be a string", where=where)
            entries.append(KnownFailure(case, clause, reason))
        return cls(entries, str(p))

    # --- applying the list to results --------------------------------------------------
    def apply(self, result: CaseResult) -> None:
        """Mark broken clause results covered by an entry; record unexpected passes."""
        if result.status is not None:  # not run (unsupported/skipped): says nothing
            for i, e in enumerate(self.entries):
                if e.matches_case(result.case_id):
                    self._used.add(i)
            return
        result.unexpected_passes = []
        for r in result.results:
            if not r.broken:
                continue
            for i, e in enumerate(self.entries):
                if e.matches(result.case_id, r.clause):
                    r.known = e.reason or "listed in the known-failures file"
                    self._used.add(i)
                    break
        for i, e in enumerate(self.entries):
            if not e.matches_case(result.case_id):
                continue
            self._used.add(i)
            checked = [r for r in result.results if fnmatch.fnmatchcase(r.clause, e.clause)]
            if checked and not any(r.broken for r in checked):
                result.unexpected_passes.append(e.label())

    def unmatched(self) -> list[str]:
        return [e.label() for i, e in enumerate(self.entries) if i not in self._used]

    # --- rewriting -----------------------------------------------------------------------
    def updated(self, results: Iterable[CaseResult]) -> list[KnownFailure]:
        """Exactly the current broken (case, clause) pairs, keeping reasons that still match.

        Entries for cases that were not run (filtered out, unsupported) are kept as they are,
        so updating after a filtered run does not drop the rest of the list."""
        results = list(results)
        ran = {r.case_id for r in results if r.status is None}
        out: list[KnownFailure] = []
        seen: set[tuple[str, str]] = set()
        for e in self.entries:
            if not any(e.matches_case(c) for c in ran):
                out.append(e)
                seen.add((e.case, e.clause))
        for res in results:
            for r in res.results:
                if not r.broken or (res.case_id, r.clause) in seen:
                    continue
                reason = next(
                    (
                        e.reason
                        for e in self.entries
                        if e.matches(res.case_id, r.clause) and e.reason
                    ),
                    f"added by --update-known-failures: {r.message}"[:200],
                )
                out.append(KnownFailure(res.case_id, r.clause, reason))
                seen.add((res.case_id, r.clause))
        return out

    @staticmethod
    def render(entries: Iterable[KnownFailure]) -> str:
        lines = [
            "# Known failures of a device under test (vbproto conform run --known-failures).",
            "# Listed failures do not fail the run; a listed failure that passes does.",
            "",
        ]
        for e in entries:
            lines += [
                "[[failure]]",
                f"case = {_toml_str(e.case)}",
                f"clause = {_toml_str(e.clause)}",
                f"reason = {_toml_str(e.reason)}",
                "",
            ]
        return "\n".join(lines)

    def write_updated(self, results: Iterable[CaseResult], path: str | None = None) -> int:
        target = path or self.path
        if target is None:
            raise UsageError("no known-failures file to update (give --known-failures FILE)")
        entries = self.updated(results)
        atomic_write_text(target, self.render(entries))
        return len(entries)


def _toml_str(s: str) -> str:
    # A JSON string without \/ escapes and with raw non-ASCII is a valid TOML basic string.
    return json.dumps(s, ensure_ascii=False)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`virtio_balloon_proto.io.write_atomic`)."""
    write_atomic(path, text)


__all__ = ["KnownFailure", "KnownFailures", "Verdict", "atomic_write_text"]
