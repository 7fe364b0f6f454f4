#!/usr/bin/env python3
"""Per-command QMP latency: our client (qemu/qmp.py) against the QEMU project's ``qemu.qmp``
(PyPI; its asyncio ``QMPClient`` and its synchronous ``legacy.QEMUMonitorProtocol``), on three
monitors of one QEMU, same commands, same run (issue 15 item f)::

    .venv/bin/pip install qemu.qmp && .venv/bin/python bench/qmp_clients.py [--n 400]

Prints medians and p90 per client and command, and the ratio of each median to ours.  Not run
by CI (qemu.qmp is not a dependency: it measured slower, see docs/qemu.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from virtio_balloon_proto.qemu.process import QemuOptions, QemuProcess

COMMANDS: tuple[tuple[str, dict[str, Any] | None], ...] = (
    ("query-status", None),
    ("qom-get", {"path": "/machine/peripheral/balloon0", "property": "guest-stats"}),
)


def _summary(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs), xs[int(0.9 * len(xs))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    n = ap.parse_args().n
    try:
        from qemu.qmp import QMPClient
        from qemu.qmp.legacy import QEMUMonitorProtocol
    except ImportError:
        print("qemu.qmp is not installed: pip install qemu.qmp", file=sys.stderr)
        return 2
    d = Path(tempfile.mkdtemp(prefix="vbproto-qmpbench-"))
    s2, s3 = d / "qmp2.sock", d / "qmp3.sock"
    extra = (
        "-chardev", f"socket,path={s2},id=m2,server=on,wait=off", "-mon", "chardev=m2,mode=control",
        "-chardev", f"socket,path={s3},id=m3,server=on,wait=off", "-mon", "chardev=m3,mode=control",
    )  # fmt: skip
    with QemuProcess(QemuOptions(memory=64 << 20, extra_args=extra)) as p:
        for cmd, args in COMMANDS:
            ours: list[float] = []
            for _ in range(n):
                t = time.perf_counter()
                p.qmp.execute(cmd, args)
                ours.append(time.perf_counter() - t)
            legacy = QEMUMonitorProtocol(str(s3))
            legacy.connect()
            sync: list[float] = []
            for _ in range(n):
                t = time.perf_counter()
                legacy.cmd(cmd, **(args or {}))
                sync.append(time.perf_counter() - t)
            legacy.close()

            async def run(cmd: str = cmd, args: dict[str, Any] | None = args) -> list[float]:
                c = QMPClient("bench")
                await c.connect(str(s2))
                xs: list[float] = []
                for _ in range(n):
                    t = time.perf_counter()
                    await c.execute(cmd, args)
                    xs.append(time.perf_counter() - t)
                await c.disconnect()
                return xs

            base, _ = _summary(ours)
            for name, xs in (("ours", ours), ("qemu.qmp async", asyncio.run(run())),
                             ("qemu.qmp legacy sync", sync)):  # fmt: skip
                med, p90 = _summary(xs)
                print(f"{cmd:14s} {name:22s} median {med * 1e6:7.0f} us  p90 {p90 * 1e6:7.0f} us"
                      f"  {med / base:5.2f}x ours")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
