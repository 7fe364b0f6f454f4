#!/usr/bin/env python3
"""Make the real-guest captures under conformance/real-guests/ (issue 14 item 4).

    python3 tools/make_real_captures.py [--out conformance/real-guests] [--only NAME...]
        [--accel tcg|kvm] [--guest-dir guest]

Fetches the guests with tools/build_guest.py (Debian packages through a private apt config
into ``guest/``, gitignored: nothing fetched is committed), runs each scenario of
``virtio_balloon_proto/qemu/guestcap.py`` and writes ``NAME.jsonl`` whose header names the
kernel and busybox packages, QEMU, the accelerator, the command line and the date.  Prints one
JSON line per capture with its timings.  Takes ~4-6 min on 2 busy cores (TCG).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from virtio_balloon_proto.qemu.capture import qemu_version  # noqa: E402
from virtio_balloon_proto.qemu.guestcap import Machine, Scenario, run_scenario  # noqa: E402

GUESTS = {
    "linux-6.12": ["--suite", "bookworm-backports",
                   "--kernel-package", "linux-image-6.12.*+deb12-amd64-unsigned"],
    "s390x": ["--arch", "s390x", "--qemu-misc"],
}

SCENARIOS: dict[str, tuple[str, Scenario]] = {
    # stats polling (tags 10-15), free page reporting, deflate-on-oom under memory pressure
    "qemu-7.2-linux-6.12-stats-reporting-oom": ("linux-6.12", Scenario(
        "stats-reporting-oom", memory="512M", balloon_to="192M",
        device={"free-page-reporting": True, "deflate-on-oom": True},
        append="vbproto.eat=10,240", stats_interval=1, eat=True)),
    # page poisoning on in the guest: PAGE_POISON negotiated, poison value written
    "qemu-7.2-linux-6.12-poison-reporting": ("linux-6.12", Scenario(
        "poison", memory="512M", balloon_to="384M", device={"free-page-reporting": True},
        append="page_poison=1 vbproto.eat=8,200", eat=True)),
    # free page hinting: a migration started over QMP makes QEMU ask for hints
    "qemu-7.2-linux-6.12-free-page-hint": ("linux-6.12", Scenario(
        "hint", memory="512M", balloon_to="384M", device={"free-page-hint": True},
        migrate=True)),
    # big-endian guest, legacy virtio-ccw (revision 0): the balloon speaks big-endian
    "qemu-7.2-s390x-linux-6.1-ccw-legacy": ("s390x", Scenario(
        "s390x-legacy", memory="512M", balloon_to="384M",
        device_values=(("max_revision", "0"),), stats_interval=1, stats_snapshots=2)),
    # the same guest on modern virtio-ccw (VERSION_1: little-endian)
    "qemu-7.2-s390x-linux-6.1-ccw-modern": ("s390x", Scenario(
        "s390x-modern", memory="512M", balloon_to="384M", stats_interval=1,
        stats_snapshots=2)),
}


def build(guest_dir: Path, name: str) -> dict[str, object]:
    res = subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_guest.py"), "--out", str(guest_dir / name),
         *GUESTS[name]], capture_output=True, text=True, timeout=1200, check=False)
    if res.returncode:
        raise SystemExit(f"build_guest {name}: {res.stderr.strip()}")
    return dict(json.loads(res.stdout))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "conformance" / "real-guests")
    ap.add_argument("--guest-dir", type=Path, default=REPO / "guest")
    ap.add_argument("--accel", choices=("tcg", "kvm"), default="tcg")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    manifests: dict[str, dict[str, object]] = {}
    for name, (guest, sc) in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        if guest not in manifests:
            manifests[guest] = build(args.guest_dir, guest)
        m = manifests[guest]
        pk = ", ".join(f"{k} {v}" for k, v in dict(m["packages"]).items())  # type: ignore[call-overload]
        if guest == "s390x":
            machine = Machine.s390x(str(m["qemu_s390x"]), Path(str(m["qemu_data"])))
            qemu = "QEMU emulator version 7.2 (qemu-system-s390x from Debian qemu-system-misc)"
            accel = "tcg"  # no s390x KVM on an x86 host
        else:
            machine = Machine()
            qemu = qemu_version()
            accel = args.accel
        prov = (f"{qemu}; accel {accel.upper()}; guest: Linux {m['kernel_release']} ({pk}); "
                f"scenario {sc.name}: {sc.memory} guest, QMP balloon to {sc.balloon_to} and back"
                f"; made by tools/make_real_captures.py --only {name}")
        work = None if args.workdir is None else args.workdir / name
        res = run_scenario(sc, Path(str(m["kernel"])), Path(str(m["initrd"])), machine=machine,
                           accel=accel, output=args.out / f"{name}.jsonl", workdir=work,
                           provenance=prov)
        print(json.dumps({"capture": name, "accel": accel,
                          "timings": {k: round(v, 2) for k, v in res.timings.items()},
                          "events": len(res.events), "stats_chains": len(res.stats_chains),
                          "reports": sum(map(len, res.reports.values()))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
