"""Trace format: write -> read round trips, schema checks, streaming bounds, atomic writes."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto.errors import TraceError
from virtio_balloon_proto.profiles import QueueRole
from virtio_balloon_proto.trace import (
    AvailEvent,
    ConfigEvent,
    FeaturesEvent,
    HostEvent,
    StatusEvent,
    TraceDescriptor,
    TraceHeader,
    TraceReader,
    TraceWriter,
    UsedEvent,
    read_trace,
    validate_trace,
    write_trace,
)
from virtio_balloon_proto.trace.schema import _validator, schema_problems

ROOT = Path(__file__).resolve().parent.parent
HEADER = TraceHeader.for_features("spec", 0x10130000016, (1 << 32) | 2, index_model="offered")

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
roles = st.sampled_from([QueueRole.INFLATE, QueueRole.DEFLATE, QueueRole.STATS])
qidx = {QueueRole.INFLATE: 0, QueueRole.DEFLATE: 1, QueueRole.STATS: 2}


@st.composite
def avail_events(draw: st.DrawFn) -> AvailEvent:
    role = draw(roles)
    outs = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=3))
    ins = draw(st.lists(st.integers(1, 4096), max_size=2))
    descs = tuple(
        TraceDescriptor(draw(st.integers(0, 2**64 - 1)), len(b), 0) for b in outs
    ) + tuple(TraceDescriptor(draw(st.integers(0, 2**64 - 1)), n, 2) for n in ins)
    return AvailEvent(
        role,
        qidx[role],
        tuple(outs),
        tuple(ins),
        id=draw(u16),
        descriptors=descs,
        avail_idx=draw(u16),
        ts=draw(st.none() | st.floats(0, 1e9)),
    )


events = st.one_of(
    avail_events(),
    st.builds(
        lambda r, n, i, d: UsedEvent(r, qidx[r], n, id=i, data=d),
        roles,
        u32,
        u16,
        st.none() | st.binary(max_size=16),
    ),
    st.builds(
        lambda w, o, d: ConfigEvent(w, o, d),
        st.booleans(),
        st.integers(0, 12),
        st.binary(min_size=1, max_size=8),
    ),
    st.builds(
        lambda o, d, a: FeaturesEvent(o, d, a),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        st.booleans(),
    ),
    st.builds(StatusEvent, st.integers(0, 255)),
    st.builds(
        lambda n, r: HostEvent("set-target", num_pages=n, req_id=r),
        u32,
        st.none() | st.integers(0, 2**64 - 1),
    ),
)


@settings(max_examples=50, deadline=None)
@given(evs=st.lists(events, max_size=12))
def test_write_read_round_trip(tmp_path_factory: pytest.TempPathFactory, evs: list) -> None:  # type: ignore[type-arg]
    p = tmp_path_factory.mktemp("t") / "t.jsonl"
    write_trace(p, HEADER, evs)
    header, back = read_trace(p)
    assert header == HEADER
    assert back == evs
    assert validate_trace(p) == []


def _mutations(rec: dict) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for k in list(rec):
        m = copy.deepcopy(rec)
        del m[k]
        out.append(m)
        for bad in (None, -1, "zz", [], {}, 2**70):
            m = copy.deepcopy(rec)
            m[k] = bad
            out.append(m)
    m = copy.deepcopy(rec)
    m["extra"] = 1
    out.append(m)
    return out


def test_per_type_validator_agrees_with_whole_schema() -> None:
    """The fast path (one compiled validator per record type) accepts exactly what the whole
    schema accepts, on valid records and on many broken ones."""
    recs = [HEADER.to_json()] + [
        e.to_json()
        for e in (
            AvailEvent(
                QueueRole.INFLATE,
                0,
                (b"\x01\x02",),
                (8,),
                id=1,
                descriptors=(TraceDescriptor(1, 2, 0), TraceDescriptor(9, 8, 2)),
            ),
            UsedEvent(QueueRole.DEFLATE, 1, 0, id=3, data=b"\x00"),
            ConfigEvent(True, 4, b"\x10\x00\x00\x00"),
            FeaturesEvent(1, 2, True),
            StatusEvent(15),
            HostEvent("get-unused-pages", req_id=7),
        )
    ]
    full = _validator()
    checked = 0
    for rec in recs:
        for r in [rec, *_mutations(rec)]:
            assert (schema_problems(r) == []) == full.is_valid(r), r
            checked += 1
    assert checked > 200


def test_reader_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    write_trace(p, HEADER, [StatusEvent(1)])
    with p.open("a") as f:
        f.write('{"type":"status","value":999}\n')
    with TraceReader(p) as r:
        it = r.events()
        assert next(it) == StatusEvent(1)
        with pytest.raises(TraceError, match="line 3"):
            next(it)


def test_semantic_problem_role_queue_mismatch(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    write_trace(p, HEADER, [UsedEvent(QueueRole.INFLATE, 1, 0)])
    probs = validate_trace(p)
    assert [pr.line for pr in probs] == [2]
    assert "queue 0 in the header" in probs[0].message


def test_out_len_must_match_descriptor(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    write_trace(
        p,
        HEADER,
        [
            AvailEvent(
                QueueRole.INFLATE, 0, (b"ab",), (), descriptors=(TraceDescriptor(0x1000, 4, 0),)
            )
        ],
    )
    (prob,) = validate_trace(p)
    assert prob.line == 2 and "descriptor len is 4" in prob.message


def test_over_long_line_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    write_trace(p, HEADER, [])
    with p.open("a") as f:
        f.write('{"type":"status","value":1,"note":"' + "x" * 5000 + '"}\n')
        f.write('{"type":"status","value":2}\n')
    with TraceReader(p, max_line=1024) as r, pytest.raises(TraceError, match=r"line 2.*longer"):
        list(r.events())
    from virtio_balloon_proto.trace.reader import iter_problems

    probs = list(iter_problems(p, max_line=1024))
    assert [(x.line, "longer" in x.message) for x in probs] == [(2, True)]


def test_writer_is_atomic(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text("old\n")
    with pytest.raises(RuntimeError), TraceWriter(p, HEADER) as w:
        w.write(StatusEvent(1))
        raise RuntimeError("boom")
    assert p.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [p]  # no temp file left behind


def test_writer_refuses_invalid_record(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    with pytest.raises(TraceError, match="invalid record"), TraceWriter(p, HEADER) as w:
        w.write(StatusEvent(300))
    assert not p.exists()


def _shipped_traces() -> list[tuple[str, str]]:
    out = []
    doc = (ROOT / "docs" / "trace-format.md").read_text()
    for k, m in enumerate(re.finditer(r"```jsonl\n(.*?)```", doc, re.S)):
        out.append((f"docs/trace-format.md example {k}", m.group(1)))
    for f in sorted(ROOT.rglob("*.jsonl")):
        if ".git" not in f.parts and ".hypothesis" not in f.parts:
            text = f.read_text()
            if text.startswith('{"type":"header"') or '"vbproto-trace/1"' in text.split("\n", 1)[0]:
                out.append((str(f.relative_to(ROOT)), text))
    return out


@pytest.mark.parametrize(("name", "text"), _shipped_traces(), ids=lambda x: str(x)[:60])
def test_every_shipped_trace_validates(tmp_path: Path, name: str, text: str) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(text)
    assert validate_trace(p) == [], name
    read_trace(p)


def test_docs_example_exists() -> None:
    assert any(n.startswith("docs/") for n, _ in _shipped_traces())


def test_header_json_is_what_docs_say() -> None:
    j = HEADER.to_json()
    assert j["features"]["offered"] == "0x10130000016"
    assert j["queues"] == {"inflate": 0, "deflate": 1, "stats": 2}
    assert json.loads(json.dumps(j)) == j


@pytest.mark.parametrize(("name", "package"), [
    ("trace-v1.schema.json", "virtio_balloon_proto.schemas"),
    ("matrix-v1.schema.json", "virtio_balloon_proto.schemas"),
    ("stdio-protocol.schema.json", "virtio_balloon_proto.conformance"),
])
def test_every_shipped_schema_is_valid_json_schema(name: str, package: str) -> None:
    """shipped_schema no longer checks at run time (0.75 s a process): the suite does."""
    from virtio_balloon_proto.schemas import check_shipped

    check_shipped(name, package)


# a number with a fraction or exponent is refused anywhere but ``ts`` (a schema "integer"
# accepts 4096.0): the prefilter (limits.number_shape classes, then one regex with a literal
# ':') must find every such line, whatever the whitespace and whatever hex sits around it
_hexish = st.text(alphabet="0123456789abcdefE.:,[", max_size=12)
_numbers = (st.integers(-(10**12), 10**12) | st.floats(allow_nan=False, allow_infinity=False)
            | st.sampled_from([4096.0, 1e3, -0.0, 1.5e-7]))
_records = st.recursive(
    st.none() | st.booleans() | _numbers | _hexish,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["ts", "len", "out", "a"]),
                                                        c, max_size=3),
    max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(rec=st.dictionaries(st.sampled_from(["ts", "queue", "out", "x"]), _records, max_size=4),
       ws=st.text(alphabet=" \t", max_size=2), exp=st.booleans())
def test_a_fraction_outside_ts_is_found_in_any_line(rec: dict[str, object], ws: str,
                                                     exp: bool) -> None:
    from virtio_balloon_proto.trace.reader import _float_path, _parse_line

    text = json.dumps(rec, separators=(f"{ws},{ws}", f"{ws}:{ws}"))
    if exp:  # the same numbers written with an exponent: 1e+16 style where json uses it
        text = re.sub(r"(?<=[:,\[ ])(-?\d+)\.0(?=[,\]} ])", r"\1E0", text)
    ref = _float_path(json.loads(text), "")
    if ref is None:
        assert _parse_line(text.encode()) == json.loads(text)
    else:
        with pytest.raises(TraceError, match="is not an integer"):
            _parse_line(text.encode())
