"""Schema ``pattern`` keywords match as JSON Schema says (ECMA-262: ``$`` ends the string).

Python's ``re.search`` lets ``$`` match before a final newline, so jsonschema accepted
``"00040000\\n"`` as ``^([0-9a-f]{2})*$`` bytes and ``bytes.fromhex`` then read 4 bytes: a
trace with such a field was "valid" and decoded (found by the session's old/new differential
check: jsonschema-rs refused it, the Python re-check let it through).  Every schema check of
the package uses :func:`virtio_balloon_proto.schemas.ecma_validator`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtio_balloon_proto.conformance.dut_json import validate_result
from virtio_balloon_proto.errors import PeerError
from virtio_balloon_proto.schemas import _ecma, ecma_validator, shipped_schema
from virtio_balloon_proto.trace.schema import schema_problems

REPO = Path(__file__).resolve().parent.parent


def _patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return out + [p for v in node.values() for p in _patterns(v)]
    if isinstance(node, list):
        return [p for v in node for p in _patterns(v)]
    return []


SCHEMAS = [shipped_schema("trace-v1.schema.json"), shipped_schema("matrix-v1.schema.json"),
           json.loads((REPO / "conformance" / "stdio-protocol.schema.json").read_text())]
PATTERNS = sorted({p for s in SCHEMAS for p in _patterns(s)})


def test_every_shipped_pattern_is_anchored_at_the_end() -> None:
    assert len(PATTERNS) >= 5
    for p in PATTERNS:
        assert p.endswith("$") and _ecma(p).pattern.endswith("\\Z"), p


@pytest.mark.parametrize("pattern", PATTERNS)
@given(text=st.text(alphabet="0123456789abcdefx_-.", max_size=12))
def test_a_final_newline_never_matches_and_the_rest_is_unchanged(pattern: str, text: str) -> None:
    import re

    v = ecma_validator({"type": "string", "pattern": pattern})
    assert not v.is_valid(text + "\n")
    # no newline: exactly Python's own search (the translation changes nothing else)
    assert v.is_valid(text) == bool(re.search(pattern, text))


def test_a_hex_field_with_a_final_newline_is_refused_by_every_reader(tmp_path: Path) -> None:
    good = (REPO / "conformance" / "traces" / "spec" / "inflate-le.jsonl").read_text()
    line = '{"type":"config_read","offset":0,"data":"00040000"}'
    assert line in good
    bad = tmp_path / "nl.jsonl"
    bad.write_text(good.replace(line, line.replace('00040000"', '00040000\\n"'), 1))
    assert schema_problems(json.loads(line.replace('00040000"', '00040000\\n"')))
    # trace validate lists the problem and exits 1 (its "invalid" status)
    r = subprocess.run([sys.executable, "-m", "virtio_balloon_proto", "trace", "validate",
                        str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and ":8: data:" in r.stdout, (r.stdout, r.stderr)
    # every reader refuses the trace: exit 2 with one line naming the line and the field
    for cmd in (["decode"], ["decode", "--summary"], ["conform", "check"]):
        r = subprocess.run([sys.executable, "-m", "virtio_balloon_proto", *cmd, str(bad)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (cmd, r.returncode, r.stdout[-300:], r.stderr[-300:])
        err = (r.stderr or r.stdout).strip().splitlines()
        assert len(err) == 1 and "data" in err[0] and "line 8" in err[0], (cmd, err)


def test_a_testee_answer_with_a_final_newline_is_refused() -> None:
    with pytest.raises(PeerError, match="does not follow the protocol schema"):
        validate_result({"stats": {"1\n": 5}}, "observe_result", "observe")
    validate_result({"stats": {"1": 5}}, "observe_result", "observe")
