"""Our own codec behind the vector request/response protocol (docs/vectors.md "stdio protocol").

A codec under test answers JSON requests; this module is the reference answerer, used to
generate the vectors, to verify our codec in-process, and (``python -m
virtio_balloon_proto.vectorgen.serve``) as a stdio peer.  Requests:

* ``{"op": "decode", "kind", "params", "hex" | "segments"}`` ->
  ``{"fields", "pages"?, "rules", "result"}`` or ``{"error": {"class", "field"?, "clause"?}}``
* ``{"op": "encode", "kind", "params", "fields" | "pages"}`` -> ``{"hex", "segments"}``
* ``{"op": "encode_pages", "params", "pages", ...}`` -> ``{"chains": [[segment...]...]}``
* ``{"op": "walk", "ring": "split" | "packed", "params", "memory", "start"}`` ->
  ``{"chains": [...]}`` or ``{"error": ...}``

``params`` carries the group parameters: ``profile, kind, role, endian, wordSize, wordOrder,
pageSize`` (plus ``exact``, ``bitmaps``, ``nrPageBmap`` for page sets).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..codecs import Segment, decode_buffer
from ..codecs import hybrid as hybrid_codec
from ..codecs import spec as spec_codec
from ..codecs import v3 as v3_codec
from ..errors import DecodeError, UsageError, VBProtoError
from ..pageset import PageSet
from ..virtqueue.chains import Chain as RingChain
from ..virtqueue.memory import MemoryImage
from ..virtqueue.packed_device import PackedQueueDevice
from ..virtqueue.split_device import SplitQueueDevice
from ..wire import WireLayout, decode, encode_segments, message_from_json
from .format import classify, error_json

WIRE_KINDS = {"pfns": "pfns", "v3-bmap": "bmap", "bmap": "bmap", "v3-req": "req", "req": "req",
              "hybrid": "hybrid", "stats": "stats", "config": "config", "hint-cmd": "hint-cmd"}


def _get(obj: dict[str, Any], key: str, typ: type, default: Any = None) -> Any:
    v = obj.get(key, default)
    if v is None or not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise UsageError(f"request field {key!r} must be {typ.__name__}", field=key)
    return v


def layout_of(params: dict[str, Any]) -> WireLayout:
    endian = _get(params, "endian", str, "le")
    return WireLayout(endian, _get(params, "wordSize", int, 64),
                      _get(params, "wordOrder", str, endian), _get(params, "pageSize", int, 4096))


def _hexes(req: dict[str, Any]) -> list[bytes]:
    try:
        if "segments" in req:
            segs = req["segments"]
            if not isinstance(segs, list):
                raise UsageError("segments must be a list of hex strings", field="segments")
            return [bytes.fromhex(s) for s in segs]
        return [bytes.fromhex(_get(req, "hex", str))]
    except (TypeError, ValueError):
        raise UsageError("hex/segments must be hex strings", field="hex") from None


def _kind(params: dict[str, Any], req: dict[str, Any]) -> str:
    k = req.get("kind", params.get("kind"))
    if not isinstance(k, str) or k not in WIRE_KINDS:  # a list or object is not hashable
        raise UsageError(f"unknown kind {k!r}", field="kind")
    return WIRE_KINDS[k]


def decode_request(req: dict[str, Any]) -> dict[str, Any]:
    params = _get(req, "params", dict)
    kind = _kind(params, req)
    segs = _hexes(req)
    role = _get(params, "role", str, "inflate")
    try:
        d = decode(kind, segs if kind == "bmap" else b"".join(segs), layout_of(params),
                   profile=_get(params, "profile", str, "spec"),
                   role=role if role in ("inflate", "deflate", "misc") else "inflate")
    except DecodeError as exc:
        return {"error": error_json(exc)}
    rules = sorted({f.rule for f in d.findings})
    out: dict[str, Any] = {"fields": d.fields(), "rules": rules, "result": classify(rules)}
    if d.carries_pages:
        out["pages"] = d.extents()
    return out


#: header fields a canonical (from-pages) encoding keeps from the decoded message: they carry
#: no pages (v3 misc answers: cmd/flag/req_id; hybrid: cmd/flag/id)
HEADER_KEYS = {"bmap": {"cmd", "flag", "req_id"}, "hybrid": {"cmd", "flag", "id"}}


def encode_request(req: dict[str, Any]) -> dict[str, Any]:
    params = _get(req, "params", dict)
    kind = _kind(params, req)
    layout = layout_of(params)
    role = _get(params, "role", str, "inflate")
    role = role if role in ("inflate", "deflate", "misc") else "inflate"
    if "fields" in req:
        msg = message_from_json(kind, {"fields": req["fields"]}, layout, role=role)
    else:
        msg = message_from_json(kind, {"pages": req.get("pages")}, layout, role=role)
        header = req.get("header") or {}
        if not isinstance(header, dict) or not set(header) <= HEADER_KEYS.get(kind, set()):
            raise UsageError(f"header may hold only {sorted(HEADER_KEYS.get(kind, set()))}",
                             field="header")
        if header:
            msg = dataclasses.replace(msg, **header)
    segs = encode_segments(msg, layout)
    return {"hex": b"".join(segs).hex(), "segments": [s.hex() for s in segs]}


def segment_json(s: Segment) -> dict[str, Any]:
    return {"addr": s.addr, "len": s.length, "writable": s.writable, "hex": s.data.hex()}


def encode_pages_request(req: dict[str, Any]) -> dict[str, Any]:
    params = _get(req, "params", dict)
    layout = layout_of(params)
    profile = _get(params, "profile", str)
    role = _get(params, "role", str)
    pages = PageSet.from_extents(req.get("pages"))
    exact = bool(params.get("exact", False))
    chains: list[list[Segment]]
    if profile == "v3":
        drv = v3_codec.SeedV3Driver(layout, _get(params, "nrPageBmap", int, 1), exact)
        prior = req.get("priorMiscAnswer")
        if isinstance(prior, dict):
            drv.answer_unused(PageSet.from_extents(prior.get("pages")),
                              _get(prior, "reqId", int), _get(prior, "maxPfn", int))
        if role == "misc":
            chains = drv.answer_unused(pages, _get(req, "reqId", int), _get(req, "maxPfn", int))
        else:
            chains = drv.encode_pages(pages)
    elif profile == "hybrid":
        if role == "misc":
            chains = hybrid_codec.encode_pages(pages, layout, ident=_get(req, "reqId", int),
                                               cont_done=True,
                                               bitmaps=bool(params.get("bitmaps", True)))
        else:
            chains = hybrid_codec.encode_pages(pages, layout,
                                               bitmaps=bool(params.get("bitmaps", True)))
    elif profile == "spec":
        if role == "reporting":
            chains = spec_codec.encode_reporting(pages)
        elif role == "free_page":
            chains = spec_codec.encode_hint(pages, _get(req, "cmdId", int), layout)
        else:
            chains = spec_codec.encode_pfns(pages, layout)
    else:
        raise UsageError(f"unknown profile {profile!r}", field="profile")
    return {"chains": [[segment_json(s) for s in c] for c in chains]}


def decode_chain(profile: str, role: str, chain: Sequence[Segment],
                 layout: WireLayout) -> dict[str, Any]:
    """The decoding of one encoded chain: its kind, pages and finding rules."""
    db = decode_buffer(profile, role, chain, layout)
    rules = sorted({f.rule for f in db.findings})
    return {"kind": db.kind, "pages": db.pages.extents(), "rules": rules}


# --- rings --------------------------------------------------------------------------------------
def chain_json(c: RingChain, packed: bool) -> dict[str, Any]:
    descs = []
    for d in c.descriptors:
        e: dict[str, Any] = {"index": d.index, "table": d.table, "addr": d.addr, "len": d.len,
                             "flags": d.flags,
                             "hex": None if d.data is None else d.data.hex()}
        if packed:
            e["id"] = d.id
        else:
            e["next"] = d.next
        descs.append(e)
    out: dict[str, Any] = {"head": c.head, "descriptors": descs,
                           "rules": sorted({f.rule for f in c.findings})}
    if packed:
        out["position"] = c.avail_idx
    else:
        out["availIdx"] = c.avail_idx
    return out


def memory_of(req: dict[str, Any]) -> MemoryImage:
    regions = _get(req, "memory", list)
    try:
        return MemoryImage([(_get(r, "gpa", int), bytes.fromhex(_get(r, "hex", str)))
                            for r in regions])
    except (TypeError, ValueError, AttributeError):
        raise UsageError("memory must be a list of {gpa, hex}", field="memory") from None


def walk_request(req: dict[str, Any]) -> dict[str, Any]:
    params = _get(req, "params", dict)
    start = _get(req, "start", dict)
    mem = memory_of(req)
    little = _get(params, "endian", str, "le") == "le"
    size = _get(params, "size", int)
    try:
        if req.get("ring") == "split":
            dev = SplitQueueDevice(mem, size, _get(params, "desc", int), _get(params, "avail", int),
                                   _get(params, "used", int), little)
            chains = [chain_json(c, False)
                      for c in dev.available(_get(start, "lastAvail", int))]
        elif req.get("ring") == "packed":
            pdev = PackedQueueDevice(mem, size, _get(params, "desc", int), little_endian=little)
            chains = [chain_json(c, True) for c in
                      pdev.available(_get(start, "position", int), _get(start, "wrap", int))]
        else:
            raise UsageError("ring must be 'split' or 'packed'", field="ring")
    except DecodeError as exc:  # RingError is a DecodeError
        return {"error": error_json(exc)}
    return {"chains": chains}


OPS = {"decode": decode_request, "encode": encode_request,
       "encode_pages": encode_pages_request, "walk": walk_request}


def handle(req: Any) -> dict[str, Any]:
    """Answer one request; bad requests answer ``{"unsupported": reason}`` (never raise)."""
    op = req.get("op") if isinstance(req, dict) else None
    if not isinstance(op, str) or op not in OPS:
        return {"unsupported": f"unknown op {str(op)[:60]!r}"}
    try:
        return OPS[req["op"]](req)
    except UsageError as exc:  # parameters this codec does not serve
        return {"unsupported": str(exc)}
    except VBProtoError as exc:  # EncodeError and the like: an answer, compared by the verifier
        return {"error": error_json(exc)}
