"""The committed vector files: schema-valid, ids stable and unique, coverage complete."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from virtio_balloon_proto.vectorgen.format import FLAGS, TOLERATED, classify
from virtio_balloon_proto.vectorgen.schemas import SCHEMAS
from virtio_balloon_proto.vectorgen.verify import default_dir, iter_tests

ROOT = default_dir()
FILES = sorted(ROOT.glob("*.json"))
SCHEMA_FILES = sorted((ROOT / "schema").glob("*.json"))


def _load(p: Path) -> Any:
    return json.loads(p.read_text(encoding="utf-8"))


def test_corpus_is_packaged_and_moderate() -> None:
    names = {p.stem for p in FILES}
    assert names == {"pfns", "v3-bmap", "v3-req", "hybrid", "stats", "config", "hint-cmd",
                     "pageset-spec", "pageset-v3", "pageset-v3-seed-exact", "pageset-hybrid",
                     "ring-split", "ring-packed"}
    total = sum(p.stat().st_size for p in FILES)
    assert total < 2_000_000
    n = sum(_load(p)["numberOfTests"] for p in FILES)
    assert 500 <= n <= 5000


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_schemas_are_valid_2020_12(path: Path) -> None:
    schema = _load(path)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == SCHEMAS[path.name]  # the shipped schema is the one the verifier uses

    def closed(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False or isinstance(
                    node.get("additionalProperties"), dict)
            for v in node.values():
                closed(v)
        elif isinstance(node, list):
            for v in node:
                closed(v)

    closed(schema)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_file_validates_against_its_schema(path: Path) -> None:
    doc = _load(path)
    schema = _load(ROOT / "schema" / doc["schema"])
    jsonschema.Draft202012Validator(schema).validate(doc)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_file_invariants(path: Path) -> None:
    doc = _load(path)
    tests = list(iter_tests(doc))
    assert doc["numberOfTests"] == len(tests)
    ids = [t["id"] for _, t in tests]
    assert len(set(ids)) == len(ids)
    for g, t in tests:
        # stable ids: file/group tag/slug -- never a position
        assert t["id"] == f"{path.stem}/{g['tag']}/{t['id'].split('/')[-1]}"
        assert not re.search(r"/\d+$", t["id"])
        assert set(t["flags"]) <= set(doc["notes"])
        if "error" in t:
            assert t["result"] == "invalid"
        elif "rules" in t:
            assert t["result"] == classify(t["rules"])
    used = {f for _, t in tests for f in t["flags"]}
    assert set(doc["notes"]) == used
    for f, note in doc["notes"].items():
        assert note == {"bugType": FLAGS[f][0], "description": FLAGS[f][1]}
    assert [t["tcId"] for _, t in tests] == list(range(1, len(tests) + 1))


def _tests(name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return list(iter_tests(_load(ROOT / f"{name}.json")))


@pytest.mark.parametrize("name", ["pfns", "v3-bmap", "v3-req", "hybrid", "stats", "config",
                                  "hint-cmd", "pageset-spec", "pageset-v3", "pageset-hybrid",
                                  "ring-split"])
def test_every_kind_in_both_byte_orders(name: str) -> None:
    assert {g["endian"] for g, _ in _tests(name)} == {"le", "be"}


def test_bitmap_word_layouts_and_roles() -> None:
    combos = {(g["endian"], g["wordSize"], g["wordOrder"], g["role"]) for g, _ in
              _tests("v3-bmap")}
    for e in ("le", "be"):
        for ws in (32, 64):
            for wo in ("le", "be"):
                for role in ("inflate", "misc"):
                    assert (e, ws, wo, role) in combos


def _ids(name: str) -> set[str]:
    return {t["id"] for _, t in _tests(name)}


def test_boundary_and_malformed_classes_present() -> None:
    want = {
        "pfns": ["le-4k/pfn-0", "be-4k/pfn-max", "le-4k/full-256-run", "le-4k/trailing-3",
                 "be-4k/over-256", "le-4k/duplicate", "le-64k/misaligned-group"],
        "v3-bmap": ["be64/bits-beyond-len", "le32-wbe/len-huge", "le64/full-bmap-buffer",
                    "be32/32-buffers", "be32/33-buffers", "le64/misaligned-start",
                    "be64/reserved-nonzero", "le64/len-above-bytes", "le64/len-below-bytes",
                    "be64/page-shift-11", "le64/truncated-31", "le64/buffer-too-long",
                    "le64-64k/overlapping-bits", "misc-be64/unknown-flag",
                    "le64/past-top-of-space", "le64/no-bitmap", "le64/full-word"],
        "v3-req": ["le/reserved-1", "be/truncated-15", "le/trailing-1", "be/param-max"],
        "hybrid": ["le/order0-max", "be/order0-max", "le/data-len-above", "le/data-len-below",
                   "be/page-shift-11", "le/misaligned", "le/overlap", "le/bmap-short"],
        "stats": ["le/trailing-6", "be/linux-6.12-tags"],
        "config": ["le/size-8", "be/size-16", "le/truncated-7"],
        "hint-cmd": ["le/device-id", "be/len-8"],
        "ring-split": ["le/loop", "be/self-loop", "le/next-out-of-range", "le/addr-outside",
                       "le/indirect-nested", "le/chain-too-long", "be/idx-wrap"],
        "ring-packed": ["le/never-ends", "le/indirect-nested", "le/wrap", "le/addr-outside"],
        "pageset-v3-seed-exact": ["inflate-le64/top-of-word", "misc-le64/unused-tail",
                                  "inflate-le64/after-misc-answer"],
    }
    for name, slugs in want.items():
        have = _ids(name)
        for s in slugs:
            assert f"{name}/{s}" in have, f"{name}/{s}"


def test_results_follow_the_documented_semantics() -> None:
    by_id = {t["id"]: t for name in ("pfns", "stats", "v3-bmap", "hybrid")
             for _, t in _tests(name)}
    assert by_id["pfns/le-4k/pfn-1"]["result"] == "valid"
    assert by_id["pfns/le-4k/over-256"]["result"] == "acceptable"  # SHOULD-level only
    assert by_id["pfns/le-4k/trailing-1"]["result"] == "invalid"  # MUST-level
    # a MUST addressed to the reader (ignore unknown tags): tolerated, so acceptable
    t = by_id["stats/le/linux-6.12-tags"]
    assert t["rules"] == sorted(TOLERATED) and t["result"] == "acceptable"
    assert by_id["v3-bmap/be64/page-shift-11"]["error"]["class"] == "DecodeError"
    assert by_id["v3-bmap/be64/page-shift-11"]["error"]["field"] == "page_shift"
    # CBOR-style roundtrip: descending PFNs decode fine but are not the canonical encoding
    assert by_id["pfns/le-4k/descending"]["roundtrip"] is False
    assert "NonCanonical" in by_id["pfns/le-4k/descending"]["flags"]
    assert by_id["pfns/le-4k/pfn-1"]["roundtrip"] is True


def test_hand_checked_bytes() -> None:
    """A few vectors checked against bytes written out by hand from the C layouts."""
    by_id = {t["id"]: t for name in ("pfns", "v3-bmap", "hybrid", "v3-req")
             for _, t in _tests(name)}
    assert by_id["pfns/be-4k/pfn-1"]["hex"] == "00000001"
    assert by_id["pfns/le-4k/pfn-max"]["pages"] == [[0xFFFFFFFF, 1]]
    # struct balloon_bmap_hdr, BE: cmd 0, page_shift 12, flag 0, reserved 0, req_id 0,
    # start_pfn 0, bmap_len 8; then one BE u64 word with bit 0 set
    t = by_id["v3-bmap/be64/one-page"]
    assert t["segments"] == ["0000000c00000000" + "00" * 16 + "0000000000000008",
                             "0000000000000001"]
    assert t["pages"] == [[0, 1]]
    # 32-bit BE words under an LE header: bit 1 (page 1) is the low bit of the last byte
    t = by_id["v3-bmap/le32-wbe/header-tail"]
    assert t["hex"].endswith("0400000000000000" + "00000002")  # bmap_len 4 (le64), word
    # hybrid le: start_pfn 2^52-1, page_shift 12 -> 0x00cfffffffffffff little-endian
    t = by_id["hybrid/le/order0-max"]
    assert t["hex"] == "0000000008000000" + "ffffffffffffcf00"
    assert t["pages"] == [[(1 << 52) - 1, 1]]
    assert by_id["v3-req/be/param-max"]["hex"] == "0000" + "0000" * 3 + "ff" * 8


def test_seed_exact_vectors_show_the_seed_bugs() -> None:
    by_id = {t["id"]: t for _, t in _tests("pageset-v3-seed-exact")}
    fixed = {t["id"].replace("pageset-v3/", ""): t for _, t in _tests("pageset-v3")}
    # bug 1: a small window goes out as a bare header; bmap_len disagrees with the bytes
    t = by_id["pageset-v3-seed-exact/inflate-le64/frame-1"]
    assert [len(c["segments"]) for c in t["chains"]] == [1]
    assert t["lossless"] is False and t["result"] == "invalid"
    assert "v3.driver.bmap.len-matches-buffers" in t["rules"]
    assert fixed["inflate-le64/frame-1"]["lossless"] is True
    # bug 2: frame 0 is a multiple of BITS_PER_LONG and the highest page: never told
    assert by_id["pageset-v3-seed-exact/inflate-le64/frame-0"]["chains"] == []
    # bug 3: the inflate header after a misc answer carries flag DONE and req_id 9
    t = by_id["pageset-v3-seed-exact/inflate-le64/after-misc-answer"]
    assert "v3.driver.bmap.inflate-fields-zero" in t["rules"]
    hdr = bytes.fromhex(t["chains"][0]["segments"][0]["hex"])
    assert hdr[4:6] == b"\x01\x00" and hdr[8:16] == (9).to_bytes(8, "little")
    # bug 4: bmap_len = 1003 / 8 = 125 bytes drops frames 1000-1002
    t = by_id["pageset-v3-seed-exact/misc-le64/unused-tail"]
    assert int.from_bytes(bytes.fromhex(t["chains"][0]["segments"][0]["hex"])[24:32],
                          "little") == 125
    assert t["decodedPages"] == [] and t["pages"] == [[1000, 3]]
