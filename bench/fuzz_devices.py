"""Measure the device fuzzer (issue 16): zoo bugs found from scratch, false alarms on devices
that make only allowed choices, and steps per second.

    python bench/fuzz_devices.py zoo [--seeds 5] [--limit 2000]      # median sequences/seconds
    python bench/fuzz_devices.py choice [--sequences 10000]          # findings (want: none)
    python bench/fuzz_devices.py speed [--device qemu] [--seconds 60]
    python bench/fuzz_devices.py table --only LOG...                 # markdown of logged runs

Each result is one JSON line on stdout (and appended to --log FILE), so a long run that is
stopped keeps what it measured.  docs/fuzzing-devices.md and bench/RESULTS.md quote the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def emit(obj: dict[str, Any], log: str | None) -> None:
    line = json.dumps(obj)
    print(line, flush=True)
    if log:
        with open(log, "a") as f:
            f.write(line + "\n")


def zoo(args: argparse.Namespace) -> None:
    from virtio_balloon_proto.conformance.fuzz import Campaign
    from virtio_balloon_proto.conformance.zoo.registry import ZOO

    for e in ZOO:
        if args.only and e.id not in args.only:
            continue
        runs = []
        for seed in range(args.seeds):
            c = Campaign(f"python:{e.target()}", seed=seed, shrink_budget=args.shrink)
            t0 = time.monotonic()
            c.run(sequences=args.limit, stop_when=lambda c, e=e: any(
                e.clause in f.clauses() for f in c.findings.values()))
            c.close()
            hit = next((f for f in c.findings.values() if e.clause in f.clauses()), None)
            first = hit.first_for(e.clause) if hit else None
            runs.append({"seed": seed, "found": hit is not None,
                         "sequences": first[0] + 1 if first else None,
                         "seconds": round(first[1], 3) if first else None,
                         "ops": len(hit.program.ops) if hit else None,
                         "shape": list(hit.shape) if hit else None,
                         "wall": round(time.monotonic() - t0, 2)})
        found = [r for r in runs if r["found"]]
        emit({"part": "zoo", "id": e.id, "clause": e.clause, "seeds": args.seeds,
              "limit": args.limit, "found": len(found),
              "median_sequences": statistics.median(r["sequences"] for r in found)
              if found else None,
              "median_seconds": round(statistics.median(r["seconds"] for r in found), 3)
              if found else None, "runs": runs}, args.log)


def choice(args: argparse.Namespace) -> None:
    from test_fuzz_devices import CHOICE_DEVICES, choice_options

    from virtio_balloon_proto.conformance.fuzz import Campaign

    for dev in CHOICE_DEVICES:
        if args.only and not any(o in dev for o in args.only):
            continue
        c = Campaign(dev, seed=args.seed, options=choice_options(dev))
        st = c.run(sequences=args.sequences)
        c.close()
        emit({"part": "choice", "device": dev, "seed": args.seed,
              "features": sorted(choice_options(dev).features), "sequences": st.sequences,
              "steps": st.steps, "seconds": round(st.seconds, 1),
              "steps_per_second": round(st.steps_per_second, 1), "errors": st.errors,
              "findings": [f.to_json() for f in c.findings.values()]}, args.log)


def speed(args: argparse.Namespace) -> None:
    from virtio_balloon_proto.conformance.fuzz import Campaign

    c = Campaign(args.device, seed=args.seed)
    st = c.run(seconds=args.seconds)
    c.close()
    emit({"part": "speed", "device": args.device, "seed": args.seed,
          "sequences": st.sequences, "steps": st.steps, "seconds": round(st.seconds, 1),
          "steps_per_second": round(st.steps_per_second, 1),
          "sequences_per_second": round(st.sequences / st.seconds, 2),
          "unsupported": st.unsupported, "narrowed": st.narrowed,
          "findings": [f.to_json() for f in c.findings.values()]}, args.log)


def table(args: argparse.Namespace) -> None:
    """Markdown tables of logged results (``--log`` files given as ``--only``)."""
    rows = [json.loads(line) for path in args.only or [] for line in open(path) if line.strip()]
    zoo_rows = [r for r in rows if r["part"] == "zoo"]
    if zoo_rows:
        print("| zoo device | clause | found (seeds) | median sequences | median seconds | "
              "worst sequences |")
        print("|---|---|---:|---:|---:|---:|")
        for r in zoo_rows:
            worst = max((x["sequences"] for x in r["runs"] if x["found"]), default=None)
            print(f"| `{r['id']}` | `{r['clause']}` | {r['found']}/{r['seeds']} | "
                  f"{r['median_sequences']} | {r['median_seconds']} | {worst} |")
    ch = [r for r in rows if r["part"] == "choice"]
    if ch:
        print("\n| device (allowed choices only) | sequences | steps | steps/s | findings |")
        print("|---|---:|---:|---:|---:|")
        for r in ch:
            print(f"| `{r['device'].split(':')[-1]}` | {r['sequences']} | {r['steps']} | "
                  f"{r['steps_per_second']} | {len(r['findings'])} |")
    sp = [r for r in rows if r["part"] == "speed"]
    if sp:
        print("\n| device | seconds | sequences | steps | steps/s | sequences/s |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in sp:
            print(f"| `{r['device']}` | {r['seconds']} | {r['sequences']} | {r['steps']} | "
                  f"{r['steps_per_second']} | {r['sequences_per_second']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["zoo", "choice", "speed", "table"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--shrink", type=int, default=150)
    ap.add_argument("--sequences", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="reference")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--log", default=None)
    args = ap.parse_args()
    {"zoo": zoo, "choice": choice, "speed": speed, "table": table}[args.part](args)


if __name__ == "__main__":
    main()
