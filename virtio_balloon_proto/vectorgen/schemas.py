"""JSON Schemas (draft 2020-12) of the three vector file types, written to vectors/schema/.

Kept as Python so the shared definitions are written once; ``vbproto vectors generate`` emits
them next to the vectors and the drift test covers them like any vector file.  Every object
is closed (``additionalProperties: false``).
"""

from __future__ import annotations

from typing import Any

from .format import FLAGS, MESSAGE_SCHEMA, PAGESET_SCHEMA, RESULTS, RING_SCHEMA

HEX = {"type": "string", "pattern": "^([0-9a-f]{2})*$"}
U64 = {"type": "integer", "minimum": 0, "maximum": (1 << 64) - 1}
ID = {"type": "string", "pattern": "^[a-z0-9-]+/[a-z0-9-]+/[a-z0-9.-]+$"}
RULE = {"type": "string", "pattern": "^[a-z0-9]+(\\.[a-z0-9-]+)+$"}
EXTENTS = {"type": "array", "items": {"type": "array", "prefixItems": [U64, U64],
                                      "minItems": 2, "maxItems": 2}}


def _closed(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": False}


ERROR = _closed({"class": {"enum": ["DecodeError", "RingError", "EncodeError"]},
                 "field": {"type": "string"}, "clause": RULE}, ["class"])

COMMON_TEST = {
    "id": ID,
    "tcId": {"type": "integer", "minimum": 1},
    "comment": {"type": "string"},
    "flags": {"type": "array", "items": {"enum": sorted(FLAGS)}, "uniqueItems": True},
    "result": {"enum": list(RESULTS)},
    "rules": {"type": "array", "items": RULE, "uniqueItems": True},
    "error": {"$ref": "#/$defs/error"},
}
LAYOUT = {
    "profile": {"enum": ["spec", "v3", "hybrid"]},
    "endian": {"enum": ["le", "be"]},
    "wordSize": {"enum": [32, 64]},
    "wordOrder": {"enum": ["le", "be"]},
    "pageSize": {"enum": [4096, 16384, 65536]},
    "tag": {"type": "string", "pattern": "^[a-z0-9-]+$"},
}


def _file(title: str, schema_name: str, group: dict[str, Any],
          defs: dict[str, Any]) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://virtio-balloon-proto.invalid/schema/{schema_name}",
        "title": title,
        "type": "object",
        "additionalProperties": False,
        "required": ["schema", "generator", "name", "profile", "numberOfTests", "header",
                     "notes", "testGroups"],
        "properties": {
            "schema": {"const": schema_name},
            "generator": _closed({"name": {"type": "string"}, "version": {"type": "string"}},
                                 ["name", "version"]),
            "name": {"type": "string"},
            "profile": {"enum": ["spec", "v3", "hybrid"]},
            "numberOfTests": {"type": "integer", "minimum": 0},
            "header": {"type": "array", "items": {"type": "string"}},
            "notes": {"type": "object", "propertyNames": {"enum": sorted(FLAGS)},
                      "additionalProperties": _closed(
                          {"bugType": {"enum": sorted({b for b, _ in FLAGS.values()})},
                           "description": {"type": "string"}}, ["bugType", "description"])},
            "testGroups": {"type": "array", "items": group},
        },
        "$defs": {"error": ERROR, **defs},
    }


def message_schema() -> dict[str, Any]:
    test = _closed({
        **COMMON_TEST,
        "hex": HEX,
        "segments": {"type": "array", "items": HEX, "minItems": 2},
        "fields": {"type": "object"},
        "pages": EXTENTS,
        "roundtrip": {"type": "boolean"},
    }, ["id", "tcId", "comment", "flags", "result", "roundtrip"])
    test["oneOf"] = [{"required": ["hex"]}, {"required": ["segments"]}]
    test["anyOf"] = [{"required": ["error"]}, {"required": ["fields", "rules"]}]
    group = _closed({
        **LAYOUT,
        "kind": {"enum": ["pfns", "bmap", "req", "hybrid", "stats", "config", "hint-cmd"]},
        "role": {"enum": ["inflate", "deflate", "misc", "stats", "config", "free_page"]},
        "tests": {"type": "array", "items": {"$ref": "#/$defs/test"}},
    }, ["kind", "profile", "role", "endian", "wordSize", "wordOrder", "pageSize", "tag",
        "tests"])
    return _file("vbproto message decoding vectors", MESSAGE_SCHEMA, group, {"test": test})


def pageset_schema() -> dict[str, Any]:
    seg = _closed({"addr": U64, "len": {"type": "integer", "minimum": 0},
                   "writable": {"type": "boolean"}, "hex": HEX},
                  ["addr", "len", "writable", "hex"])
    chain = _closed({"segments": {"type": "array", "items": seg, "minItems": 1},
                     "kind": {"enum": ["pfns", "bmap", "hybrid", "hint-cmd", "ranges", "empty"]},
                     "pages": EXTENTS,
                     "rules": {"type": "array", "items": RULE}},
                    ["segments", "kind", "pages", "rules"])
    test = _closed({
        **COMMON_TEST,
        "pages": EXTENTS,
        "reqId": U64,
        "maxPfn": U64,
        "cmdId": U64,
        "priorMiscAnswer": _closed({"pages": EXTENTS, "reqId": U64, "maxPfn": U64},
                                   ["pages", "reqId", "maxPfn"]),
        "chains": {"type": "array", "items": chain},
        "decodedPages": EXTENTS,
        "lossless": {"type": "boolean"},
    }, ["id", "tcId", "comment", "flags", "result", "pages"])
    test["anyOf"] = [{"required": ["error"]},
                     {"required": ["chains", "decodedPages", "lossless", "rules"]}]
    group = _closed({
        **LAYOUT,
        "role": {"enum": ["inflate", "deflate", "misc", "reporting", "free_page"]},
        "exact": {"type": "boolean"},
        "nrPageBmap": {"type": "integer", "minimum": 1, "maximum": 32},
        "bitmaps": {"type": "boolean"},
        "tests": {"type": "array", "items": {"$ref": "#/$defs/test"}},
    }, ["profile", "role", "endian", "wordSize", "wordOrder", "pageSize", "tag", "tests"])
    return _file("vbproto page-set encoding vectors", PAGESET_SCHEMA, group, {"test": test})


def ring_schema() -> dict[str, Any]:
    desc = _closed({"index": {"type": "integer", "minimum": 0},
                    "table": {"type": ["integer", "null"]},
                    "addr": U64, "len": {"type": "integer", "minimum": 0},
                    "flags": {"type": "integer", "minimum": 0, "maximum": 65535},
                    "next": {"type": "integer"}, "id": {"type": "integer"},
                    "hex": {"oneOf": [HEX, {"type": "null"}]}},
                   ["index", "table", "addr", "len", "flags", "hex"])
    chain = _closed({"head": {"type": "integer"}, "availIdx": {"type": "integer"},
                     "position": {"type": "integer"},
                     "descriptors": {"type": "array", "items": desc, "minItems": 1},
                     "rules": {"type": "array", "items": RULE}},
                    ["head", "descriptors", "rules"])
    test = _closed({
        **COMMON_TEST,
        "memory": {"type": "array", "items": _closed({"gpa": U64, "hex": HEX}, ["gpa", "hex"])},
        "start": _closed({"lastAvail": {"type": "integer", "minimum": 0, "maximum": 65535},
                          "position": {"type": "integer", "minimum": 0},
                          "wrap": {"enum": [0, 1]}}, []),
        "chains": {"type": "array", "items": chain},
    }, ["id", "tcId", "comment", "flags", "result", "memory", "start"])
    test["anyOf"] = [{"required": ["error"]}, {"required": ["chains", "rules"]}]
    group = _closed({
        "ring": {"enum": ["split", "packed"]},
        "endian": {"enum": ["le", "be"]},
        "size": {"type": "integer", "minimum": 1, "maximum": 32768},
        "desc": U64, "avail": U64, "used": U64,
        "tag": LAYOUT["tag"],
        "tests": {"type": "array", "items": {"$ref": "#/$defs/test"}},
    }, ["ring", "endian", "size", "desc", "tag", "tests"])
    return _file("vbproto virtqueue ring-image vectors", RING_SCHEMA, group, {"test": test})


SCHEMAS = {MESSAGE_SCHEMA: message_schema(), PAGESET_SCHEMA: pageset_schema(),
           RING_SCHEMA: ring_schema()}
