"""The python adapter's fast extent check (dut_json._extents_ok) never accepts what the
protocol schema refuses: a value it passes is valid for ``$defs/extents``, and whatever it
does not pass goes to the schema, so an in-process device's answers get the schema's verdict."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtio_balloon_proto.conformance import dut_json
from virtio_balloon_proto.errors import PeerError

U64 = (1 << 64) - 1
scalars = st.one_of(st.integers(-2, U64 + 2), st.booleans(), st.floats(allow_nan=False),
                    st.text(max_size=2), st.none())
extent_like = st.one_of(st.lists(scalars, min_size=0, max_size=3),
                        st.tuples(scalars, scalars), scalars)


def _schema_ok(v: Any, name: str = "extents") -> bool:
    return next(iter(dut_json._result_validator(name).iter_errors(v)), None) is None


@given(st.one_of(st.lists(extent_like, max_size=4), extent_like))
def test_fast_extents_check_implies_schema(v: Any) -> None:
    if dut_json._extents_ok(v):
        assert _schema_ok(v)
    # the public check gives the schema's verdict either way
    try:
        dut_json.validate_result(v, "extents", "observe")
        ok = True
    except PeerError:
        ok = False
    assert ok == _schema_ok(v)


@given(st.dictionaries(st.sampled_from(["balloon", "hinted", "reported", "num_pages"]),
                       st.one_of(st.lists(extent_like, max_size=3), scalars), max_size=4))
def test_observe_result_verdict_is_the_schemas(v: dict[str, Any]) -> None:
    try:
        dut_json.validate_result(v, "observe_result", "observe")
        ok = True
    except PeerError:
        ok = False
    assert ok == _schema_ok(v, "observe_result")


@pytest.mark.parametrize("bad", [[["x", 1]], [[1, -1]], [[1, 2, 3]], [[True, 1]], [(1, 2)],
                                 [[1, U64 + 1]]])
def test_bad_extents_name_the_path(bad: Any) -> None:
    with pytest.raises(PeerError, match="balloon"):
        dut_json.validate_result({"balloon": bad, "actual": 1}, "observe_result", "observe")


used_items = st.one_of(
    st.fixed_dictionaries({"id": scalars, "len": scalars},
                          optional={"written": st.one_of(st.sampled_from(
                              ["", "00ff", "0", "AB", "00\n", "zz"]), scalars)}),
    st.dictionaries(st.sampled_from(["id", "len", "written", "x"]), scalars, max_size=3),
    scalars)


@given(st.one_of(st.fixed_dictionaries({"used": st.lists(used_items, max_size=3)}),
                 st.dictionaries(st.sampled_from(["used", "other"]),
                                 st.one_of(scalars, st.lists(used_items, max_size=2)))))
def test_used_result_verdict_is_the_schemas(v: Any) -> None:
    if dut_json._used_ok(v):
        assert _schema_ok(v, "used_result")
    try:
        dut_json.validate_result(v, "used_result", "avail")
        ok = True
    except PeerError:
        ok = False
    assert ok == _schema_ok(v, "used_result")


observe_values = st.one_of(st.lists(extent_like, max_size=3), scalars,
                           st.dictionaries(st.sampled_from(["1", "x", "01", "7"]), scalars,
                                           max_size=2),
                           # unused / unused_done: page-size keys, extents or counts
                           st.dictionaries(st.sampled_from(["0x1000", "0x4000", "0X1000",
                                                            "0x1000\n", "1000", "0xg"]),
                                           st.one_of(st.lists(extent_like, max_size=2),
                                                     scalars), max_size=2))


@given(st.dictionaries(st.sampled_from(["balloon", "hinted", "reported", "num_pages", "actual",
                                        "hint_cmd_id", "stats", "unused", "unused_done",
                                        "other"]),
                       observe_values, max_size=5))
def test_fast_observe_check_implies_schema(v: dict[str, Any]) -> None:
    if dut_json._observe_ok(v):
        assert _schema_ok(v, "observe_result")


def test_fast_observe_check_takes_unused_pages() -> None:
    """The v3/hybrid misc queue's unused pages (33,000 extents in v3/unused-pages-le64) skip the
    schema's per-extent walk (5 s of that 5.8 s case) when they certainly match it."""
    ok = {"balloon": [[1, 2]], "unused": {"0x1000": [[5, 1], [9, 3]]}, "unused_done": {"0x1000": 2}}
    assert dut_json._observe_ok(ok) and _schema_ok(ok, "observe_result")
    for bad in ({"unused": {"0x1000": [[5, -1]]}}, {"unused": {"4096": []}},
                {"unused_done": {"0x1000": -1}}, {"unused_done": {"0x1000": True}}):
        assert not dut_json._observe_ok(bad)
