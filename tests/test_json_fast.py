"""limits.loads_json's orjson fast path (issue 13) gives exactly what the strict stdlib path
gives: a differential property over random JSON documents, big integers and surrogates too."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_balloon_proto import limits

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
