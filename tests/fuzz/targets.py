"""Fuzz targets: one per public decoder, importer, reader and peer protocol (issue 12).

A target takes arbitrary bytes and calls one entry point.  The contract every target checks:
the entry point returns, or raises the project's error type
(:class:`~virtio_balloon_proto.errors.VBProtoError`); any other exception is a crash.  The
first bytes of the input choose the parameters (kind, byte order, word size, ...), the rest is
the payload, so a mutation of either explores both.

``SEEDS[name]()`` gives each target's seed inputs, built from the golden vectors
(``vectors/*.json``) and the trace corpus (``conformance/traces``).

Run with atheris (coverage-guided) or the built-in mutator: ``python -m tests.fuzz.run``
(docs/fuzzing.md).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from virtio_balloon_proto.errors import VBProtoError

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "vectors"
TRACES = ROOT / "conformance" / "traces"

KINDS = ("pfns", "bmap", "req", "hybrid", "stats", "config", "hint-cmd")
PROFILES = ("spec", "v3", "hybrid")
ROLES = ("inflate", "deflate", "misc", "stats", "free_page", "reporting")
PAGE_SIZES = (4096, 16384, 65536)

#: where file targets write their input: tmpfs when there is one (rewriting a file on ext4
#: costs ~2 ms, which capped the file targets at ~300 inputs/s; on /dev/shm it is ~10 us)
_TMP = (Path("/dev/shm") if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)
        else Path(tempfile.gettempdir())) / f"vbproto-fuzz-{os.getpid()}"


class Params:
    """Parameters carved from the head of the input (FuzzedDataProvider's idea, no deps)."""

    def __init__(self, data: bytes, n: int) -> None:
        self.head = data[:n].ljust(n, b"\0")
        self.body = data[n:]
        self._i = 0

    def pick(self, options: tuple[Any, ...]) -> Any:
        v = options[self.head[self._i] % len(options)]
        self._i += 1
        return v


def _layout(p: Params) -> Any:
    from virtio_balloon_proto.wire import WireLayout

    endian = p.pick(("le", "be"))
    return WireLayout(endian, p.pick((64, 32)), p.pick(("le", "be")), p.pick(PAGE_SIZES))


_FDS: dict[str, int] = {}


def _file(data: bytes, name: str) -> Path:
    """``data`` as the file ``name``: one file per target, opened once and rewritten in place
    (an ``open(O_CREAT|O_TRUNC)`` per input was a quarter of trace_reader's time)."""
    path = _TMP / name
    fd = _FDS.get(name)
    if fd is not None and os.fstat(fd).st_nlink == 0:  # the file was removed under us
        os.close(fd)
        fd = None
    if fd is None:
        _TMP.mkdir(exist_ok=True)
        fd = _FDS[name] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    return path


# --------------------------------------------------------------------------- wire + codecs
def wire_decode(data: bytes) -> None:
    """wire.decode: every kind, profile, role and layout."""
    from virtio_balloon_proto.wire import decode

    p = Params(data, 7)
    kind, profile, role = p.pick(KINDS), p.pick(PROFILES), p.pick(("inflate", "deflate", "misc"))
    layout = _layout(p)
    body = p.body
    segments = [body[:32], body[32:]] if kind == "bmap" and len(body) > 32 else [body]
    d = decode(kind, segments, layout, profile=profile, role=role)
    d.to_json()


def codec_decode_buffer(data: bytes) -> None:
    """codecs.decode_buffer: a chain of 1-4 segments on any queue of any profile."""
    from virtio_balloon_proto.codecs import Segment, decode_buffer

    p = Params(data, 8)
    profile, role = p.pick(PROFILES), p.pick(ROLES)
    layout = _layout(p)
    nseg = p.pick((1, 2, 3, 4))
    writable_last = p.pick((False, True))
    body = p.body
    cut = [len(body) * k // nseg for k in range(nseg + 1)]
    segs = [Segment(0x1000 * k, cut[k + 1] - cut[k], False, body[cut[k]:cut[k + 1]])
            for k in range(nseg)]
    if writable_last:
        segs.append(Segment(0x100000, 16, True))
    db = decode_buffer(profile, role, segs, layout)
    db.pages.extents()


def message_from_json(data: bytes) -> None:
    """wire.message_from_json + encode: the JSON a user gives ``message encode``."""
    from virtio_balloon_proto.limits import loads_json
    from virtio_balloon_proto.wire import encode, message_from_json

    p = Params(data, 6)
    kind, role = p.pick(KINDS), p.pick(("inflate", "deflate", "misc"))
    layout = _layout(p)
    obj = loads_json(p.body, what="input")
    encode(message_from_json(kind, obj, layout, role=role), layout)


def pageset_text(data: bytes) -> None:
    """analysis.load_pages / PageSet.from_text: the ``--pages`` text form."""
    from virtio_balloon_proto.analysis import load_pages

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # click hands us str only
    load_pages(text).extents()


def pageset_extents(data: bytes) -> None:
    """PageSet.from_extents of JSON (``--pages @FILE``, vector ``pages``)."""
    from virtio_balloon_proto.limits import loads_json
    from virtio_balloon_proto.pageset import PageSet

    PageSet.from_extents(loads_json(data, what="pages")).to_text()


# --------------------------------------------------------------------------- rings
def _ring_memory(p: Params, size: int) -> tuple[Any, int, int, int]:
    from virtio_balloon_proto.virtqueue.memory import MemoryImage

    desc, avail = 0, 16 * size
    used = (avail + 6 + 2 * size + 3) & ~3
    mem = MemoryImage([(0, p.body[:1 << 16].ljust(max(used + 6 + 8 * size, 4096), b"\0"))])
    return mem, desc, avail, used


def split_ring(data: bytes) -> None:
    """SplitQueueDevice.available: a split ring laid out at address 0 in the input."""
    from virtio_balloon_proto.virtqueue.split_device import SplitQueueDevice

    p = Params(data, 4)
    size, little = p.pick((2, 4, 8, 16)), p.pick((True, False))
    last = p.pick(tuple(range(16)))
    mem, desc, avail, used = _ring_memory(p, size)
    dev = SplitQueueDevice(mem, size, desc, avail, used, little)
    for chain in dev.available(last):
        chain.out_bytes  # noqa: B018 -- resolve the data
    list(dev.used_entries(0))


def packed_ring(data: bytes) -> None:
    """PackedQueueDevice.available: a packed ring at address 0 in the input."""
    from virtio_balloon_proto.virtqueue.memory import MemoryImage
    from virtio_balloon_proto.virtqueue.packed_device import PackedQueueDevice

    p = Params(data, 4)
    size, little = p.pick((1, 2, 3, 4, 8, 16)), p.pick((True, False))
    pos, wrap = p.pick(tuple(range(16))) % size, p.pick((0, 1))
    mem = MemoryImage([(0, p.body[:1 << 16].ljust(4096, b"\0"))])
    dev = PackedQueueDevice(mem, size, 0, little_endian=little)
    for chain in dev.available(pos, wrap):
        chain.out_bytes  # noqa: B018


# --------------------------------------------------------------------------- traces + importers
def trace_reader(data: bytes) -> None:
    """TraceReader + tracedecode.decode_trace: what ``vbproto decode`` does with a file."""
    from virtio_balloon_proto.trace import TraceReader
    from virtio_balloon_proto.tracedecode import Summary, decode_trace

    path = _file(data, "t.jsonl")
    with TraceReader(path) as r:
        s = Summary()
        for _ in decode_trace(r, summary=s):
            pass


def trace_validate(data: bytes) -> None:
    """trace.reader.validate_trace: every problem of a file, by line."""
    from virtio_balloon_proto.trace.reader import validate_trace

    validate_trace(_file(data, "v.jsonl"), limit=100)


def conform_check(data: bytes) -> None:
    """conformance check_trace: the offline checker of a recorded trace."""
    from virtio_balloon_proto.conformance.runner import check_trace

    check_trace(_file(data, "c.jsonl"))


def queue_status(data: bytes) -> None:
    """import_core.load_queue_status: x-query-virtio-queue-status JSON files."""
    from virtio_balloon_proto.trace.import_core import load_queue_status

    load_queue_status([_file(data, "q.json")])


def qemu_log(data: bytes) -> None:
    """import_log.import_qemu_log: a QEMU -trace log."""
    from virtio_balloon_proto.trace.import_log import import_qemu_log

    p = Params(data, 1)
    _header, events = import_qemu_log(_file(p.body, "qemu.log"), profile=p.pick(PROFILES))
    for _ in events:
        pass


def known_failures(data: bytes) -> None:
    """conformance KnownFailures.load: the known-failures TOML file."""
    from virtio_balloon_proto.conformance.known_failures import KnownFailures

    KnownFailures.load(_file(data, "kf.toml"))


# --------------------------------------------------------------------------- peer protocols
def stdio_answer(data: bytes) -> None:
    """A testee's answer frame, through everything the runner does with it (framing, the
    protocol schema, the typed conversions of each result)."""
    from virtio_balloon_proto.conformance import dut_json as a
    from virtio_balloon_proto.errors import PeerError
    from virtio_balloon_proto.framing import decode_body

    p = Params(data, 1)
    method = p.pick(("hello", "start", "avail", "config_read", "host_request", "observe"))
    msg = decode_body(p.body, "answer", method)
    if not isinstance(msg, dict):
        raise PeerError("not an object")
    a.validate_result(msg, "response", method)
    res = msg.get("result")
    if res is None:
        return
    if method == "hello":
        a.validate_result(res, "hello_result", method)
    elif method == "start":
        a.negotiated_from_json(res, method)
    elif method in ("avail", "host_request"):
        a.validate_result({"used": [], **res}, "used_result", method)
        a.used_from_json(res.get("used", []), method)
    elif method == "config_read":
        a.validate_result(res, "config_read_result", method)
        a._hex(res, "data", method)
    else:
        a.validate_result(res, "observe_result", method)
        from virtio_balloon_proto.conformance.checks.base import pageset_of

        pageset_of(res.get("balloon"))


def codec_server(data: bytes) -> None:
    """The reference codec behind the vector stdio protocol: a frame in, an answer out; it
    must answer every request (never raise, not even our own errors)."""
    from virtio_balloon_proto.framing import decode_body, encode_frame
    from virtio_balloon_proto.vectorgen.reference import handle

    try:
        req = decode_body(data, "request", "codec")
    except VBProtoError:
        return  # the server's read_frame refuses it: that is its answer
    ans = handle(req)
    assert isinstance(ans, dict), ans
    encode_frame(ans)


def strict_json(data: bytes) -> None:
    """limits.loads_json + dumps_strict: the parser every reader uses, and back."""
    from virtio_balloon_proto.limits import dumps_strict, loads_json

    json.loads(dumps_strict(loads_json(data, what="input")))


TARGETS: dict[str, Callable[[bytes], None]] = {
    f.__name__: f for f in (
        wire_decode, codec_decode_buffer, message_from_json, pageset_text, pageset_extents,
        split_ring, packed_ring, trace_reader, trace_validate, conform_check, queue_status,
        qemu_log, known_failures, stdio_answer, codec_server, strict_json,
    )
}
#: targets whose contract is stricter: no exception at all
NO_RAISE = {"codec_server"}


def run_one(name: str, data: bytes) -> None:
    """Call target ``name``; our own errors are an answer, anything else propagates."""
    try:
        TARGETS[name](data)
    except VBProtoError:
        if name in NO_RAISE:
            raise
    except ImportError:
        raise


# --------------------------------------------------------------------------- seeds
@cache
def _vector_docs() -> list[dict[str, Any]]:
    out = []
    for p in sorted(VECTORS.glob("*.json")):
        out.append(json.loads(p.read_text()))
    return out


def _vector_tests(schema_part: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in _vector_docs():
        if schema_part in doc.get("schema", ""):
            for g in doc["testGroups"]:
                for t in g["tests"]:
                    yield g, t


def _head(*indices: int) -> bytes:
    return bytes(indices)


def _layout_head(g: dict[str, Any]) -> bytes:
    return _head(("le", "be").index(g.get("endian", "le")), (64, 32).index(g.get("wordSize", 64)),
                 ("le", "be").index(g.get("wordOrder", g.get("endian", "le"))),
                 PAGE_SIZES.index(g.get("pageSize", 4096)) if g.get("pageSize", 4096)
                 in PAGE_SIZES else 0)


def _kind_of(g: dict[str, Any]) -> str:
    from virtio_balloon_proto.vectorgen.reference import WIRE_KINDS

    return WIRE_KINDS.get(g.get("kind", "pfns"), "pfns")


def seeds_wire() -> list[bytes]:
    out = []
    for g, t in _vector_tests("message"):
        if "hex" not in t:
            continue
        role = g.get("role", "inflate")
        out.append(_head(KINDS.index(_kind_of(g)), PROFILES.index(g.get("profile", "spec")),
                         ("inflate", "deflate", "misc").index(role)
                         if role in ("inflate", "deflate", "misc") else 0)
                   + _layout_head(g) + bytes.fromhex(t["hex"]))
    return out


def seeds_chain() -> list[bytes]:
    out = []
    for g, t in _vector_tests("message"):
        if "hex" not in t:
            continue
        role = g.get("role", "inflate")
        out.append(_head(PROFILES.index(g.get("profile", "spec")),
                         ROLES.index(role) if role in ROLES else 0) + _layout_head(g)
                   + _head(0, 0) + bytes.fromhex(t["hex"]))
    return out


def seeds_message_json() -> list[bytes]:
    out = []
    for g, t in _vector_tests("message"):
        if "fields" in t:
            role = g.get("role", "inflate")
            out.append(_head(KINDS.index(_kind_of(g)), ("inflate", "deflate", "misc").index(role)
                             if role in ("inflate", "deflate", "misc") else 0)
                       + _layout_head(g) + json.dumps({"fields": t["fields"]}).encode())
        if "pages" in t:
            out.append(_head(0, 0, 0, 0, 0, 0) + json.dumps({"pages": t["pages"]}).encode())
    return out


def seeds_pages_json() -> list[bytes]:
    return [json.dumps(t["pages"]).encode() for _, t in _vector_tests("pageset") if "pages" in t]


def seeds_pages_text() -> list[bytes]:
    return [b"0-1023,4096,8192-8195", b"", b"7", b"0-18446744073709551615", b"1,2,3-2"]


def seeds_split() -> list[bytes]:
    """Ring vectors re-laid at address 0 (their descriptor table, avail and used rings)."""
    from virtio_balloon_proto.virtqueue.memory import MemoryImage
    from virtio_balloon_proto.virtqueue.split_driver import SplitQueueDriver

    out = []
    for size in (2, 4, 8, 16):
        for little in (True, False):
            mem = MemoryImage([(0, bytes(1 << 14))])
            used = (16 * size + 6 + 2 * size + 3) & ~3
            drv = SplitQueueDriver(mem, size, 0, 16 * size, used, little)
            drv.add_and_publish([(0x2000, 8, False)])
            drv.add_and_publish([(0x2200, 4, False)], indirect_addr=0x3000)
            out.append(_head((2, 4, 8, 16).index(size), 0 if little else 1, 0, 0)
                       + mem.read(0, 1 << 14))
    return out


def seeds_packed() -> list[bytes]:
    out = []
    for size in (2, 4, 8):
        mem = bytearray(4096)
        for k in range(size):
            flags = (1 << 7) | (1 if k % 2 == 0 else 0)  # AVAIL (wrap 1), NEXT on evens
            struct.pack_into("<QIHH", mem, 16 * k, 0x200 + 16 * k, 8, k, flags)
        out.append(_head((1, 2, 3, 4, 8, 16).index(size), 0, 0, 1) + bytes(mem))
    return out


def _whole_lines(data: bytes, limit: int) -> bytes:
    """The longest prefix of ``data`` of whole lines within ``limit`` bytes."""
    if len(data) <= limit:
        return data
    cut = data.rfind(b"\n", 0, limit)
    return data[: cut + 1] if cut >= 0 else data[:limit]


def seeds_traces() -> list[bytes]:
    files = sorted(TRACES.rglob("*.jsonl"))
    return [_whole_lines(p.read_bytes(), MAX_LEN["trace_reader"]) for p in files[:40]]


def seeds_queue_status() -> list[bytes]:
    one = {"queue-index": 0, "vring-num": 256, "vring-desc": 4096, "vring-avail": 8192,
           "vring-used": 12288, "last-avail-idx": 3, "used-idx": 3, "name": "virtio-balloon"}
    return [json.dumps(one).encode(), json.dumps({"return": one}).encode(),
            json.dumps([one, one]).encode()]


def seeds_qemu_log() -> list[bytes]:
    logs = sorted((ROOT / "tests").rglob("*.log")) + sorted(
        (ROOT / "virtio_balloon_proto").rglob("*.log"))
    out = [b"\0" + p.read_bytes()[: 1 << 15] for p in logs[:10]]
    out.append(b"\0virtio_balloon_to_target balloon target: 0x1000 num_pages: 16\n"
               b"virtio_set_status vdev 0x55 val 15\n"
               b"virtqueue_pop vq 0x10 elem 0x20 in_num 0 out_num 1\n"
               b"virtio_balloon_handle_output section name: pc.ram gpa: 0x1000\n"
               b"virtqueue_fill vq 0x10 elem 0x20 len 0 idx 0\n")
    return out


def seeds_known_failures() -> list[bytes]:
    files = sorted((ROOT / "conformance" / "known-failures").rglob("*.toml"))
    return [p.read_bytes() for p in files[:10]] + [b'[[failure]]\ncase = "x"\nclause = "y"\n']


def seeds_stdio() -> list[bytes]:
    return [
        b"\0" + b'{"id":1,"result":{"protocol":1,"name":"x"}}',
        b"\1" + b'{"id":2,"result":{"offered":4294967303,"accepted":4294967297,'
                b'"queues":{"inflate":0,"deflate":1},"config_size":8}}',
        b"\2" + b'{"id":3,"result":{"used":[{"id":0,"len":0,"written":""}]}}',
        b"\3" + b'{"id":4,"result":{"data":"00040000"}}',
        b"\5" + b'{"id":5,"result":{"balloon":[[256,3]],"num_pages":4,"actual":4,'
                b'"stats":{"4":1000}}}',
        b"\5" + b'{"id":6,"error":"boom"}',
        b"\5" + b'{"id":7,"unsupported":"no"}',
    ]


def seeds_codec() -> list[bytes]:
    from virtio_balloon_proto.vectorgen.reference import WIRE_KINDS  # noqa: F401

    out = []
    for g, t in _vector_tests("message"):
        if "hex" in t:
            out.append(json.dumps({"op": "decode", "kind": g.get("kind"), "params": g,
                                   "hex": t["hex"]}).encode())
        if "fields" in t:
            out.append(json.dumps({"op": "encode", "kind": g.get("kind"), "params": g,
                                   "fields": t["fields"]}).encode())
    for g, t in _vector_tests("pageset"):
        out.append(json.dumps({"op": "encode_pages", "params": g, "pages": t.get("pages", []),
                               "reqId": 1, "maxPfn": 1 << 20, "cmdId": 1}).encode())
    for g, t in _vector_tests("ring"):
        params = {k: g[k] for k in ("endian", "size", "desc", "avail", "used") if k in g}
        out.append(json.dumps({"op": "walk", "ring": g.get("ring"), "params": params,
                               "memory": t.get("memory"), "start": t.get("start")}).encode())
    return out[:400]


def seeds_json() -> list[bytes]:
    return [b"{}", b"[]", b'{"a":[1,2.5,"x",null,true]}', b'"\\ud800"', b"1e308",
            b"-12345678901234567890"]


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "wire_decode": seeds_wire,
    "codec_decode_buffer": seeds_chain,
    "message_from_json": seeds_message_json,
    "pageset_text": seeds_pages_text,
    "pageset_extents": seeds_pages_json,
    "split_ring": seeds_split,
    "packed_ring": seeds_packed,
    "trace_reader": seeds_traces,
    "trace_validate": seeds_traces,
    "conform_check": seeds_traces,
    "queue_status": seeds_queue_status,
    "qemu_log": seeds_qemu_log,
    "known_failures": seeds_known_failures,
    "stdio_answer": seeds_stdio,
    "codec_server": seeds_codec,
    "strict_json": seeds_json,
}
assert set(SEEDS) == set(TARGETS)

#: the longest input atheris makes per target (libFuzzer ``-max_len``).  Without it libFuzzer
#: takes the longest seed (64 KiB trace prefixes, 340 KiB codec requests) and spends its time
#: parsing bulk: the trace targets ran ~27 inputs/s.  Every bound these targets check is a
#: *shape* (a count, a depth, a length field, a flag), which fits in a few KiB; the size caps
#: themselves (MAX_INPUT & co.) have their own tests in tests/test_hostile_inputs.py.
MAX_LEN: dict[str, int] = {name: 4096 for name in TARGETS}
MAX_LEN.update(split_ring=16 * 1024 + 4, packed_ring=4100, codec_server=8192, trace_reader=4096,
               trace_validate=4096, conform_check=4096)
