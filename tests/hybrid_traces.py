"""A trace holding one big hybrid inflate buffer: the shape of issue 12's memory tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def x55_trace(path: Path, n_bytes: int, stride: int) -> int:
    """The corpus's hybrid inflate trace with its first buffer replaced by ``n_bytes`` of
    order-0 records of 8 bitmap words 0x55.. each, ``stride`` frames apart (under 512 they
    overlap; a run every 2 frames either way), and that buffer used; returns the file size."""
    body = b"".join(struct.pack("<Q", r * stride | 12 << 52 | 63 << 58)
                    + struct.pack("<Q", 0x5555555555555555) * 8 for r in range(n_bytes // 72))
    out = []
    for line in (ROOT / "conformance/traces/hybrid/inflate-le.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["type"] == "avail":
            r["descriptors"][1]["len"] = len(body)
            r["out"] = [struct.pack("<BBHI", 0, 0, 0, len(body)).hex(), body.hex()]
            out += [json.dumps(r), json.dumps({"type": "used", "role": "inflate", "queue": 0,
                                               "id": 0, "len": 0})]
            break
        out.append(line)
    path.write_text("\n".join(out) + "\n")
    return path.stat().st_size
