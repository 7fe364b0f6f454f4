#!/usr/bin/env python3
"""Run the fuzz targets of tests/fuzz/targets.py (docs/fuzzing.md).

    python tests/fuzz/run.py [TARGET ...] [--runs N] [--seconds S] [--engine atheris|builtin]

* ``--engine atheris`` (default when atheris imports): coverage-guided libFuzzer, one child
  process per target, seeded from the vectors and the corpus; a crash leaves its input in
  ``--crash-dir`` (default ``fuzz-crashes/``) and the run exits non-zero.
* ``--engine builtin``: a deterministic mutator (bit flips, splices, and the values issue 12
  names: NaN, 1e309, 2^64, 5,000-digit integers, deep nesting, lone surrogates) -- what CI
  runs, in-process, for a few seconds per target.

Any exception other than the project's VBProtoError is a crash; so is an input that takes
more than ``--slow`` seconds (default 1).  A summary line per target gives inputs and time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import targets as t

TOKENS = [b"NaN", b"Infinity", b"-Infinity", b"1e309", b"-1", b"0", b"18446744073709551616",
          b"9223372036854775808", b"9" * 5000, b"[" * 2000, b"{\"a\":" * 500, b'"\\ud800"',
          b'"\\udfff\\u0000\\u001b"', b"[]", b"{}", b"null", b"true", b"8.9", b'"8"',
          b'["x",1]', b"[null,1]", b"\xff\xfe", b"\x00" * 64, b"\xff" * 64, b"\n", b"\r\n",
          b'"0x"', b'"0xffffffffffffffffff"', b'"zz"', b"4294967296", b"65536", b"-0",
          b"1.0", b"[[0,18446744073709551615]]"]


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        pos = rng.randint(0, len(b))
        if op == 0 and b:  # flip a bit
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # set a byte to an interesting value
            b[rng.randrange(len(b))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x22, 0x5B, 0x7B))
        elif op == 2:  # insert a token
            b[pos:pos] = rng.choice(TOKENS)
        elif op == 3 and b:  # delete a range
            end = min(len(b), pos + rng.randint(1, 64))
            del b[pos:end]
        elif op == 4 and b:  # duplicate a range
            end = min(len(b), pos + rng.randint(1, 256))
            b[pos:pos] = b[pos:end]
        elif op == 5 and pool:  # splice with another seed
            other = rng.choice(pool)
            cut = rng.randint(0, len(other))
            b = b[:pos] + bytearray(other[cut:])
        elif op == 6 and b:  # replace a JSON number-ish run with a token
            i = rng.randrange(len(b))
            j = i
            while j < len(b) and chr(b[j]) in "0123456789-+.eE":
                j += 1
            b[i:max(j, i + 1)] = rng.choice(TOKENS)
        elif op == 7:  # overwrite 8 bytes with a big little-endian integer
            v = rng.choice((0, 1, 0xFFFF, 0xFFFFFFFF, 1 << 63, (1 << 64) - 1, 0x8000))
            b[pos:pos + 8] = v.to_bytes(8, "little")
        elif op == 8:  # truncate
            b = b[:pos]
    return bytes(b)


def builtin(name: str, runs: int, seconds: float, slow: float, seed: int,
            crash_dir: Path) -> tuple[int, float, list[str]]:
    """Fuzz ``name`` in-process; returns (inputs run, seconds taken, problems)."""
    rng = random.Random(f"{seed}:{name}")
    pool = t.SEEDS[name]() or [b""]
    problems: list[str] = []
    n = 0
    t0 = time.monotonic()
    queue = list(pool)
    while n < runs and time.monotonic() - t0 < seconds:
        data = queue[n] if n < len(queue) else mutate(rng, rng.choice(pool), pool)
        n += 1
        s0 = time.monotonic()
        try:
            t.run_one(name, data)
        except Exception as exc:  # a crash: keep the input
            problems.append(_save(crash_dir, name, data,
                                  f"{type(exc).__name__}: {exc}"[:300], traceback.format_exc()))
            if len(problems) >= 5:
                break
            continue
        took = time.monotonic() - s0
        if took > slow:
            problems.append(_save(crash_dir, name, data, f"slow input: {took:.2f} s", ""))
        if n % 50 == 0 and len(pool) < 4000:
            pool.append(data)  # keep some mutants as parents (no coverage: breadth)
    return n, time.monotonic() - t0, problems


def _save(crash_dir: Path, name: str, data: bytes, what: str, tb: str) -> str:
    crash_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:16]
    path = crash_dir / f"{name}-{digest}"
    path.write_bytes(data)
    (crash_dir / f"{name}-{digest}.txt").write_text(f"{what}\n{tb}")
    return f"{name}: {what} (input: {path})"


def atheris_child(name: str, argv: list[str]) -> None:
    import atheris

    # import everything the target reaches and build its caches (schema validators: their
    # first use, not the input, would otherwise count against -timeout), then instrument
    warm = []
    for seed in t.SEEDS[name]()[:50]:
        warm += [seed, seed[: len(seed) // 2], seed.replace(b'"0x', b'"zz', 1),
                 seed.replace(b":", b":[", 1)]
    for data in warm:
        try:
            t.run_one(name, data)
        except Exception:  # a crashing seed is found again by the fuzzer
            pass
    if os.environ.get("VBPROTO_FUZZ_INSTRUMENT") == "all":
        atheris.instrument_all()
    else:
        _instrument_ours(atheris)

    guarded: list[Any] = []

    def one(data: bytes) -> None:
        if not guarded:  # inside Fuzz, which binds its native hooks to the module again
            guarded.append(_guard_trace_cmp(atheris))
        t.run_one(name, data)

    atheris.Setup([sys.argv[0], *argv], one)
    atheris.Fuzz()


def _guard_trace_cmp(atheris: Any) -> None:
    """Keep numpy comparisons away from atheris's native comparison hook.

    Instrumented code calls ``atheris._trace_cmp(a, b, op, counter, is_const)`` for every
    comparison.  In atheris 3.0.0 that hook leaks one reference to a result that is not a
    ``bool``: every ``array == 1`` left its result array alive (``sys.getallocatedblocks()``
    grew by 3 per comparison in a 5-line repro; ``np.equal(a, 1)`` stayed flat), which is how
    ``wire_decode`` and ``codec_decode_buffer`` grew ~6.5 KB an input and stopped at ~310,000
    inputs on libFuzzer's 2 GB limit.  The bytecode looks the hook up on the module at each
    call, so a wrapper there (set at the first input: ``atheris.Fuzz`` binds the module's
    native hooks again when it starts) sees every comparison: one with a numpy array on
    either side is done plainly (an element-wise result gives the fuzzer no useful value),
    every other one still reaches the native hook and its data-flow feedback.
    """
    import dis
    import operator

    import numpy as np

    try:
        from atheris.version_dependent import (  # type: ignore[import-untyped,unused-ignore]
            CMP_OP_SHIFT_AMOUNT,
        )
    except ImportError:  # older atheris: the argument is the plain dis.cmp_op index
        CMP_OP_SHIFT_AMOUNT = 0
    if CMP_OP_SHIFT_AMOUNT:  # a reversed constant comparison passes an unshifted index
        print("WARNING: numpy comparisons not guarded on this Python", file=sys.stderr)
        return
    by_name = {"<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
               ">": operator.gt, ">=": operator.ge}
    ops = [by_name[name] for name in dis.cmp_op]
    native = atheris._trace_cmp
    array = np.ndarray

    def trace_cmp(a: Any, b: Any, op: int, counter: int, is_const: bool) -> Any:
        if isinstance(a, array) or isinstance(b, array):
            return ops[op](a, b)
        return native(a, b, op, counter, is_const)

    atheris._trace_cmp = trace_cmp


#: modules whose code the campaign instruments for coverage: ours (and the targets).  Not
#: the standard library, jsonschema, construct, tomllib...: their pure-Python functions made up
#: most of the 8,000 that ``atheris.instrument_all()`` patched, and each instrumented call
#: slowed every input without pointing the fuzzer at our code (VBPROTO_FUZZ_INSTRUMENT=all
#: restores it)
OURS = ("virtio_balloon_proto", "targets", "__main__")


def _instrument_ours(atheris: Any) -> None:
    import gc
    import types

    funcs = [o for o in gc.get_objects()
             if isinstance(o, types.FunctionType) and isinstance(o.__code__, types.CodeType)
             and (o.__module__ or "").partition(".")[0] in OURS]
    print(f"INFO: instrumenting {len(funcs)} functions of {', '.join(OURS)}", file=sys.stderr)
    for f in funcs:
        try:
            atheris.instrument_func(f)
        except Exception as exc:  # as instrument_all does: go on without it
            print(f"ERROR: cannot instrument {f}: {exc}", file=sys.stderr)


def run_atheris(name: str, runs: int, seconds: float, slow: float,
                crash_dir: Path, workdir: Path, kill_after: float = 60.0
                ) -> tuple[int, float, list[str]]:
    corpus = workdir / name
    corpus.mkdir(parents=True, exist_ok=True)
    max_len = t.MAX_LEN[name]
    for s in t.SEEDS[name]():
        if len(s) <= max_len:  # a longer seed would be cut anywhere by libFuzzer
            (corpus / hashlib.sha1(s).hexdigest()).write_bytes(s)
    crash_dir.mkdir(parents=True, exist_ok=True)
    # -timeout is libFuzzer's wall-clock kill, which on a shared machine at nice 19 also fires
    # when the process is merely descheduled (a 0.3 ms input was killed at 2 s, and at load
    # 30 two 0.3 ms inputs at 11 s): it is --kill-after (60 s), and the 1 s criterion is
    # -report_slow_units (each such input is saved as slow-unit-* and listed, for a
    # re-timing on its own -- see docs/fuzzing.md)
    argv = [f"-runs={runs}", f"-max_total_time={int(seconds)}",
            f"-timeout={max(int(kill_after), int(slow))}",
            f"-report_slow_units={max(1, int(slow))}",
            f"-artifact_prefix={crash_dir}/{name}-", "-rss_limit_mb=2048",
            f"-max_len={max_len}",
            "-print_final_stats=1", str(corpus)]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, __file__, "--atheris-child", name, "--", *argv],
                       capture_output=True, text=True)
    took = time.monotonic() - t0
    log = r.stdout + r.stderr
    (workdir / f"{name}.log").write_text(log)
    n = 0
    for line in log.splitlines():
        if "stat::number_of_executed_units:" in line:
            n = int(line.split(":")[-1])
    problems = [] if r.returncode == 0 else [
        f"{name}: atheris exit {r.returncode}; see {workdir / (name + '.log')} and "
        f"{crash_dir}/{name}-*"]
    for slow_unit in sorted(crash_dir.glob(f"{name}-slow-unit-*")):
        took_alone = _time_alone(name, slow_unit.read_bytes())
        verdict = "SLOW" if took_alone > slow else "ok alone"
        print(f"  {name}: slow unit {slow_unit.name}: {took_alone:.3f} s alone ({verdict})")
        if took_alone > slow:
            problems.append(f"{name}: {slow_unit} takes {took_alone:.2f} s on its own")
    return n, took, problems


def _time_alone(name: str, data: bytes) -> float:
    """Seconds one input takes in this (uninstrumented) process, after a warm-up call."""
    for _ in range(2):
        t0 = time.monotonic()
        try:
            t.run_one(name, data)
        except Exception:  # a crash is reported by the campaign; here only time counts
            pass
        took = time.monotonic() - t0
    return took


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--atheris-child":
        name = sys.argv[2]
        rest = sys.argv[sys.argv.index("--") + 1:]
        atheris_child(name, rest)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", help=f"default: all of {', '.join(t.TARGETS)}")
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=60.0, help="per target")
    ap.add_argument("--slow", type=float, default=1.0, help="an input slower than this fails")
    ap.add_argument("--kill-after", type=float, default=60.0,
                    help="libFuzzer's wall-clock -timeout per input (atheris; default 60 s)")
    ap.add_argument("--engine", choices=("atheris", "builtin"), default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crash-dir", type=Path, default=Path("fuzz-crashes"))
    ap.add_argument("--workdir", type=Path, default=Path("fuzz-work"))
    args = ap.parse_args()
    names = args.targets or list(t.TARGETS)
    unknown = [n for n in names if n not in t.TARGETS]
    if unknown:
        ap.error(f"unknown target(s): {', '.join(unknown)}")
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "builtin"
    all_problems: list[str] = []
    total = 0
    for name in names:
        if engine == "atheris":
            n, took, problems = run_atheris(name, args.runs, args.seconds, args.slow,
                                            args.crash_dir, args.workdir, args.kill_after)
        else:
            n, took, problems = builtin(name, args.runs, args.seconds, args.slow, args.seed,
                                        args.crash_dir)
        total += n
        print(f"{name:22} {engine:8} {n:>10} inputs {took:8.1f} s  "
              f"{'OK' if not problems else f'{len(problems)} PROBLEM(S)'}", flush=True)
        all_problems += problems
    for p in all_problems:
        print("  " + p)
    print(f"total: {total} inputs, {len(names)} target(s), {len(all_problems)} problem(s)")
    return 1 if all_problems else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
