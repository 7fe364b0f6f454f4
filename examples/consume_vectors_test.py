"""How a third party tests its own balloon codec against the vbproto golden vectors.

Run:  pytest examples/consume_vectors_test.py
      VBPROTO_VECTORS=/path/to/vectors pytest examples/consume_vectors_test.py

Like pyca/cryptography's Wycheproof loader: every vector becomes one test, named by its stable
id.  The codec under test here is a deliberately tiny one written with nothing but ``struct``
(it does not import vbproto's codec): a decoder of inflate/deflate PFN arrays and of stats
buffers, with its own opinion of what is valid.
"""

from __future__ import annotations

import json
import os
import struct
from importlib import resources
from pathlib import Path
from typing import Any

import pytest


# --- the vector loader (all a consumer needs) ----------------------------------------------------
def vector_dir() -> Path:
    env = os.environ.get("VBPROTO_VECTORS")
    if env:
        return Path(env)
    return Path(str(resources.files("virtio_balloon_proto.vectors")))  # the packaged copy


def vectors(name: str) -> list[Any]:
    doc = json.loads((vector_dir() / f"{name}.json").read_text(encoding="utf-8"))
    return [pytest.param(group, test, id=test["id"])
            for group in doc["testGroups"] for test in group["tests"]]


# --- "our" codec: a few lines of struct --------------------------------------------------------
class Malformed(Exception):
    pass


def decode_pfns(data: bytes, endian: str) -> tuple[list[int], str]:
    """PFN array -> (PFNs, verdict).  A partial PFN is a MUST violation; more than 256 PFNs
    and duplicates are only a SHOULD."""
    n = len(data) // 4
    pfns = list(struct.unpack(f"{'<' if endian == 'le' else '>'}{n}I", data[: 4 * n]))
    if len(data) % 4:
        return pfns, "invalid"
    if len(pfns) > 256 or len(set(pfns)) != len(pfns):
        return pfns, "acceptable"
    return pfns, "valid"


def decode_stats(data: bytes, endian: str) -> tuple[list[tuple[int, int]], str]:
    n = len(data) // 10
    fmt = f"{'<' if endian == 'le' else '>'}HQ"
    entries = [struct.unpack_from(fmt, data, 10 * k) for k in range(n)]
    if len(data) % 10:
        return entries, "invalid"
    tags = [t for t, _ in entries]
    if len(set(tags)) != len(tags) or any(t > 9 for t in tags):
        return entries, "acceptable"  # duplicate or unknown tags: a device ignores them
    return entries, "valid"


def extents(frames: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for f in sorted(set(frames)):
        if out and out[-1][0] + out[-1][1] == f:
            out[-1][1] += 1
        else:
            out.append([f, 1])
    return out


def verdict_matches(mine: str, expected: str) -> bool:
    # Wycheproof semantics: an 'acceptable' vector may be accepted or rejected
    return expected == "acceptable" or mine == expected


# --- one test per vector -------------------------------------------------------------------------
@pytest.mark.parametrize(("group", "test"), vectors("pfns"))
def test_pfns(group: dict[str, Any], test: dict[str, Any]) -> None:
    if group["pageSize"] != 4096:
        pytest.skip("this codec only knows 4 KiB guests")
    pfns, verdict = decode_pfns(bytes.fromhex(test["hex"]), group["endian"])
    assert verdict_matches(verdict, test["result"]), test["comment"]
    assert pfns == test["fields"]["pfns"]
    assert extents(pfns) == test["pages"]


@pytest.mark.parametrize(("group", "test"), vectors("stats"))
def test_stats(group: dict[str, Any], test: dict[str, Any]) -> None:
    entries, verdict = decode_stats(bytes.fromhex(test["hex"]), group["endian"])
    assert verdict_matches(verdict, test["result"]), test["comment"]
    assert [[t, v] for t, v in entries] == [[e["tag"], e["val"]] for e in
                                            test["fields"]["entries"]]
