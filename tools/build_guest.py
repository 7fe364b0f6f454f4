#!/usr/bin/env python3
"""Build a tiny Linux guest (Debian kernel + busybox initramfs) for balloon traffic capture.

Everything comes from Debian packages at run time, into a cache directory (default ``guest/``
at the top of the repository, which is gitignored: no kernel or .deb is ever committed)::

    python3 tools/build_guest.py [--out guest] [--kernel-package linux-image-6.1.0-56-amd64]

Steps: ``apt-cache depends linux-image-amd64`` names the current 6.1 ABI package (the
installable candidate), ``apt-get download`` fetches it and ``busybox-static`` (nothing is
installed), ``dpkg-deb -x`` unpacks them, and a newc cpio archive is written in pure Python
(no cpio binary) holding static busybox, ``/init``, ``/dev/console`` and the six virtio modules
in load order (no modules.dep is shipped, and virtio.ko needs virtio_ring.ko):
virtio_ring, virtio, virtio_pci_modern_dev, virtio_pci_legacy_dev, virtio_pci, virtio_balloon.
``.ko.xz``/``.ko.zst`` modules would be decompressed with Python (lzma; zstd is refused).

Prints a JSON manifest (paths, package versions, sizes, timings) and writes it to
``OUT/manifest.json``.  A second run with the same package versions reuses the cache.
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODULE_ORDER = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_balloon",
)
READY_MARK = "VBPROTO-GUEST-READY"

INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
for m in {" ".join(MODULE_ORDER)}; do
    /bin/busybox insmod /lib/modules/$m.ko || echo "insmod $m failed"
done
echo {READY_MARK}
# stay alive (init must not exit); the host ends the run with QMP quit
while true; do /bin/busybox sleep 3600; done
"""


class BuildError(Exception):
    pass


def run(args: list[str], cwd: Path | None = None, timeout: float = 600) -> str:
    try:
        res = subprocess.run(
            args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"{' '.join(args)}: {e}") from None
    if res.returncode:
        raise BuildError(f"{' '.join(args)} exited {res.returncode}: {res.stderr.strip()[-800:]}")
    return res.stdout


def kernel_package() -> str:
    """The linux-image-6.1.*-amd64 package the linux-image-amd64 candidate depends on."""
    out = run(["apt-cache", "depends", "linux-image-amd64"])
    m = re.search(r"Depends: (linux-image-6\.1\.[0-9.]+-[0-9]+-amd64)\b", out)
    if m:
        return m.group(1)
    out = run(["apt-cache", "search", "--names-only", r"^linux-image-6\.1\.[0-9.]+-[0-9]+-amd64$"])
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    if not names:
        raise BuildError("no linux-image-6.1.*-amd64 package known to apt (apt-get update?)")
    return sorted(names, key=lambda n: [int(x) for x in re.findall(r"\d+", n)])[-1]


def candidate_version(pkg: str) -> str:
    out = run(["apt-cache", "policy", pkg])
    m = re.search(r"Candidate: (\S+)", out)
    if not m or m.group(1) == "(none)":
        raise BuildError(f"apt has no installable candidate for {pkg}")
    return m.group(1)


# --- newc cpio ---------------------------------------------------------------------------
def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def cpio_entry(
    name: str, mode: int, data: bytes = b"", ino: int = 0, rdev: tuple[int, int] = (0, 0)
) -> bytes:
    """One "070701" (newc) record: 110-byte ASCII header, name + NUL, data, each 4-aligned."""
    raw_name = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw_name), 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    return header + raw_name + _pad4(len(header) + len(raw_name)) + data + _pad4(len(data))


def build_cpio(
    files: list[tuple[str, int, bytes]], devices: list[tuple[str, int, int, int]]
) -> bytes:
    out = bytearray()
    ino = 1
    dirs: set[str] = set()
    for path, _, _ in files + [(d[0], 0, b"") for d in devices]:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in dirs:
                dirs.add(d)
                out += cpio_entry(d, 0o040755, ino=ino)
                ino += 1
    for path, mode, data in files:
        out += cpio_entry(path, mode, data, ino=ino)
        ino += 1
    for path, mode, major, minor in devices:
        out += cpio_entry(path, mode, ino=ino, rdev=(major, minor))
        ino += 1
    out += cpio_entry("TRAILER!!!", 0)
    return bytes(out)


def module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".zst":
        raise BuildError(f"{path}: zstd-compressed modules are not supported (no zstd in stdlib)")
    return data


def find_module(root: Path, name: str) -> Path:
    hits = [
        p
        for p in (root / "lib" / "modules").glob("*/kernel/**/*")
        if p.name in (f"{name}.ko", f"{name}.ko.xz", f"{name}.ko.zst")
    ]
    if len(hits) != 1:
        raise BuildError(f"module {name}: found {len(hits)} candidates under {root}")
    return hits[0]


def build(out: Path, kernel_pkg: str | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    pkg = kernel_pkg or kernel_package()
    versions = {pkg: candidate_version(pkg), "busybox-static": candidate_version("busybox-static")}
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("packages") == versions and all(
            Path(old.get(k, "")).is_file() for k in ("kernel", "initrd")
        ):
            old["cached"] = True
            return dict(old)
    t0 = time.monotonic()
    debs = out / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir()
    run(["apt-get", "download", f"{pkg}={versions[pkg]}",
         f"busybox-static={versions['busybox-static']}"], cwd=debs)  # fmt: skip
    t_download = time.monotonic() - t0
    deb_files = sorted(debs.glob("*.deb"))
    download_bytes = sum(p.stat().st_size for p in deb_files)
    root = out / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    t1 = time.monotonic()
    for deb in deb_files:
        run(["dpkg-deb", "-x", str(deb), str(root)])
    t_unpack = time.monotonic() - t1
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise BuildError(f"expected one /boot/vmlinuz-* in {pkg}, found {len(kernels)}")
    kernel = out / "vmlinuz"
    shutil.copyfile(kernels[0], kernel)
    busybox = root / "bin" / "busybox"
    if not busybox.is_file():
        raise BuildError("busybox-static did not provide /bin/busybox")
    files: list[tuple[str, int, bytes]] = [
        ("init", 0o100755, INIT_SCRIPT.encode()),
        ("bin/busybox", 0o100755, busybox.read_bytes()),
    ]
    for name in MODULE_ORDER:
        files.append((f"lib/modules/{name}.ko", 0o100644, module_bytes(find_module(root, name))))
    # the kernel opens /dev/console for init's stdio before /init runs
    cpio = build_cpio(files, [("dev/console", 0o020600, 5, 1)])
    initrd = out / "initrd.gz"
    initrd.write_bytes(gzip.compress(cpio, compresslevel=6))
    shutil.rmtree(debs, ignore_errors=True)
    manifest = {
        "kernel": str(kernel),
        "initrd": str(initrd),
        "kernel_release": kernels[0].name.removeprefix("vmlinuz-"),
        "packages": versions,
        "modules": list(MODULE_ORDER),
        "ready_mark": READY_MARK,
        "download_bytes": download_bytes,
        "download_seconds": round(t_download, 2),
        "unpack_seconds": round(t_unpack, 2),
        "initrd_bytes": initrd.stat().st_size,
        "cached": False,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "guest")
    ap.add_argument("--kernel-package", default=None)
    args = ap.parse_args(argv)
    try:
        manifest = build(args.out, args.kernel_package)
    except BuildError as e:
        print(f"build_guest: {e}", file=sys.stderr)
        return 2
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
