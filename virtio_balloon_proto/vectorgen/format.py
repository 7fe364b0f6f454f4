"""The golden-vector file format: flags taxonomy, result semantics, deterministic JSON.

Modelled on Wycheproof (research/conformance-anchors.md section B): ``schema``,
``numberOfTests``, ``notes`` (flag -> ``bugType`` + description), ``testGroups`` holding shared
parameters and ``tests``.  Beyond Wycheproof: every test has a stable string ``id`` built from
its group's parameters and a hand-given slug (never from its position), CBOR-style
``roundtrip``, and the clause ids of ``conformance/clauses.toml`` it breaks.

Result semantics (docs/vectors.md "Results"):

* ``valid``      -- decodes, no finding at all;
* ``acceptable`` -- decodes, and every finding is SHOULD/MAY level, or a note a conforming
  decoder must tolerate (:data:`TOLERATED`: ``note.stats.unknown-tag``, unknown stats tags,
  which the spec says a device MUST ignore -- the input is legal, the rule binds the reader);
* ``invalid``    -- a MUST-level finding, or a structural error (DecodeError/RingError).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from typing import Any

from ..errors import VBProtoError
from ..findings import is_note

GENERATOR = "vbproto-vectorgen"
FORMAT_VERSION = "1"

MESSAGE_SCHEMA = "vbproto_message_test_schema_v1.json"
PAGESET_SCHEMA = "vbproto_pageset_test_schema_v1.json"
RING_SCHEMA = "vbproto_ring_test_schema_v1.json"

RESULTS = ("valid", "acceptable", "invalid")

#: findings whose rule binds the *reader*: the input is legal, so they never make it invalid
TOLERATED: dict[str, str] = {
    "note.stats.unknown-tag": (
        "VIRTIO 1.2 5.5.6.3.2: 'the device MUST ignore entries with tag values that it does not "
        "recognize'; Linux >= 6.12 sends 10-15 and crosvm 65534/65535 (a note: no rule broken)"
    ),
}

#: the flag taxonomy: flag -> (bugType, description).  bugTypes follow Wycheproof's spirit:
#: BASIC, EDGE_CASE, MALFORMED (structural), MODIFIED (decodes but breaks a rule),
#: LEGACY (real-world dialect behaviour), SEED_BUG (the 2016 seed driver's own mistakes),
#: NON_CANONICAL (decodes, but is not what the reference encoder would emit).
FLAGS: dict[str, tuple[str, str]] = {
    "Normal": ("BASIC", "An ordinary message as a correct driver or device sends it."),
    "Random": ("BASIC", "Built from a seeded pseudo-random page set or value (fixed seed)."),
    "Empty": ("EDGE_CASE", "No element / no page at all."),
    "ZeroValue": ("EDGE_CASE", "Fields at 0 (PFN 0, command id STOP, ...)."),
    "MaxValue": ("EDGE_CASE", "A field at the largest value it can hold (2^32-1 PFN, 2^52-1 "
                 "hybrid PFN, 2^64-1 param, ...)."),
    "FullBuffer": ("EDGE_CASE", "A buffer at the driver's limit: 256 PFNs, a full 8*PAGE_SIZE "
                   "bitmap buffer, 32 bitmap buffers, all bits set."),
    "WordBoundary": ("EDGE_CASE", "Pages on both sides of a BITS_PER_LONG / 64-frame boundary."),
    "LargePage": ("EDGE_CASE", "A guest with PAGE_SIZE > 4 KiB (64 KiB): several 4 KiB PFNs or "
                  "a page_shift of 16 per page."),
    "BigEndian": ("LEGACY", "__virtio fields in big-endian order (legacy interface on a BE guest: "
                  "s390x, ppc64)."),
    "WordOrder": ("LEGACY", "The v3 bitmap's unsigned long words in an order different from the "
                  "header's (the seed never byte-swaps the bitmap)."),
    "ConfigAlwaysLE": ("LEGACY", "Config space is little-endian even for legacy devices: the "
                       "group's endian parameter does not apply."),
    "SegmentLayout": ("EDGE_CASE", "The header split over descriptors, or bitmap bytes in the "
                      "header's own descriptor: boundaries matter to the buffer rules."),
    "Truncated": ("MALFORMED", "Shorter than the fixed header or record: a DecodeError."),
    "TrailingBytes": ("MODIFIED", "Bytes after the last whole element (a partial PFN, stats "
                      "entry or record, or bytes after a fixed-size structure)."),
    "ReservedNonZero": ("MODIFIED", "A reserved field is not 0."),
    "LengthMismatch": ("MODIFIED", "A length field (bmap_len, data_len) disagrees with the bytes "
                       "present, in either direction."),
    "HugeLength": ("MODIFIED", "A length field far larger than any buffer (2^64-1, 2^32-1): "
                   "a decoder must not allocate from it."),
    "Misaligned": ("MODIFIED", "A start PFN not aligned as required (BITS_PER_LONG for v3, the "
                   "block's natural alignment for hybrid, the guest page for PFN arrays)."),
    "PageShiftRange": ("MALFORMED", "page_shift outside any page size (below 12, above 30 for "
                       "v3): bits cannot be mapped to pages."),
    "PageShiftMismatch": ("MODIFIED", "page_shift is a page size, but not the guest's."),
    "BitsBeyondLength": ("MODIFIED", "Bitmap bits set past bmap_len: not pages, but present."),
    "Duplicate": ("MODIFIED", "A page named twice (duplicate PFN, overlapping records or bits)."),
    "UnknownValue": ("MODIFIED", "An unknown command, flag or tag value."),
    "TooMany": ("MODIFIED", "More than the driver's limit: >256 PFNs, >32 bitmap buffers, a "
                "bitmap buffer longer than 8*PAGE_SIZE."),
    "AddressOverflow": ("MALFORMED", "Pages reaching past the 64-bit frame space."),
    "InflateFieldsSet": ("MODIFIED", "cmd/flag/req_id set on an inflate/deflate header (what the "
                         "seed driver does after a misc answer: seed bug 3)."),
    "NonCanonical": ("NON_CANONICAL", "Decodes, but the reference encoder of the same pages "
                     "would emit different bytes (roundtrip is false)."),
    "SeedBug1": ("SEED_BUG", "Seed tell_host(): nr_used_bmap = nr_pfn / PFNS_PER_BMAP truncates: "
                 "a small window goes out as a header with no bitmap buffer."),
    "SeedBug2": ("SEED_BUG", "Seed set_page_bitmap(): max_pfn rounded up to BITS_PER_LONG is "
                 "exclusive: a highest page that starts a word of its own is never told."),
    "SeedBug3": ("SEED_BUG", "Seed shares one bmap_hdr between inflate/deflate and misc answers: "
                 "after an answer, inflate headers carry its cmd/flag/req_id."),
    "SeedBug4": ("SEED_BUG", "Seed send_unused_pages_info(): bmap_len = nr_pfn / 8 truncates: the "
                 "last nr_pfn % 8 pages are never reported."),
    "Ranges": ("BASIC", "Pages named by device-writable descriptor address/length (free page "
               "hinting and reporting)."),
    "MiscAnswer": ("BASIC", "A misc-queue answer to GET_UNUSED_PAGES (CONT ... DONE)."),
    "RingChain": ("BASIC", "Chains walked from a ring image as a device does."),
    "RingIndirect": ("EDGE_CASE", "An indirect descriptor table (VIRTQ_DESC_F_INDIRECT)."),
    "RingWrap": ("EDGE_CASE", "A free-running index or packed wrap counter wrapping around."),
    "RingEmpty": ("EDGE_CASE", "Nothing available."),
    "RingLoop": ("MALFORMED", "A descriptor loop: the walker must stop with RingError."),
    "RingOutOfRange": ("MALFORMED", "An index or address outside the table, ring or memory."),
    "RingNestedIndirect": ("MALFORMED", "INDIRECT inside an indirect table, or INDIRECT with "
                           "NEXT."),
    "RingChainTooLong": ("MODIFIED", "A chain longer than the queue size (or one that never "
                         "ends)."),
    "RingOrder": ("MODIFIED", "A device-readable buffer after a device-writable one."),
}


@cache
def _levels() -> dict[str, str]:
    from ..conformance.catalog import catalog

    return {c.id: c.level for c in catalog()}


def clause_level(rule: str) -> str:
    """MUST/SHOULD/MAY of a clause id (unknown ids count as MUST: never silently lenient)."""
    return _levels().get(rule, "MUST")


def classify(rules: Iterable[str]) -> str:
    """The result of a decodable input from the rules of its findings."""
    rs = set(rules)
    if not rs:
        return "valid"
    if any(clause_level(r) == "MUST" and r not in TOLERATED and not is_note(r) for r in rs):
        return "invalid"
    return "acceptable"


def error_json(exc: VBProtoError) -> dict[str, Any]:
    """The ``error`` object of a vector or a codec answer: class, field, clause."""
    out: dict[str, Any] = {"class": type(exc).__name__}
    if exc.field is not None:
        out["field"] = exc.field
    if exc.clause is not None:
        out["clause"] = exc.clause
    return out


def notes_for(flags: Iterable[str]) -> dict[str, dict[str, str]]:
    return {f: {"bugType": FLAGS[f][0], "description": FLAGS[f][1]} for f in sorted(set(flags))}


# --- deterministic JSON -----------------------------------------------------------------------
def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, bool))


def dumps(obj: Any, indent: int = 0) -> str:
    """Sorted keys, 1-space nesting, lists of scalars on one line; no floats allowed.

    The layout keeps files diffable (one field per line) without putting each of 256 PFNs on a
    line of its own.
    """
    pad = " " * indent
    inner = " " * (indent + 1)
    if isinstance(obj, float):
        raise TypeError("vector files are float-free")
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(str(k))}: {dumps(obj[k], indent + 1)}"
                 for k in sorted(obj)]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if not obj:
            return "[]"
        if all(_scalar(x) for x in obj) or all(
            isinstance(x, (list, tuple)) and all(_scalar(y) for y in x) for x in obj
        ):
            return json.dumps(obj, separators=(", ", ": "))
        return "[\n" + ",\n".join(inner + dumps(x, indent + 1) for x in obj) + "\n" + pad + "]"
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return json.dumps(obj)
    raise TypeError(f"cannot put {type(obj).__name__} in a vector file")


def dump_file(obj: Any) -> bytes:
    return (dumps(obj) + "\n").encode("ascii")
