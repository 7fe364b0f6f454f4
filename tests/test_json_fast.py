"""limits.loads_json's orjson fast path (issue 13) gives exactly what the strict stdlib path
gives: a differential property over random JSON documents, big integers and surrogates too."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto import limits
from virtio_balloon_proto.errors import UsageError

scalars = (st.none() | st.booleans() | st.integers(-(10**30), 10**30)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
docs = st.recursive(scalars, lambda c: st.lists(c, max_size=4)
                    | st.dictionaries(st.text(max_size=4), c, max_size=4), max_leaves=12)


def _stdlib(text: str) -> Any:
    return json.loads(text, parse_int=limits._parse_int, parse_float=limits._parse_float)


@settings(max_examples=150, deadline=None)
@given(doc=docs, spaces=st.booleans())
def test_fast_path_equals_the_stdlib(doc: Any, spaces: bool) -> None:
    text = json.dumps(doc, separators=(", ", ": ") if spaces else (",", ":"))
    got = limits.loads_json(text, what="x")
    assert got == _stdlib(text)
    assert json.dumps(got) == json.dumps(_stdlib(text))  # 1 vs 1.0, int vs float: same type


# the number prefilter (limits.number_shape: byte classes, then regexes with a literal ':')
# must send every integer orjson would not keep exact to the stdlib path, whatever the
# whitespace around it; near the 64-bit edges on both sides, and the whole document one number
edges = st.sampled_from([
    (1 << 64) - 1, 1 << 64, (1 << 63) - 1, 1 << 63, -(1 << 63), -(1 << 63) - 1, -(1 << 64),
    10**19, 10**19 - 1, -(10**18), -(10**19), 10**20, -(10**20),
])
space = st.text(alphabet=" \t\r\n", max_size=3)


@settings(max_examples=200, deadline=None)
@given(doc=st.recursive(edges | scalars, lambda c: st.lists(c, max_size=4)
                        | st.dictionaries(st.text(max_size=4), c, max_size=4), max_leaves=8),
       ws=space)
def test_big_integers_stay_exact_under_any_whitespace(doc: Any, ws: str) -> None:
    sep = (f"{ws},{ws}", f"{ws}:{ws}")
    text = ws + json.dumps(doc, separators=sep) + ws
    got = limits.loads_json(text, what="x")
    assert json.dumps(got) == json.dumps(_stdlib(text))
    raw = text.encode()
    assert limits.loads_json(raw, what="x", shape=limits.number_shape(raw)) == got


def test_a_negative_below_i64_is_an_exact_integer() -> None:
    # orjson reads -9223372036854775809 (19 digits) as a float; the old prefilter looked for
    # 20 digits only and let it through as -9.223372036854776e+18
    for text in ("[-9223372036854775809]", "-9223372036854775809", '{"a": -9999999999999999999}'):
        got = limits.loads_json(text, what="x")
        assert json.dumps(got) == json.dumps(_stdlib(text))
        assert not isinstance(got, float)


@settings(max_examples=150, deadline=None)
@given(kinds=st.lists(st.sampled_from(["[", "{", "[1,", '{"a":1,"b":']), min_size=1,
                      max_size=12),
       inner=st.sampled_from(["[]", "{}", "1", '"x:[,"']), limit=st.integers(1, 10))
def test_depth_limit_holds_whatever_the_nesting(kinds: list[str], inner: str,
                                                limit: int) -> None:
    # the fast path's bound (1 + count of ':' ',' '[' in the shape) must never let a document
    # deeper than the limit through
    text = inner
    for k in reversed(kinds):
        text = (k + ('"k":' if k == "{" else "") + text
                + ("]" if k.startswith("[") else "}"))
    depth = limits.json_depth(json.loads(text))
    if depth <= limit:
        assert limits.loads_json(text, what="x", max_depth=limit) == json.loads(text)
    else:
        try:
            limits.loads_json(text, what="x", max_depth=limit)
        except UsageError as exc:
            assert "MAX_JSON_DEPTH" in str(exc)
        else:
            raise AssertionError(f"depth {depth} > {limit} accepted")


def test_the_depth_bound_is_tight_for_objects() -> None:
    # {"k":{"k":{}}}: two ':' and depth 3, the case where the fast bound is exact
    for n in range(1, 6):
        text = '{"k":' * n + "{}" + "}" * n
        assert limits.loads_json(text, what="x", max_depth=n + 1) == json.loads(text)
        try:
            limits.loads_json(text, what="x", max_depth=n)
        except UsageError as exc:
            assert "MAX_JSON_DEPTH" in str(exc)
        else:
            raise AssertionError(f"depth {n + 1} accepted under a limit of {n}")
