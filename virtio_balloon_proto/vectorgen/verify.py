"""Check a codec -- ours in-process, or another one over stdio -- against every vector.

Per test, the checks run in order and the first mismatch fails the test:

* message vectors: ``decode`` (error or not; ``fields``/``pages`` when the codec returns them;
  ``rules`` and ``result`` when it returns them), then ``encode`` of ``fields`` back to the
  input, then (``roundtrip: true``) the canonical encoding of the meaning to the input;
* page-set vectors: ``encode_pages`` to exactly the listed chains, then ``decode`` of each
  chain back to its pages;
* ring vectors: ``walk`` to exactly the listed chains, or an error.

An ``{"unsupported": ...}`` answer to the first request of a test skips the test; to a later
(optional) request it ends the test's checks with a pass.  ``result`` comparison is
Wycheproof's: a codec may call an ``acceptable`` vector valid or invalid, nothing else.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from ..errors import PeerError, UsageError
from ..io import write_atomic
from ..limits import clean_text
from .generate import canonical_request
from .reference import WIRE_KINDS, handle


class Codec(Protocol):
    name: str

    def request(self, req: dict[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


class ReferenceCodec:
    """Our own codec, in-process."""

    name = "reference"

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        # a JSON round trip, so the in-process path sees exactly what a stdio peer would
        return json.loads(json.dumps(handle(json.loads(json.dumps(req)))))  # type: ignore[no-any-return]

    def close(self) -> None:
        pass


@dataclass
class Outcome:
    file: str
    id: str
    status: str  # passed | failed | skipped
    message: str = ""


@dataclass
class Report:
    codec: str
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self, file: str | None = None) -> dict[str, int]:
        c = {"passed": 0, "failed": 0, "skipped": 0}
        for o in self.outcomes:
            if file is None or o.file == file:
                c[o.status] += 1
        return c

    @property
    def files(self) -> list[str]:
        return list(dict.fromkeys(o.file for o in self.outcomes))

    def failed_ids(self) -> set[str]:
        return {o.id for o in self.outcomes if o.status == "failed"}

    @property
    def ok(self) -> bool:
        return self.counts()["failed"] == 0

    def summary_lines(self, max_failures: int = 20) -> list[str]:
        lines = []
        for f in self.files:
            c = self.counts(f)
            lines.append(f"{f}: {c['passed']} passed, {c['failed']} failed, "
                         f"{c['skipped']} skipped")
        fails = [o for o in self.outcomes if o.status == "failed"]
        for o in fails[:max_failures]:
            lines.append(clean_text(f"FAIL {o.id}: {o.message}"))
        if len(fails) > max_failures:
            lines.append(f"... and {len(fails) - max_failures} more failures")
        t = self.counts()
        lines.append(f"total ({self.codec}): {t['passed']} passed, {t['failed']} failed, "
                     f"{t['skipped']} skipped")
        return lines

    def junit_xml(self) -> bytes:
        t = self.counts()
        root = ET.Element("testsuites", name=f"vbproto vectors ({self.codec})",
                          tests=str(len(self.outcomes)), failures=str(t["failed"]),
                          skipped=str(t["skipped"]))
        for f in self.files:
            c = self.counts(f)
            suite = ET.SubElement(root, "testsuite", name=f, tests=str(sum(c.values())),
                                  failures=str(c["failed"]), skipped=str(c["skipped"]))
            for o in self.outcomes:
                if o.file != f:
                    continue
                tc = ET.SubElement(suite, "testcase", classname=f, name=o.id)
                msg = clean_text(o.message)  # a codec's text: controls, lone surrogates
                if o.status == "failed":
                    ET.SubElement(tc, "failure", message=msg[:500]).text = msg
                elif o.status == "skipped":
                    ET.SubElement(tc, "skipped", message=msg[:500])
        ET.indent(root)
        xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        return xml + b"\n"


class _Fail(Exception):
    pass


class _Skip(Exception):
    pass


# --- loading ------------------------------------------------------------------------------------
def default_dir() -> Path:
    return Path(str(resources.files("virtio_balloon_proto.vectors")))


def load_files(directory: str | Path | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Every ``*.json`` vector file of ``directory``, schema-checked, sorted by name."""
    import jsonschema  # type: ignore[import-untyped]

    from ..schemas import ecma_validator
    from .schemas import SCHEMAS

    root = Path(directory) if directory is not None else default_dir()
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory of vector files", field="dir")
    paths = sorted(root.glob("*.json"))
    if not paths:
        raise UsageError(f"{root} holds no *.json vector files", field="dir")
    out = []
    for p in paths:
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{p}: not a readable JSON file ({exc})", field="dir") from None
        name = doc.get("schema") if isinstance(doc, dict) else None
        schema = SCHEMAS.get(name) if isinstance(name, str) else None
        if schema is None:
            raise UsageError(f"{p}: unknown or missing 'schema'", field="schema")
        err = jsonschema.exceptions.best_match(
            ecma_validator(schema).iter_errors(doc))
        if err is not None:
            where = "/".join(map(str, err.absolute_path))
            raise UsageError(f"{p}: does not follow {doc['schema']}: {err.message[:200]} "
                             f"(at {where or 'top'})", field="schema")
        out.append((p.stem, doc))
    return out


# --- checks --------------------------------------------------------------------------------------
def _ask(codec: Codec, req: dict[str, Any], what: str, *, optional: bool = False
         ) -> dict[str, Any] | None:
    try:
        ans = codec.request(req)
    except PeerError as exc:
        raise _Fail(f"{what}: {exc}") from None
    if "unsupported" in ans:
        if optional:
            return None
        raise _Skip(f"{what}: unsupported ({ans['unsupported']})")
    return ans


def _eq(what: str, got: Any, want: Any) -> None:
    if got != want:
        g, w = json.dumps(got)[:160], json.dumps(want)[:160]
        raise _Fail(f"{what}: got {g}, expected {w}")


def _check_error(what: str, ans: dict[str, Any], want: dict[str, Any]) -> None:
    if "error" not in ans or ans["error"] in (None, False):
        raise _Fail(f"{what}: expected {want['class']} ({want.get('clause') or want.get('field')}),"
                    f" codec accepted it")
    err = ans["error"]
    if isinstance(err, dict) and "class" in err:
        _eq(f"{what} error class", err["class"], want["class"])


def _check_decoded(what: str, ans: dict[str, Any], t: dict[str, Any]) -> None:
    if ans.get("error") not in (None, False):
        raise _Fail(f"{what}: codec raised {json.dumps(ans['error'])[:160]}, vector decodes")
    if "fields" not in ans and "pages" not in ans:
        raise _Fail(f"{what}: answer has neither fields nor pages")
    if "fields" in ans and "fields" in t:
        _eq(f"{what} fields", ans["fields"], t["fields"])
    if "pages" in t:
        if "pages" in ans:
            _eq(f"{what} pages", ans["pages"], t["pages"])
        elif "fields" not in ans:
            raise _Fail(f"{what}: no pages in the answer")
    if "rules" in ans and "rules" in t:
        _eq(f"{what} rules", sorted(set(ans["rules"])), t["rules"])
    if "result" in ans:
        r, want = ans["result"], t["result"]
        if want != "acceptable" and r != want:
            raise _Fail(f"{what}: codec says {r}, vector is {want}")


def _chains(ans: dict[str, Any], what: str, want: int) -> list[Any]:
    chains = ans.get("chains")
    if not isinstance(chains, list):
        raise _Fail(f"{what}: answer has no 'chains' list")
    _eq(f"{what} chain count", len(chains), want)
    return chains


def _input(t: dict[str, Any]) -> dict[str, Any]:
    return {"segments": t["segments"]} if "segments" in t else {"hex": t["hex"]}


def check_message(codec: Codec, g: dict[str, Any], t: dict[str, Any]) -> None:
    params = {k: g[k] for k in ("kind", "profile", "role", "endian", "wordSize", "wordOrder",
                                "pageSize")}
    kind = WIRE_KINDS[g["kind"]]
    ans = _ask(codec, {"op": "decode", "kind": kind, "params": params, **_input(t)}, "decode")
    assert ans is not None
    if "error" in t:
        _check_error("decode", ans, t["error"])
        return
    _check_decoded("decode", ans, t)
    data = "".join(t["segments"]) if "segments" in t else t["hex"]
    enc = _ask(codec, {"op": "encode", "kind": kind, "params": params, "fields": t["fields"]},
               "encode", optional=True)
    if enc is None:
        return
    _eq("encode(fields)", enc.get("hex"), data)
    if t["roundtrip"]:
        canon = _ask(codec, canonical_request(kind, params, t), "canonical encode",
                     optional=True)
        if canon is not None:
            _eq("canonical encode", canon.get("hex"), data)


PAGESET_PARAMS = ("profile", "role", "endian", "wordSize", "wordOrder", "pageSize", "exact",
                  "nrPageBmap", "bitmaps")


def check_pageset(codec: Codec, g: dict[str, Any], t: dict[str, Any]) -> None:
    params = {k: g[k] for k in PAGESET_PARAMS if k in g}
    extra: dict[str, Any] = {k: t[k] for k in ("reqId", "maxPfn", "cmdId", "priorMiscAnswer")
                             if k in t}
    ans = _ask(codec, {"op": "encode_pages", "params": params, "pages": t["pages"], **extra},
               "encode_pages")
    assert ans is not None
    if "error" in t:
        _check_error("encode_pages", ans, t["error"])
        return
    if ans.get("error") not in (None, False):
        raise _Fail(f"encode_pages: codec raised {json.dumps(ans['error'])[:160]}")
    chains = _chains(ans, "encode_pages", len(t["chains"]))
    for k, (got, want) in enumerate(zip(chains, t["chains"], strict=True)):
        _eq(f"chain {k}", got, want["segments"])
    for k, ch in enumerate(t["chains"]):
        if ch["kind"] not in ("pfns", "bmap", "hybrid", "hint-cmd"):
            continue
        outs = [s["hex"] for s in ch["segments"] if not s["writable"]]
        dparams = {**params, "kind": ch["kind"]}
        req: dict[str, Any] = {"op": "decode", "kind": ch["kind"], "params": dparams}
        req.update({"segments": outs} if ch["kind"] == "bmap" and len(outs) > 1
                   else {"hex": "".join(outs)})
        dec = _ask(codec, req, f"decode chain {k}", optional=True)
        if dec is None:
            continue
        if dec.get("error") not in (None, False):
            raise _Fail(f"decode chain {k}: codec raised {json.dumps(dec['error'])[:160]}")
        if "pages" in dec and ch["kind"] != "hint-cmd":
            _eq(f"decode chain {k} pages", dec["pages"], ch["pages"])
        if "rules" in dec:
            _eq(f"decode chain {k} rules", sorted(set(dec["rules"])), ch["rules"])


def check_ring(codec: Codec, g: dict[str, Any], t: dict[str, Any]) -> None:
    params = {k: g[k] for k in ("endian", "size", "desc", "avail", "used") if k in g}
    ans = _ask(codec, {"op": "walk", "ring": g["ring"], "params": params,
                       "memory": t["memory"], "start": t["start"]}, "walk")
    assert ans is not None
    if "error" in t:
        _check_error("walk", ans, t["error"])
        err = ans["error"]
        if isinstance(err, dict) and "clause" in err:
            _eq("walk error clause", err["clause"], t["error"].get("clause"))
        return
    if ans.get("error") not in (None, False):
        raise _Fail(f"walk: codec raised {json.dumps(ans['error'])[:160]}, vector walks")
    chains = _chains(ans, "walk", len(t["chains"]))
    for k, (got, want) in enumerate(zip(chains, t["chains"], strict=True)):
        _eq(f"chain {k}", got, want)


CHECKERS: dict[str, Callable[[Codec, dict[str, Any], dict[str, Any]], None]] = {
    "vbproto_message_test_schema_v1.json": check_message,
    "vbproto_pageset_test_schema_v1.json": check_pageset,
    "vbproto_ring_test_schema_v1.json": check_ring,
}


def iter_tests(doc: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for g in doc["testGroups"]:
        for t in g["tests"]:
            yield g, t


def verify(directory: str | Path | None = None, codec: Codec | None = None) -> Report:
    """Run every vector of ``directory`` (default: the packaged corpus) against ``codec``
    (default: ours)."""
    files = load_files(directory)
    codec = codec or ReferenceCodec()
    report = Report(codec.name)
    try:
        for name, doc in files:
            check = CHECKERS[doc["schema"]]
            for g, t in iter_tests(doc):
                try:
                    check(codec, g, t)
                    report.outcomes.append(Outcome(name, t["id"], "passed"))
                except _Fail as exc:
                    report.outcomes.append(Outcome(name, t["id"], "failed", str(exc)))
                except _Skip as exc:
                    report.outcomes.append(Outcome(name, t["id"], "skipped", str(exc)))
                except (KeyError, TypeError, AttributeError, ValueError) as exc:
                    # an answer of the wrong shape (a string where an object belongs, ...)
                    report.outcomes.append(Outcome(name, t["id"], "failed",
                                                   f"malformed answer ({type(exc).__name__}: "
                                                   f"{exc})"))
    finally:
        codec.close()
    return report


def open_codec(spec: str | None, timeout: float) -> Codec:
    """``None``/``reference`` -> ours; ``stdio:CMD`` -> an external process."""
    if spec is None or spec == "reference":
        return ReferenceCodec()
    if spec.startswith("stdio:"):
        from .stdio import StdioCodec

        return StdioCodec(spec[len("stdio:"):], timeout)
    raise UsageError(f"unknown implementation {spec!r} (reference or stdio:'CMD')",
                     field="impl")


def write_junit(path: str | Path, report: Report) -> None:
    write_atomic(path, report.junit_xml())
