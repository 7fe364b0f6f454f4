"""Encoders' output is capped in proportion to the JSON that asks for it (issue 12).

``{"pages": [[0, 13700000]]}`` is 27 bytes and asked for 13.7 M PFNs (55 MB).  The cap is
``limits.encode_budget``: MAX_ENCODE_FLOOR + MAX_ENCODE_RATIO bytes per byte of JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from virtio_balloon_proto.errors import EncodeError
from virtio_balloon_proto.limits import MAX_ENCODE_FLOOR, MAX_ENCODE_RATIO, encode_budget
from virtio_balloon_proto.wire import WireLayout, encode, message_from_json

CLI = [sys.executable, "-m", "virtio_balloon_proto"]


@pytest.mark.parametrize(("profile", "kind"), [("spec", "pfns"), ("v3", "bmap")])
def test_a_short_pages_json_cannot_ask_for_megabytes(profile: str, kind: str) -> None:
    r = subprocess.run([*CLI, "message", "encode", "--profile", profile, "--kind", kind,
                        '{"pages":[[0,13700000]]}'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert "MAX_ENCODE_RATIO" in r.stderr and "MAX_ENCODE_FLOOR" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_cap_grows_with_the_json_and_admits_what_a_message_holds() -> None:
    assert encode_budget(0) == MAX_ENCODE_FLOOR
    assert encode_budget(1000) == MAX_ENCODE_FLOOR + 1000 * MAX_ENCODE_RATIO
    layout = WireLayout()
    # 262,144 PFNs (1 MiB: a thousand full 256-PFN buffers) from a few bytes: allowed
    data = encode(message_from_json("pfns", {"pages": [[0, 1 << 18]]}, layout), layout)
    assert len(data) == 4 << 18
    with pytest.raises(EncodeError, match="MAX_ENCODE_RATIO"):
        message_from_json("pfns", {"pages": [[0, (1 << 18) + 1000]]}, layout)
    # the same number of PFNs spelled out as single-page extents is its own JSON: allowed
    many = [[2 * k, 1] for k in range(300_000)]
    assert len(json.dumps(many)) * MAX_ENCODE_RATIO > 4 * 300_000
    assert len(encode(message_from_json("pfns", {"pages": many}, layout), layout)) == 1_200_000


def test_hybrid_records_are_capped_too() -> None:
    layout = WireLayout()
    # every other frame: one record per frame, 8 bytes each
    pages = [[2 * k, 1] for k in range(100)]
    assert message_from_json("hybrid", {"pages": pages}, layout)
    alternating = {"pages": [[0, 1]] + [[k, 1] for k in range(2, 2 + 2 * 200_000, 2)]}
    msg = message_from_json("hybrid", alternating, layout)  # 200,001 records: in proportion
    assert len(encode(msg, layout)) < encode_budget(len(json.dumps(alternating["pages"])))
