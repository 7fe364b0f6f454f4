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


@pytest.mark.parametrize("role", ["inflate", "misc"])
def test_v3_bitmap_of_large_pages_never_lists_their_frames(role: str) -> None:
    """A bit is one guest page: 64 KiB pages are 16 frames a bit, and the encoder listed every
    4 KiB frame (``{"pages": [[1, 22599813]]}`` took 1.1 GB and 1.4 s before refusing it as
    not whole pages -- the long fuzz campaign's slow input, now a regression input)."""
    import tracemalloc

    from virtio_balloon_proto.wire import decode

    layout = WireLayout(page_size=65536)
    with pytest.raises(EncodeError, match="not whole 65536-byte guest pages"):
        message_from_json("bmap", {"pages": [[1, 16 * 1000]]}, layout, role=role)
    # inflate bits are 4 KiB balloon PFNs (16 bits a page): a shorter span fits the budget
    n = 1_000_000 if role == "misc" else 400_000
    pages = [[0, 16 * n], [16 * (n + 64), 32]]
    tracemalloc.start()
    try:
        msg = message_from_json("bmap", {"pages": pages}, layout, role=role)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20, peak  # 16 M frames as uint64 alone were 128 MB
    data = encode(msg, layout)
    back = decode("bmap", [data[:32], data[32:]], layout, profile="v3", role=role)
    assert back.extents() == pages
