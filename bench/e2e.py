#!/usr/bin/env python3
"""End-to-end speed (issue 13): what a user runs, against the cost of reading the trace.

Every command runs as the user runs it (``python -m virtio_balloon_proto ...`` in a child
process); its wall time and peak RSS (``wait4``) are measured in the same run as the *floor*:
a child process that reads the same trace with stdlib ``json.loads`` per line,
``bytes.fromhex`` + ``np.frombuffer`` of each PFN buffer and one boolean mark array.  Targets
are ratios to that floor, so they mean the same on a loaded or an idle machine.

Sizes: N, 2N, 4N, 8N 4 KiB pages (N = 262,144: 1 GiB) of a spec inflate
(``trace synth --profile spec --scenario inflate --pages P --memory MEM``); per size:

* ``floor``           -- the read floor above (and ``floor-write``: json.dumps + write of the
  same records, the floor of ``trace synth``)
* ``decode --summary``, ``conform check``, ``conform run`` (reference device),
  ``trace synth``, ``trace import qemu-log`` of a QEMU ``-trace`` log of the same traffic
  (written by this script from the trace: one ``handle_output`` line per page, as QEMU does)

It prints time per page at each size (the linearity check: 8N within 1.5x of N) and the ratios
at the 7 GiB size of the issue's table (``--pages-7g``: 1,835,008 pages).

    python3 bench/e2e.py                      # N..8N and the 7 GiB trace; appends nothing
    python3 bench/e2e.py --write              # ... and writes its section of RESULTS.md
    python3 bench/e2e.py --sizes 1 --no-7g    # quick look
    python3 bench/e2e.py --big                # the 128 GiB guest: 33.5 M pages (minutes)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
N = 262_144
BEGIN, END = "<!-- e2e:begin -->", "<!-- e2e:end -->"

FLOOR_READ = r"""
import json, sys, numpy as np
marks = np.zeros(1 << 22, dtype=bool)
with open(sys.argv[1], "rb") as f:
    for line in f:
        o = json.loads(line)
        if o.get("type") == "avail":
            for h in o.get("out") or ():
                if h:
                    a = np.frombuffer(bytes.fromhex(h), dtype="<u4")
                    if a.size and int(a.max()) >= marks.size:
                        marks = np.resize(marks, int(a.max()) * 2)
                    marks[a] = True
print(int(marks.sum()))
"""

FLOOR_WRITE = r"""
import json, sys, time
recs = [json.loads(line) for line in open(sys.argv[1], "rb")]
t = time.perf_counter()
with open(sys.argv[2], "w") as f:
    for r in recs:
        f.write(json.dumps(r, separators=(",", ":")) + "\n")
print(time.perf_counter() - t)
"""


#: children cache bytecode as a user's Python does (a sandbox may set PYTHONDONTWRITEBYTECODE:
#: then every start would compile the package again, ~1 s)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


@dataclass
class Timing:
    seconds: float
    rss_mb: float
    out: str = ""
    #: the child's own CPU time (user + system, wait4): on a loaded machine the wall time
    #: includes waiting for a core, the CPU time does not
    cpu: float = 0.0


def run(argv: list[str], *, timeout: float = 3600) -> Timing:
    """Run a child; wall time and its own peak RSS (wait4), stdout kept."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as so:
        p = subprocess.Popen(argv, stdout=so, stderr=subprocess.PIPE, env=ENV)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        so.seek(0)
        out = so.read().decode(errors="replace")
    if p.returncode not in (0, 1):  # 1: conform found failures -- still a measurement
        raise SystemExit(f"{' '.join(argv)} exited {p.returncode}: {err[-2000:]}")
    return Timing(dt, ru.ru_maxrss / 1024, out, ru.ru_utime + ru.ru_stime)


def vb(*args: str) -> list[str]:
    return [sys.executable, "-m", "virtio_balloon_proto", *args]


def qemu_log(trace: Path, log: Path) -> None:
    """A QEMU ``-trace virtio_balloon_* -trace virtqueue_*`` log of the trace's inflates."""
    import json

    vq = {"inflate": 0x10, "deflate": 0x20, "stats": 0x30}
    with open(trace, "rb") as f, open(log, "w") as out:
        for line in f:
            o = json.loads(line)
            if o.get("type") != "avail" or o.get("role") not in ("inflate", "deflate"):
                continue
            q = vq[o["role"]]
            elem = 0x1000 + int(o.get("id") or 0)
            out.write(f"virtio_queue_notify vdev 0x1 n {o['queue']} vq {q:#x}\n"
                      f"virtqueue_pop vq {q:#x} elem {elem:#x} in_num 0 out_num 1\n")
            data = bytes.fromhex(o["out"][0])
            pfns = memoryview(data).cast("I")
            out.write("".join(f"virtio_balloon_handle_output section name: pc.ram gpa: "
                              f"{p << 12:#x}\n" for p in pfns))
            out.write(f"virtqueue_fill vq {q:#x} elem {elem:#x} len 0 idx 0\n")


SKIPPED = Timing(float("nan"), float("nan"), cpu=float("nan"))


def measure(pages: int, memory: int, work: Path, skip: frozenset[str] = frozenset()
            ) -> dict[str, Timing]:
    """Every command on a ``pages`` inflate; a command in ``skip`` is reported as nan."""
    trace = work / f"inflate-{pages}.jsonl"
    res: dict[str, Timing] = {name: SKIPPED for name in skip}
    res["trace synth"] = run(vb("trace", "synth", "--profile", "spec", "--scenario", "inflate",
                                "--pages", str(pages), "--memory", str(memory), "-o", str(trace)))
    res["floor"] = run([sys.executable, "-c", FLOOR_READ, str(trace)])
    fw = run([sys.executable, "-c", FLOOR_WRITE, str(trace), str(work / "copy.jsonl")])
    res["floor-write"] = Timing(float(fw.out.strip()), fw.rss_mb, cpu=float(fw.out.strip()))
    if 'decode --summary' not in skip:
        res["decode --summary"] = run(vb("decode", "--summary", str(trace)))
    if 'conform check' not in skip:
        res["conform check"] = run(vb("conform", "check", str(trace)))
    if 'conform run' not in skip:
        res["conform run"] = run(vb("conform", "run", "--corpus", str(trace)))
    log = work / f"inflate-{pages}.log"
    if "trace import qemu-log" not in skip:
        qemu_log(trace, log)
        res["trace import qemu-log"] = run(vb("trace", "import", "qemu-log", str(log),
                                              "--profile", "spec", "-o",
                                              str(work / "imported.jsonl")))
    res["startup"] = run(vb("--version"))
    for p in (trace, log, work / "copy.jsonl", work / "imported.jsonl"):
        p.unlink(missing_ok=True)
    return res


QEMU_SHARE = r"""
import json, sys, time
from virtio_balloon_proto.conformance.runner import Runner, load_case

case = load_case(sys.argv[1])
runner = Runner("qemu")
inside = [0.0, 0.0]  # wall and our CPU time inside device calls
dev = runner.device
for name in ("avail", "observe", "observe_changes", "config_read", "config_write",
             "host_request"):
    fn = getattr(dev, name, None)
    if fn is None:
        continue
    def timed(*a, _fn=fn, **k):
        w, c = time.perf_counter(), time.process_time()
        try:
            return _fn(*a, **k)
        finally:
            inside[0] += time.perf_counter() - w
            inside[1] += time.process_time() - c
    setattr(dev, name, timed)
runner.run_case(case)  # warm: QEMU started once before timing (start is per case anyway)
inside[:] = [0.0, 0.0]
w, c = time.perf_counter(), time.process_time()
res = runner.run_case(case)
wall, cpu = time.perf_counter() - w, time.process_time() - c
runner.close()
steps = sum(1 for s in case.steps if s.kind == "avail")
print(json.dumps({"status": res.outcome(False), "buffers": steps, "wall": wall, "cpu": cpu,
                  "device_wall": inside[0], "device_cpu": inside[1]}))
"""

COMMANDS = ["decode --summary", "conform check", "conform run", "trace synth",
            "trace import qemu-log"]
TARGETS = {"decode --summary": 3.0, "conform check": 5.0, "conform run": 10.0,
           "trace synth": 5.0}


def load() -> str:
    try:
        return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    except OSError:
        return "load average unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,2,4,8", help="multiples of N = 262,144 pages")
    ap.add_argument("--memory", type=int, default=16384, help="guest MiB (trace synth --memory)")
    ap.add_argument("--pages-7g", type=int, default=1_835_008)
    ap.add_argument("--no-7g", action="store_true")
    ap.add_argument("--big", action="store_true",
                    help="the 128 GiB guest instead: 33,554,432 pages (--memory 196608)")
    ap.add_argument("--qemu", type=int, metavar="PAGES", default=0,
                    help="instead: replay a PAGES inflate into QEMU 7.2 over qtest (buffers/s, "
                         "and the share of a step spent in QEMU vs our side)")
    ap.add_argument("--skip", default="", metavar="CMD,CMD",
                    help="commands not to run (reported as nan), e.g. 'trace import qemu-log'")
    ap.add_argument("--write", action="store_true", help="write the section of RESULTS.md")
    args = ap.parse_args()
    skip = frozenset(x.strip() for x in args.skip.split(",") if x.strip())
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    say(f"| machine: {platform.machine()} | cores: {os.cpu_count()} | python: "
        f"{platform.python_version()} | {load()} at start | "
        f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC |")
    say()
    run(vb("--version"))  # warm: bytecode written once, before anything is timed
    with tempfile.TemporaryDirectory(prefix="perf-e2e-") as tmp:
        work = Path(tmp)
        if args.qemu:
            import json

            trace = work / "qemu.jsonl"
            mem = max(64, args.qemu * 4096 * 2 >> 20)
            run(vb("trace", "synth", "--profile", "spec", "--scenario", "inflate", "--pages",
                   str(args.qemu), "--memory", str(mem), "-o", str(trace)))
            q = json.loads(run([sys.executable, "-c", QEMU_SHARE, str(trace)]).out)
            ours = q["cpu"]  # our process's CPU time for the whole case (ours + qtest client)
            step = q["wall"] / q["buffers"]
            say(f"QEMU 7.2 replay over qtest: {args.qemu:,} pages ({q['buffers']} buffers, "
                f"--memory {mem}; {load()} at end), case {q['status']}")
            say()
            say("| buffers/s | ms per buffer | our CPU ms per buffer | device calls ms "
                "(wall) | our share of a step | target | result |")
            say("|---:|---:|---:|---:|---:|---|---|")
            share = ours / q["wall"]
            say(f"| {q['buffers'] / q['wall']:.0f} | {step * 1e3:.2f} | "
                f"{ours / q['buffers'] * 1e3:.2f} | {q['device_wall'] / q['buffers'] * 1e3:.2f}"
                f" | {share:.0%} | < 50% | {'PASS' if share < 0.5 else 'FAIL'} |")
        elif args.big:
            pages, mem = 33_554_432 - 65_536, 131_072 + 1_024
            r = measure(pages, mem, work, skip)
            say(f"128 GiB guest: {pages:,} pages ({load()} at end)")
            say()
            say("| command | seconds | CPU s | peak RSS MiB | target | result |")
            say("|---|---:|---:|---:|---|---|")
            for name in ["floor", *COMMANDS]:
                t = r[name]
                tgt = ("RSS < 1024 MiB" + ("; < 60 s" if name == "conform run" else "")
                       if name in ("decode --summary", "conform check", "conform run") else "")
                ok = "" if not tgt else "PASS" if t.rss_mb < 1024 and (
                    name != "conform run" or t.seconds < 60) else "FAIL"
                say(f"| {name} | {t.seconds:.2f} | {t.cpu:.2f} | {t.rss_mb:.0f} | {tgt} | {ok} |")
        else:
            sizes = [int(x) for x in args.sizes.split(",")]
            results = {k: measure(k * N, args.memory, work, skip) for k in sizes}
            say(f"Linearity: microseconds per page ({load()} at end)")
            say()
            say("| command | " + " | ".join(f"{k}N ({k * N:,})" for k in sizes)
                + " | last/first | target | result |")
            say("|---|" + "---:|" * len(sizes) + "---:|---|---|")
            for name in ["floor", *COMMANDS]:
                per = [results[k][name].seconds / (k * N) * 1e6 for k in sizes]
                ratio = per[-1] / per[0]
                tgt = "<= 1.5x" if name == "conform run" else ""
                ok = ("PASS" if ratio <= 1.5 else "FAIL") if tgt else ""
                say(f"| {name} | " + " | ".join(f"{p:.2f}" for p in per)
                    + f" | {ratio:.2f}x | {tgt} | {ok} |")
            say()
            say("Peak RSS MiB")
            say()
            say("| command | " + " | ".join(f"{k}N" for k in sizes) + " |")
            say("|---|" + "---:|" * len(sizes))
            for name in ["floor", *COMMANDS]:
                say(f"| {name} | " + " | ".join(f"{results[k][name].rss_mb:.0f}" for k in sizes)
                    + " |")
            if not args.no_7g:
                r = measure(args.pages_7g, 8192, work, skip)
                say()
                say(f"7 GiB inflate ({args.pages_7g:,} pages, --memory 8192; {load()} at end): "
                    f"seconds, and the ratio to the floor (trace synth: to floor-write); "
                    f"interpreter + import start-up ({r['startup'].seconds:.2f} s for "
                    f"`vbproto --version`) is included")
                say()
                say("| command | seconds | floor s | ratio | CPU s | floor CPU s | CPU ratio "
                    "| target | result |")
                say("|---|---:|---:|---:|---:|---:|---:|---|---|")
                for name in COMMANDS:
                    base = r["floor-write"] if name == "trace synth" else r["floor"]
                    ratio = r[name].seconds / base.seconds
                    cratio = r[name].cpu / base.cpu if base.cpu else float("nan")
                    limit = TARGETS.get(name)
                    ok = "" if limit is None else "PASS" if ratio <= limit else "FAIL"
                    say(f"| {name} | {r[name].seconds:.2f} | {base.seconds:.2f} | "
                        f"{ratio:.1f}x | {r[name].cpu:.2f} | {base.cpu:.2f} | {cratio:.1f}x | "
                        f"{f'<= {limit:g}x' if limit else ''} | {ok} |")
    if args.write:
        path = HERE / "RESULTS.md"
        text = path.read_text()
        title = ("QEMU replay" if args.qemu else "128 GiB guest" if args.big
                 else "N..8N and 7 GiB")
        block = (f"### {title}\n\nGenerated by `python3 bench/e2e.py {' '.join(sys.argv[1:])}"
                 f"`.\n\n" + "\n".join(lines) + "\n")
        mark_b, mark_e = f"<!-- e2e:{title}:begin -->", f"<!-- e2e:{title}:end -->"
        if mark_b in text:
            text = re.sub(re.escape(mark_b) + ".*?" + re.escape(mark_e),
                          lambda _m: f"{mark_b}\n{block}{mark_e}", text, flags=re.S)
        else:
            if BEGIN not in text:
                text += f"\n## End to end (issue 13)\n\n{BEGIN}\n{END}\n"
            text = text.replace(END, f"{mark_b}\n{block}{mark_e}\n{END}")
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
