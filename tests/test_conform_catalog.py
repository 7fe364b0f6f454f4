"""Clause catalog and errata registry integrity."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from virtio_balloon_proto.conformance import runner  # noqa: F401  (registers the checks)
from virtio_balloon_proto.conformance.catalog import Catalog, Clause, catalog, load_catalog
from virtio_balloon_proto.errors import UsageError

WIRE_RULES = """spec.driver.pfns.len-multiple-of-4 suite.driver.pfns.at-most-256
suite.driver.pfns.page-group suite.driver.pages.no-duplicate spec.driver.stats.len-multiple-of-10
spec.driver.stats.duplicate-tag suite.driver.pfns.empty spec.driver.hint.len-4
v3.driver.bmap.reserved-zero v3.driver.bmap.len-matches-buffers
v3.driver.bmap.len-word-multiple v3.driver.bmap.buffer-at-most-8-pages
v3.driver.bmap.at-most-32-buffers v3.driver.bmap.page-shift-matches
v3.driver.bmap.page-shift-ambiguous v3.driver.bmap.start-aligned v3.driver.bmap.inflate-fields-zero
v3.driver.bmap.unknown-cmd v3.driver.bmap.unknown-flag v3.driver.bmap.bits-beyond-len
v3.driver.bmap.empty v3.driver.pages.no-duplicate v3.device.req.reserved-zero
v3.device.req.unknown-cmd v3.device.req.len-16
hybrid.driver.resp.data-len-matches hybrid.driver.resp.unknown-cmd
hybrid.driver.record.bmap-len-multiple-of-8 hybrid.driver.record.page-shift-range
hybrid.driver.record.aligned hybrid.driver.pages.no-duplicate""".split()


def test_every_wire_rule_is_a_wire_clause() -> None:
    cat = catalog()
    for rule in WIRE_RULES:
        assert rule in cat, rule
        assert cat.get(rule).wire, f"{rule} is emitted by the wire layer but not marked wire"


def test_rules_in_wire_source_are_in_catalog() -> None:
    """Every rule id string in the wire layer's source names a catalog clause."""
    src = Path(__file__).resolve().parents[1] / "virtio_balloon_proto" / "wire"
    ids = set()
    for f in src.glob("*.py"):
        ids |= set(
            re.findall(r'"((?:spec|v3|hybrid|suite)\.(?:driver|device)\.[a-z0-9.-]+)"',
                       f.read_text())
        )
    assert ids, "the wire layer emits no rule ids?"
    missing = sorted(i for i in ids if i not in catalog())
    assert not missing


def test_covers_every_research_clause() -> None:
    """Every normative id of research section 3 has a clause."""
    have = {c.research for c in catalog() if c.research}
    want = {f"D-FB{i}" for i in range(1, 4)} | {"V-FB1"} | {f"D-OP{i}" for i in range(1, 13)}
    want |= {"V-OP1", "V-OP2"} | {f"D-ST{i}" for i in range(1, 9)} | {"V-ST1", "V-ST2"}
    want |= {f"D-FH{i}" for i in range(1, 11)} | {f"V-FH{i}" for i in range(1, 7)}
    want |= {f"D-PP{i}" for i in range(1, 4)} | {"V-PP1"} | {f"D-FR{i}" for i in range(1, 7)}
    want |= {"V-FR1", "V-FR2"}
    assert want - have == set()


def test_stats_erratum_links_both_ways() -> None:
    cat = catalog()
    e = cat.erratum("E1")
    assert "multiple of 6 bytes" in e.text
    assert "virtio-spec/issues/45" in " ".join(e.evidence) and "30d8e1a" in " ".join(e.evidence)
    c = cat.get(e.clause)
    assert c.id == "spec.driver.stats.len-multiple-of-10" and c.errata == "E1"
    assert "10" in c.text


def test_non_observable_clauses_are_listed_and_counted_honestly() -> None:
    cat = catalog()
    hidden = cat.select(observable=False)
    assert any(c.research == "D-OP9" for c in hidden)
    counts = cat.check_counts()
    # a clause nobody can observe has no check pretending to cover it
    assert all(counts[c.id] == 0 for c in hidden)


def test_checks_register_against_known_clauses() -> None:
    counts = catalog().check_counts()
    assert counts["spec.device.inflate.acks-buffer"] >= 1
    # one judgement for live and offline (issue 11): exactly one check per clause family
    assert counts["spec.device.used.id-is-head"] == 1
    assert counts["v3.driver.bmap.len-matches-buffers"] == 1  # wire findings only


def _clause(**kw: object) -> Clause:
    base: dict[str, object] = dict(
        id="spec.device.x.y", level="MUST", side="device", profiles=("spec",), text="t", ref="r"
    )
    base.update(kw)
    return Clause(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        {"level": "MUSTNT"},
        {"side": "host"},
        {"profiles": ("v9",)},
        {"features": ("PAGE_BITMAP",)},  # not a spec feature
        {"id": "Spec Device"},
        {"errata": "E99"},
    ],
)
def test_validation_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        Catalog([_clause(**bad)], [])


def test_duplicate_ids_rejected() -> None:
    with pytest.raises(UsageError, match="twice"):
        Catalog([_clause(), _clause()], [])


def test_loads_from_package_resources() -> None:
    cat = load_catalog()
    assert len(cat) == len(catalog()) > 100
    assert cat.get("spec.device.inflate.acks-buffer").level == "MUST"
    with pytest.raises(UsageError, match="unknown clause"):
        cat.get("spec.nope")
