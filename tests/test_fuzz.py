"""The fuzz harness in CI: every target's seeds, a short mutation budget per target, and every
input a fuzzer ever crashed on (tests/fuzz/regressions/TARGET/NAME) -- each must end in the
project's error type or no error at all (docs/fuzzing.md for the long campaign)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))
import run as fuzz_run
import targets

REGRESSIONS = Path(__file__).parent / "fuzz" / "regressions"
#: mutated inputs per target in CI: a fixed count from a fixed seed, so a CI run is the same
#: run on any machine (a time budget ran further on an idle machine than under load, and so
#: could find a new crash in one run and not the next); 2,000 take 0.02-1.4 s a target idle.
#: New crashes are for the long campaign (docs/fuzzing.md), which becomes regression inputs.
RUNS = 2_000
#: a safety cap only: a slower machine runs fewer inputs rather than hanging the suite
CAP_SECONDS = 60.0


def _regressions() -> list[tuple[str, Path]]:
    out = []
    for d in sorted(REGRESSIONS.iterdir()):
        out += [(d.name, p) for p in sorted(d.iterdir())]
    return out


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_seeds_and_a_short_mutation_run(name: str, tmp_path: Path) -> None:
    seeds = targets.SEEDS[name]()
    assert seeds, f"{name} has no seed"
    n, _, problems = fuzz_run.builtin(name, runs=RUNS, seconds=CAP_SECONDS, slow=5.0, seed=1,
                                      crash_dir=tmp_path)
    assert not problems, "\n".join(problems)
    assert n >= min(len(seeds), 3)


@pytest.mark.parametrize(("name", "path"), _regressions(),
                         ids=[f"{n}/{p.name}" for n, p in _regressions()])
def test_regression_input(name: str, path: Path) -> None:
    targets.run_one(name, path.read_bytes())


def test_every_target_has_a_regression_dir_or_is_clean() -> None:
    """Regression inputs only name targets that exist."""
    assert {d.name for d in REGRESSIONS.iterdir()} <= set(targets.TARGETS)


def test_atheris_comparison_guard_keeps_numpy_off_the_native_hook() -> None:
    """atheris 3.0.0's native ``_trace_cmp`` leaks a non-bool result (a numpy array); the
    harness routes comparisons with an array to plain Python and everything else to the hook.
    """
    import dis
    import types

    import numpy as np

    calls: list[tuple[object, object, int]] = []

    def native(a: object, b: object, op: int, counter: int, is_const: bool) -> object:
        calls.append((a, b, op))
        return a == b

    fake = types.SimpleNamespace(_trace_cmp=native)
    fuzz_run._guard_trace_cmp(fake)
    hook = fake._trace_cmp
    assert hook is not native
    eq, ge = dis.cmp_op.index("=="), dis.cmp_op.index(">=")
    out = hook(np.arange(4), 2, eq, 7, False)
    assert out.tolist() == [False, False, True, False] and calls == []
    assert hook(3, np.arange(5), ge, 8, True).tolist() == [True, True, True, True, False]
    assert calls == []
    assert hook(5, 5, eq, 9, False) is True and hook("a", "b", eq, 10, True) is False
    assert calls == [(5, 5, eq), ("a", "b", eq)]
