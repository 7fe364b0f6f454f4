"""Build the vector files: deterministic (seeded cases, sorted keys, no floats), self-checked.

Every case states what its designer expects; :func:`build_message_file` refuses to write a
vector whose decoding by the reference codec disagrees, so the corpus cannot drift along with a
codec regression, and ``tests/test_vectors_generate.py`` checks the committed files are exactly
what this module writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import UsageError, VBProtoError
from ..io import write_atomic
from .cases import Case, Group
from .format import (
    FLAGS,
    FORMAT_VERSION,
    GENERATOR,
    MESSAGE_SCHEMA,
    dump_file,
    notes_for,
)
from .reference import HEADER_KEYS, WIRE_KINDS, handle


class GenerationError(VBProtoError):
    """A case whose decoding disagrees with what its designer wrote down."""


def _hex_input(segments: tuple[bytes, ...]) -> dict[str, Any]:
    if len(segments) == 1:
        return {"hex": segments[0].hex()}
    return {"segments": [s.hex() for s in segments]}


def canonical_request(kind: str, params: dict[str, Any], ans: dict[str, Any]) -> dict[str, Any]:
    """The encode request whose answer decides ``roundtrip`` (docs/vectors.md)."""
    if "pages" in ans:
        keys = HEADER_KEYS.get(kind, set())
        header = {k: v for k, v in ans["fields"].items() if k in keys}
        return {"op": "encode", "kind": kind, "params": params, "pages": ans["pages"],
                "header": header}
    fields = {k: v for k, v in ans["fields"].items() if k != "trailing"}
    return {"op": "encode", "kind": kind, "params": params, "fields": fields}


def message_test(file: str, group: Group, c: Case, tc_id: int) -> dict[str, Any]:
    tid = f"{file}/{group.tag}/{c.slug}"
    kind = WIRE_KINDS[group.params["kind"]]
    req = {"op": "decode", "kind": kind, "params": group.params, **_hex_input(c.segments)}
    ans = handle(req)
    if "unsupported" in ans:
        raise GenerationError(f"reference codec refused the case: {ans['unsupported']}", where=tid)
    flags = set(group.flags) | set(c.flags)
    t: dict[str, Any] = {"id": tid, "tcId": tc_id, "comment": c.comment,
                         **_hex_input(c.segments)}
    data = b"".join(c.segments)
    if "error" in ans:
        if c.error is None or ans["error"].get("field") != c.error:
            raise GenerationError(f"expected {c.expect} {c.rules or ''}, codec raised "
                                  f"{ans['error']}", where=tid)
        t.update(result="invalid", error=ans["error"], roundtrip=False)
    else:
        if c.error is not None:
            raise GenerationError(f"expected an error on {c.error!r}, codec decoded it "
                                  f"({ans['rules']})", where=tid)
        if ans["result"] != c.expect or not set(c.rules) <= set(ans["rules"]):
            raise GenerationError(f"expected {c.expect} with {list(c.rules)}, codec says "
                                  f"{ans['result']} with {ans['rules']}", where=tid)
        lossless = handle({"op": "encode", "kind": kind, "params": group.params,
                           "fields": ans["fields"]})
        if lossless.get("hex") != data.hex():
            raise GenerationError(f"fields do not re-encode to the input: {lossless}", where=tid)
        canon = handle(canonical_request(kind, group.params, ans))
        roundtrip = canon.get("hex") == data.hex()
        if not roundtrip:
            flags.add("NonCanonical")
        t.update(result=ans["result"], fields=ans["fields"], rules=ans["rules"],
                 roundtrip=roundtrip)
        if "pages" in ans:
            t["pages"] = ans["pages"]
    t["flags"] = sorted(flags)
    return t


def assemble(schema: str, name: str, profile: str, header: list[str],
             groups: list[dict[str, Any]]) -> dict[str, Any]:
    """A whole file: notes only for the flags it uses; ids checked unique."""
    ids: set[str] = set()
    flags: set[str] = set()
    n = 0
    for g in groups:
        for t in g["tests"]:
            if t["id"] in ids:
                raise GenerationError(f"duplicate test id {t['id']}", where=name)
            ids.add(t["id"])
            unknown = set(t["flags"]) - set(FLAGS)
            if unknown:
                raise GenerationError(f"flags {sorted(unknown)} are not in the taxonomy",
                                      where=t["id"])
            flags.update(t["flags"])
            n += 1
    return {"schema": schema, "generator": {"name": GENERATOR, "version": FORMAT_VERSION},
            "name": name, "profile": profile, "numberOfTests": n, "header": header,
            "notes": notes_for(flags), "testGroups": groups}


def build_message_file(name: str, profile: str, groups: list[Group]) -> dict[str, Any]:
    out = []
    tc = 0
    for g in groups:
        tests = []
        for c in g.cases:
            tc += 1
            tests.append(message_test(name, g, c, tc))
        out.append({**g.params, "tag": g.tag, "tests": tests})
    header = [
        f"{name}: decoding of single {name} messages in every byte order and word layout.",
        "Inputs are hex (one descriptor) or segments (one hex string per descriptor).",
        "result: valid = no finding; acceptable = only SHOULD/MAY-level findings or findings "
        "a conforming reader must tolerate; invalid = a MUST-level finding or a structural "
        "error.  See docs/vectors.md.",
    ]
    return assemble(MESSAGE_SCHEMA, name, profile, header, out)


def all_files() -> dict[str, Callable[[], dict[str, Any]]]:
    """File name (without .json) -> builder."""
    from .pageset_cases import PAGESET_FILES, build_pageset_file
    from .ring_cases import RING_FILES, build_ring_file
    from .wire_cases import MESSAGE_FILES

    files: dict[str, Callable[[], dict[str, Any]]] = {}
    for name, (profile, fn) in MESSAGE_FILES.items():
        files[name] = lambda name=name, profile=profile, fn=fn: build_message_file(  # type: ignore[misc]
            name, profile, fn())
    for name in PAGESET_FILES:
        files[name] = lambda name=name: build_pageset_file(name)  # type: ignore[misc]
    for name in RING_FILES:
        files[name] = lambda name=name: build_ring_file(name)  # type: ignore[misc]
    return files


def render_all(only: Iterable[str] | None = None) -> dict[str, bytes]:
    """Relative path -> file bytes, for every vector file and schema."""
    from .schemas import SCHEMAS

    files = all_files()
    names = sorted(files) if only is None else sorted(only)
    out: dict[str, bytes] = {}
    for n in names:
        if n not in files:
            raise UsageError(f"unknown vector file {n!r}", field="name")
        out[f"{n}.json"] = dump_file(files[n]())
    for sname, schema in SCHEMAS.items():
        out[f"schema/{sname}"] = dump_file(schema)
    return out


def generate(out_dir: str | Path) -> list[Path]:
    """Write every vector file and schema under ``out_dir``; return the paths written."""
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} is not a directory", field="out")
    (root / "schema").mkdir(parents=True, exist_ok=True)
    written = []
    for rel, data in render_all().items():
        p = root / rel
        write_atomic(p, data)
        written.append(p)
    return written
