#!/usr/bin/env python3
"""A hostile stdio testee for the runner's robustness suite (tests/test_hostile_testees.py).

``hostile_testee.py MODE [PIDFILE]``: a correct device (examples/stdio_testee.py) until its
first ``observe`` (or, for the I/O modes, its first ``avail``), where it misbehaves according
to MODE (see ``ANSWERS`` and ``main``).  With PIDFILE, it appends its own pid and the pid of
every process it forks, one per line, so the test can check that none survives the run.
"""

import os
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
import stdio_testee as base

MODE = sys.argv[1]
PIDFILE = sys.argv[2] if len(sys.argv) > 2 else None

#: raw answer bodies for the first observe ({id} is replaced with the request id)
ANSWERS = {
    "extent-x": '{"id":{id},"result":{"balloon":[["x",1]]}}',
    "extent-null": '{"id":{id},"result":{"balloon":[[null,1]]}}',
    "extent-float": '{"id":{id},"result":{"balloon":[[1.5,1]]}}',
    "nan": '{"id":{id},"result":{"num_pages":NaN,"actual":Infinity}}',
    "overflow-float": '{"id":{id},"result":{"num_pages":1e309}}',
    "big-int": '{"id":{id},"result":{"num_pages":18446744073709551616}}',
    "huge-digits": '{"id":{id},"result":{"num_pages":' + "9" * 5000 + "}}",
    "deep": '{"id":{id},"result":{"reported":' + "[" * 100_000 + "]" * 100_000 + "}}",
    "surrogate": '{"id":{id},"error":"bad \\ud800 \\u0000\\u001b[31m \\udfff"}',
    "list-error": '{"id":{id},"error":["a",["b"]]}',
    "list-unsupported": '{"id":{id},"unsupported":[1,2]}',
    "stats-string": '{"id":{id},"result":{"stats":{"4":"many"}}}',
    "result-list": '{"id":{id},"result":[1,2,3]}',
    "id-float": '{"id":1.0e400,"result":{}}',
    "not-utf8": '{"id":{id},"error":"\xff\xfe"}',
}


def record(pid: int) -> None:
    if PIDFILE:
        with open(PIDFILE, "a") as f:
            f.write(f"{pid}\n")


def send_raw(out, body: bytes) -> None:
    out.write(struct.pack("<I", len(body)) + body)
    out.flush()


def main() -> int:
    record(os.getpid())
    dev = base.Balloon()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    if MODE == "fork-serve":  # a child that lives on in our process group; we serve normally
        pid = os.fork()
        if pid == 0:
            os.closerange(0, 3)
            time.sleep(3600)
            os._exit(0)
        record(pid)
    while (req := base.read_frame(stdin)) is not None:
        method, params = req.get("method"), req.get("params", {})
        if method == "avail":
            if MODE == "stop-reading":  # never read stdin again: the runner's write must not hang
                time.sleep(3600)
            if MODE == "slow-reader":  # read the rest of stdin one byte every 50 ms
                while stdin.read(1):
                    time.sleep(0.05)
            if MODE == "crash":
                sys.stderr.write("testee: segmentation fault (simulated)\n")
                return 3
            if MODE == "hang":
                time.sleep(3600)
            if MODE == "garbage":
                send_raw(stdout, b"\x1b[2J\x00garbage\xff")
                continue
            if MODE == "huge-frame":  # a real frame over MAX_FRAME (16 MiB)
                send_raw(stdout, b'{"id":1,"result":{"x":"' + b"a" * (17 << 20) + b'"}}')
                time.sleep(3600)
            if MODE == "trickle":  # a valid answer, one byte per 100 ms
                body = b'{"id":%d,"result":{"used":[]}}' % req["id"]
                for b in struct.pack("<I", len(body)) + body:
                    stdout.write(bytes([b]))
                    stdout.flush()
                    time.sleep(0.1)
                continue
            if MODE in ("setsid-exit", "setsid-serve"):
                # double fork: a grandchild in a session of its own (out of our process
                # group, so killpg misses it), orphaned by its parent's exit
                pid = os.fork()
                if pid == 0:
                    gpid = os.fork()
                    if gpid == 0:
                        os.setsid()
                        os.closerange(0, 3)
                        record(os.getpid())
                        time.sleep(3600)
                        os._exit(0)
                    os._exit(0)
                os.waitpid(pid, 0)
                time.sleep(0.2)  # the grandchild records itself
                if MODE == "setsid-exit":
                    return 4
            if MODE == "envwipe-serve" and not getattr(main, "forked", False):
                # a child in a session of its own that execs with an empty environment: out
                # of our process group and without the runner's tag; only its parent (us,
                # still serving) links it to the testee
                main.forked = True  # type: ignore[attr-defined]
                pid = os.fork()
                if pid == 0:
                    os.setsid()
                    os.closerange(0, 3)
                    os.execve("/bin/sleep", ["sleep", "3600"], {})
                record(pid)
            if MODE == "fork-exit":  # a grandchild holding our stdout; we exit
                pid = os.fork()
                if pid == 0:
                    time.sleep(3600)
                    os._exit(0)
                record(pid)
                return 4
        if method == "start" and MODE == "control-unsupported":
            send_raw(stdout, b'{"id":%d,"unsupported":"\\u0000\\u0001\\ud83d"}' % req["id"])
            continue
        if method == "observe" and MODE in ANSWERS:
            body = ANSWERS[MODE].replace("{id}", str(req["id"]))
            send_raw(stdout, body.encode("latin-1") if MODE == "not-utf8" else body.encode())
            continue
        try:
            if method == "hello":
                result = {"protocol": 1, "name": f"hostile-{MODE}"}
            elif method == "stop":
                dev.reset()
                result = {}
            else:
                result = getattr(dev, method)(params)
            base.write_frame(stdout, {"id": req["id"], "result": result})
        except base.Unsupported as exc:
            base.write_frame(stdout, {"id": req["id"], "unsupported": str(exc)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
