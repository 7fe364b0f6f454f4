"""numpy vs construct: decoding a 1 MiB PFN array (262,144 ``__virtio32`` PFNs).

    python3 bench/wire_pfn_ratio.py [--runs N]

Compares, in one process, the median of N runs of
* construct: ``structs(True).pfn_array.parse`` (the reference definition),
* ``wire.decode("pfns", ...)`` (numpy path + findings, no page set),
* ``wire.decode("pfns", ...).pages()`` (plus the PageSet conversion),
* ``bulk.parse_pfns`` alone,
and prints each as a ratio to construct.  A ratio, not a time, is the result (STANDARDS.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from virtio_balloon_proto.wire import WireLayout, bulk, decode
from virtio_balloon_proto.wire.structs import structs

N_PFNS = 262_144  # 1 MiB of __virtio32


def _median(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--construct-runs", type=int, default=3,
                    help="construct takes seconds per run; fewer runs keep the bench short")
    args = ap.parse_args()

    rng = np.random.default_rng(2016)
    # a guest's inflate stream: mostly ascending runs with gaps, not sorted overall
    pfns = (np.cumsum(rng.integers(1, 4, N_PFNS)) + rng.integers(0, 1 << 20)).astype("<u4")
    rng.shuffle(pfns.reshape(-1, 256))  # 1024-byte buffers in random order
    data = pfns.tobytes()
    assert len(data) == 1 << 20
    lay = WireLayout("le")
    parse = structs(True).pfn_array.parse

    # same answer from both before timing anything
    ref = parse(data)
    got = decode("pfns", data, lay)
    assert got.fields()["pfns"] == list(ref.pfns)

    rows = [
        ("construct pfn_array.parse", _median(lambda: parse(data), args.construct_runs)),
        ("bulk.parse_pfns", _median(lambda: bulk.parse_pfns(data, True), args.runs)),
        ("wire.decode('pfns')", _median(lambda: decode("pfns", data, lay), args.runs)),
        ("wire.decode('pfns').pages()",
         _median(lambda: decode("pfns", data, lay).pages(), args.runs)),
    ]
    base = rows[0][1]
    print(f"1 MiB PFN array ({N_PFNS} PFNs), median of {args.runs} runs "
          f"(construct: {args.construct_runs})")
    print(f"{'path':32} {'median ms':>10} {'construct / path':>17}")
    for name, t in rows:
        print(f"{name:32} {t * 1e3:10.2f} {base / t:16.0f}x")


if __name__ == "__main__":
    main()
