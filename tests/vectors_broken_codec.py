"""A deliberately broken codec speaking the vector stdio protocol (tests/test_vectors_verify.py).

It wraps the reference handler and injects one bug, chosen by argv[1]:

* ``drop-last-pfn`` -- decodes a PFN array without its last whole PFN;
* ``be-as-le``      -- reads every big-endian message as little-endian (a codec that ignores
  the byte-order parameter);
* ``no-encode``     -- answers every encode request "unsupported" (a decode-only codec);
* ``exit-127``      -- exits with status 127 at the first request (unsupported altogether).
"""

from __future__ import annotations

import sys
from typing import Any

from virtio_balloon_proto.vectorgen.reference import handle
from virtio_balloon_proto.vectorgen.stdio import serve


def broken(bug: str) -> Any:
    def answer(req: Any) -> dict[str, Any]:
        if bug == "exit-127":
            raise SystemExit(127)
        if req.get("op") == "decode":
            if bug == "drop-last-pfn" and req.get("kind") == "pfns" and "hex" in req:
                data = bytes.fromhex(req["hex"])
                whole = len(data) // 4 * 4
                if whole:
                    req = {**req, "hex": (data[: whole - 4] + data[whole:]).hex()}
            if bug == "be-as-le" and req["params"].get("endian") == "be":
                req = {**req, "params": {**req["params"], "endian": "le"}}
        if req.get("op") == "encode" and bug == "no-encode":
            return {"unsupported": "this codec only decodes"}
        return handle(req)

    return answer


if __name__ == "__main__":
    serve(broken(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer)
