#!/usr/bin/env python3
"""A deliberately broken stdio testee for the runner's tests.

``faulty_testee.py MODE``: behaves like examples/stdio_testee.py except that, on the first
``avail`` of a deflate buffer, it misbehaves according to MODE:
crash (exit 3), hang (sleep forever), garbage (write non-JSON), huge (announce a 2 GiB frame),
unsupported (exit 127), wrong-id (ack head+1 on every inflate), exit127-start (exit 127 on start).
"""

import os
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
import stdio_testee as base

MODE = sys.argv[1]


def main() -> int:
    dev = base.Balloon()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (req := base.read_frame(stdin)) is not None:
        method, params = req.get("method"), req.get("params", {})
        if method == "start" and MODE == "exit127-start":
            return 127
        if method == "avail" and params.get("role") == "deflate":
            if MODE == "crash":
                sys.stderr.write("testee: segmentation fault (simulated)\n")
                return 3
            if MODE == "hang":
                time.sleep(3600)
            if MODE == "garbage":
                stdout.write(struct.pack("<I", 11) + b"\xffnot json!!")
                stdout.flush()
                continue
            if MODE == "huge":
                stdout.write(struct.pack("<I", 2 << 30))
                stdout.flush()
                time.sleep(3600)
            if MODE == "unsupported":
                return 127
        try:
            if method == "hello":
                result = {"protocol": 1, "name": f"faulty-{MODE}"}
            elif method == "stop":
                dev.reset()
                result = {}
            else:
                result = getattr(dev, method)(params)
                if MODE == "wrong-id" and method == "avail" and params["role"] == "inflate":
                    result = {"used": [{"id": u["id"] + 1, "len": 0} for u in result["used"]]}
            base.write_frame(stdout, {"id": req["id"], "result": result})
        except base.Unsupported as exc:
            base.write_frame(stdout, {"id": req["id"], "unsupported": str(exc)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
