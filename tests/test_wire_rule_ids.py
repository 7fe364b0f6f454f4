"""Every rule id the wire layer can emit (``Finding("...")`` and ``clause="..."`` in
virtio_balloon_proto/wire/) is a clause of conformance/clauses.toml, marked ``wire = true``.

The ids are read from the source text, so a new rule without a catalog entry fails here.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from virtio_balloon_proto.findings import NOTES, UNKNOWN_STATS_TAG, is_note

PKG = Path(__file__).resolve().parents[1] / "virtio_balloon_proto"
WIRE_SRC = "".join(p.read_text() for p in sorted((PKG / "wire").glob("*.py")))
# the codec layer adds findings of its own (hint/report ranges)
CODEC_SRC = "".join(p.read_text() for p in sorted((PKG / "codecs").glob("*.py")))
# the id as the first argument of Finding(, possibly on the next line, or a clause= keyword
EMITTED = sorted(
    set(re.findall(r'Finding\(\s*"([^"]+)"', WIRE_SRC))
    | set(re.findall(r'clause\s*=\s*"([^"]+)"', WIRE_SRC))
)


def _catalog() -> dict[str, dict[str, Any]]:
    with open(PKG / "conformance" / "clauses.toml", "rb") as fh:
        raw = tomllib.load(fh)
    return {c["id"]: c for c in raw["clause"]}


def test_the_scan_finds_the_rules() -> None:
    # guards the regexes: the wire layer emits dozens of rules across every kind
    assert len(EMITTED) >= 25
    prefixes = {r.split(".")[0] for r in EMITTED}
    # suite.*: a rule derived from an implementation (no spec sentence); note.*: blames nobody
    assert prefixes == {"spec", "v3", "hybrid", "suite", "note"}
    # every dotted-id-looking string literal in wire/ is caught by one of the two patterns
    literals = set(re.findall(
        r'"((?:spec|v3|hybrid|suite)\.(?:driver|device)\.[\w-]+\.[\w-]+)"', WIRE_SRC))
    literals |= set(re.findall(r'"(note\.[\w-]+\.[\w-]+)"', WIRE_SRC))
    assert literals <= set(EMITTED)


@pytest.mark.parametrize("rule", EMITTED)
def test_rule_is_a_wire_clause_of_the_catalog(rule: str) -> None:
    if is_note(rule):  # a note is no clause: it is registered with its reason instead
        assert rule in NOTES and rule not in _catalog()
        return
    cat = _catalog()
    assert rule in cat, f"{rule} is emitted by the wire layer but missing in clauses.toml"
    assert cat[rule].get("wire") is True, f"{rule} is emitted by wire/ but not marked wire = true"
    prefix = rule.split(".")[0]
    if prefix == "suite":  # a suite rule applies to every profile it lists
        assert cat[rule]["ref"].startswith("derived") and "suite rule" in cat[rule]["text"]
    else:
        assert prefix in cat[rule]["profiles"]


def test_every_wire_clause_is_emitted_by_the_wire_or_codec_layer() -> None:
    """The converse: ``wire = true`` is what the code emits, never a hand-written hope (a
    clause only a check in conformance/checks/ judges is not a wire clause; issue 11)."""
    src = WIRE_SRC + CODEC_SRC
    emitted = (set(re.findall(r'Finding\(\s*"([^"]+)"', src))
               | set(re.findall(r'clause\s*=\s*"([^"]+)"', src))
               | set(re.findall(r'"((?:spec|v3|hybrid)\.(?:driver|device)\.[\w-]+\.[\w-]+)"',
                                src))
               | set(re.findall(r'"((?:suite)\.(?:driver|device)\.[\w-]+\.[\w-]+)"', src)))
    flagged = {cid for cid, c in _catalog().items() if c.get("wire")}
    assert flagged - emitted == set()


def test_note_ids_are_registered_and_the_constant_matches() -> None:
    assert UNKNOWN_STATS_TAG in EMITTED and set(NOTES) <= set(EMITTED)
