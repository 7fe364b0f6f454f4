#!/usr/bin/env python3
"""Build a tiny Linux guest (Debian kernel + busybox initramfs) for balloon traffic capture.

Everything comes from Debian packages at run time, into a cache directory (default ``guest/``
at the top of the repository, which is gitignored: no kernel or .deb is ever committed)::

    python3 tools/build_guest.py [--out guest] [--kernel-package linux-image-6.1.0-56-amd64]
    python3 tools/build_guest.py --out guest/linux-6.12 --suite bookworm-backports \
        --kernel-package 'linux-image-6.12.*+deb12-amd64-unsigned'
    python3 tools/build_guest.py --out guest/s390x --arch s390x --qemu-misc

``--suite`` or ``--arch`` other than the host's use a PRIVATE apt configuration under
``OUT/apt`` (its own sources.list, lists and cache, ``APT_CONFIG``): ``/etc/apt`` is never
touched and nothing is installed.  ``--kernel-package`` may be a pattern (``*``): the highest
matching package name apt knows wins.  ``--qemu-misc`` also fetches Debian's
``qemu-system-misc`` (the same version as the installed qemu-system-x86) and unpacks it under
``OUT/qemu`` for ``qemu-system-s390x`` (run it with ``-L OUT/qemu/usr/share/qemu``).

Steps: ``apt-cache depends linux-image-ARCH`` names the current 6.1 ABI package (the
installable candidate), ``apt-get download`` fetches it and ``busybox-static`` (nothing is
installed), ``dpkg-deb -x`` unpacks them, and a newc cpio archive is written in pure Python
(no cpio binary) holding static busybox, ``/init``, ``/dev/console`` and the six virtio modules
in load order (no modules.dep is shipped, and virtio.ko needs virtio_ring.ko):
virtio_ring, virtio, virtio_pci_modern_dev, virtio_pci_legacy_dev, virtio_pci, virtio_balloon;
modules the kernel has built in (``modules.builtin``) or does not have (s390x: no PCI) are left
out, and the manifest lists what was packed.
``.ko.xz``/``.ko.zst`` modules would be decompressed with Python (lzma; zstd is refused).

Prints a JSON manifest (paths, package versions, sizes, timings) and writes it to
``OUT/manifest.json``.  A second run with the same package versions reuses the cache.
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import os
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



def init_script(modules: list[str] | tuple[str, ...]) -> str:
    """/init: load the modules, say READY; then, if the kernel command line has
    ``vbproto.eat=DELAY,MIB``, wait DELAY s, fill MIB MiB of the RAM-backed rootfs (memory
    pressure: a DEFLATE_ON_OOM driver gives pages back), say EAT-DONE, free it again (free
    pages for page reporting) and say EAT-FREED."""
    return f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in {" ".join(modules)}; do
    /bin/busybox insmod /lib/modules/$m.ko || echo "insmod $m failed"
done
echo {READY_MARK}
for w in $(/bin/busybox cat /proc/cmdline); do
    case $w in vbproto.eat=*)
        v=${{w#vbproto.eat=}}
        /bin/busybox sleep ${{v%,*}}
        /bin/busybox dd if=/dev/zero of=/eat bs=1048576 count=${{v#*,}} 2>/dev/null
        echo VBPROTO-EAT-DONE $(/bin/busybox ls -l /eat)
        /bin/busybox grep -E 'MemTotal|MemFree' /proc/meminfo
        /bin/busybox sleep 2
        /bin/busybox rm -f /eat
        echo VBPROTO-EAT-FREED;;
    esac
done
# stay alive (init must not exit); the host ends the run with QMP quit
while true; do /bin/busybox sleep 3600; done
"""


INIT_SCRIPT = init_script(MODULE_ORDER)


class BuildError(Exception):
    pass


def run(
    args: list[str], cwd: Path | None = None, timeout: float = 600,
    env: dict[str, str] | None = None,
) -> str:
    full_env = None if env is None else {**os.environ, **env}
    try:
        res = subprocess.run(
            args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
            env=full_env,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"{' '.join(args)}: {e}") from None
    if res.returncode:
        raise BuildError(f"{' '.join(args)} exited {res.returncode}: {res.stderr.strip()[-800:]}")
    return res.stdout


ARCHES = ("amd64", "s390x")
SUITES = ("bookworm", "bookworm-backports")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"


def host_arch() -> str:
    return run(["dpkg", "--print-architecture"]).strip()


def private_apt(out: Path, arch: str) -> dict[str, str]:
    """A private apt configuration (bookworm + updates + security + backports for ``arch`` and
    the host's arch) under ``out``; returns the environment that selects it.  /etc/apt is not
    read for sources nor written."""
    root = (out / "apt").resolve()
    for d in ("lists/partial", "cache/archives/partial", "etc/sources.list.d", "etc/preferences.d"):
        (root / d).mkdir(parents=True, exist_ok=True)
    arches = sorted({arch, host_arch()})
    opts = f"[arch={','.join(arches)} signed-by={KEYRING}]"
    (root / "etc" / "sources.list").write_text(
        f"deb {opts} {MIRROR} bookworm main\n"
        f"deb {opts} {MIRROR} bookworm-updates main\n"
        f"deb {opts} {MIRROR} bookworm-backports main\n"
        f"deb {opts} {SECURITY} bookworm-security main\n"
    )
    conf = root / "apt.conf"
    conf.write_text(
        f'Dir::Etc::SourceList "{root}/etc/sources.list";\n'
        f'Dir::Etc::SourceParts "{root}/etc/sources.list.d";\n'
        f'Dir::Etc::Preferences "{root}/etc/preferences";\n'
        f'Dir::Etc::PreferencesParts "{root}/etc/preferences.d";\n'
        f'Dir::State::Lists "{root}/lists";\n'
        f'Dir::Cache "{root}/cache";\n'
        "APT::Architectures { " + " ".join(f'"{a}";' for a in arches) + " };\n"
    )
    env = {"APT_CONFIG": str(conf)}
    stamp = root / "lists" / ".updated"
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > 86400:
        run(["apt-get", "update", "-qq"], env=env)
        stamp.touch()
    return env


def _newest(names: list[str]) -> str:
    return sorted(names, key=lambda n: [int(x) for x in re.findall(r"\d+", n)])[-1]


def kernel_package(arch: str = "amd64", env: dict[str, str] | None = None,
                   pattern: str | None = None, suite: str | None = None) -> str:
    """The kernel image package: the newest name matching ``pattern`` (``*`` wildcards), else
    the linux-image-6.1.*-ARCH package the linux-image-ARCH candidate depends on."""
    if pattern is not None:
        rx = "^" + re.escape(pattern).replace(r"\*", ".*") + "$"
        out = run(["apt-cache", "search", "--names-only", rx], env=env)
        names = [line.split()[0] for line in out.splitlines() if line.strip()]
        if suite is not None:
            names = [n for n in names if suite_version(f"{n}:{arch}", suite, env)]
        if not names:
            raise BuildError(f"no package matching {pattern!r} known to apt"
                             + (f" in {suite}" if suite else ""))
        return _newest(names)
    out = run(["apt-cache", "depends", f"linux-image-{arch}:{arch}"], env=env)
    m = re.search(rf"Depends: (linux-image-6\.1\.[0-9.]+-[0-9]+-{arch})\b", out)
    if m:
        return m.group(1)
    out = run(["apt-cache", "search", "--names-only",
               rf"^linux-image-6\.1\.[0-9.]+-[0-9]+-{arch}$"], env=env)  # fmt: skip
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    if not names:
        raise BuildError(f"no linux-image-6.1.*-{arch} package known to apt (apt-get update?)")
    return _newest(names)


def suite_version(pkg: str, suite: str, env: dict[str, str] | None = None) -> str | None:
    """The version of ``pkg`` that ``suite`` carries (from ``apt-cache policy``), or None."""
    out = run(["apt-cache", "policy", pkg], env=env)
    version = None
    for line in out.splitlines():
        m = re.match(r"\s+(?:\*\*\* )?(\S+) -?\d+$", line)
        if m:
            version = m.group(1)
        elif version and re.search(rf"\s{re.escape(suite)}/main\s", line):
            return version
    return None


def candidate_version(
    pkg: str, env: dict[str, str] | None = None, suite: str | None = None
) -> str:
    if suite is not None:
        v = suite_version(pkg, suite, env)
        if v is None:
            raise BuildError(f"{suite} has no {pkg}")
        return v
    out = run(["apt-cache", "policy", pkg], env=env)
    m = re.search(r"Candidate: (\S+)", out)
    if not m or m.group(1) == "(none)":
        raise BuildError(f"apt has no installable candidate for {pkg}")
    return m.group(1)


def installed_version(pkg: str) -> str:
    return run(["dpkg-query", "-W", "-f=${Version}", pkg]).strip()


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


def _builtin(root: Path) -> set[str]:
    names: set[str] = set()
    for f in (root / "lib" / "modules").glob("*/modules.builtin"):
        names |= {Path(line.strip()).name.split(".ko")[0] for line in f.read_text().splitlines()}
    return names


def _has_module(root: Path, name: str) -> bool:
    return any(
        p.name in (f"{name}.ko", f"{name}.ko.xz", f"{name}.ko.zst")
        for p in (root / "lib" / "modules").glob("*/kernel/**/*")
    )


def build(
    out: Path,
    kernel_pkg: str | None = None,
    *,
    arch: str | None = None,
    suite: str | None = None,
    qemu_misc: bool = False,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    arch = arch or host_arch()
    if arch not in ARCHES:
        raise BuildError(f"unsupported arch {arch!r} ({', '.join(ARCHES)})")
    if suite is not None and suite not in SUITES:
        raise BuildError(f"unsupported suite {suite!r} ({', '.join(SUITES)})")
    private = suite is not None or arch != host_arch() or qemu_misc
    env = private_apt(out, arch) if private else None
    pkg = kernel_package(arch, env) if kernel_pkg is None else (
        kernel_package(arch, env, kernel_pkg, suite) if "*" in kernel_pkg else kernel_pkg)
    bb = f"busybox-static:{arch}"
    versions = {pkg: candidate_version(f"{pkg}:{arch}", env, suite), "busybox-static":
                candidate_version(bb, env)}  # fmt: skip
    if qemu_misc:
        # the same version as the installed qemu-system-x86: it shares qemu-system-common
        versions["qemu-system-misc"] = installed_version("qemu-system-x86")
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
    wanted = [f"{pkg}:{arch}={versions[pkg]}", f"{bb}={versions['busybox-static']}"]
    if qemu_misc:
        wanted.append(f"qemu-system-misc={versions['qemu-system-misc']}")
    run(["apt-get", "download", *wanted], cwd=debs, env=env)
    t_download = time.monotonic() - t0
    deb_files = sorted(debs.glob("*.deb"))
    download_bytes = sum(p.stat().st_size for p in deb_files)
    root = out / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    t1 = time.monotonic()
    qemu_dir = out / "qemu"
    for deb in deb_files:
        if deb.name.startswith("qemu-system-misc"):
            shutil.rmtree(qemu_dir, ignore_errors=True)
            run(["dpkg-deb", "-x", str(deb), str(qemu_dir)])
        else:
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
    builtin = _builtin(root)
    modules = [m for m in MODULE_ORDER if m not in builtin and _has_module(root, m)]
    if arch == "s390x":  # no PCI guest here: virtio-ccw is built in, the PCI modules are not used
        modules = [m for m in modules if "pci" not in m]
    if "virtio_balloon" not in modules and "virtio_balloon" not in builtin:
        raise BuildError(f"{pkg} has no virtio_balloon module")
    files: list[tuple[str, int, bytes]] = [
        ("init", 0o100755, init_script(modules).encode()),
        ("bin/busybox", 0o100755, busybox.read_bytes()),
    ]
    for name in modules:
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
        "arch": arch,
        "packages": versions,
        "modules": modules,
        "ready_mark": READY_MARK,
        "download_bytes": download_bytes,
        "download_seconds": round(t_download, 2),
        "unpack_seconds": round(t_unpack, 2),
        "initrd_bytes": initrd.stat().st_size,
        "cached": False,
    }
    if qemu_misc:
        manifest["qemu_s390x"] = str(qemu_dir / "usr" / "bin" / "qemu-system-s390x")
        manifest["qemu_data"] = str(qemu_dir / "usr" / "share" / "qemu")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "guest")
    ap.add_argument("--kernel-package", default=None,
                    help="package name, or a pattern with * (newest match)")
    ap.add_argument("--arch", choices=ARCHES, default=None)
    ap.add_argument("--suite", choices=SUITES, default=None,
                    help="read packages through the private apt config (backports)")
    ap.add_argument("--qemu-misc", action="store_true",
                    help="also fetch and unpack qemu-system-misc (qemu-system-s390x)")
    args = ap.parse_args(argv)
    try:
        manifest = build(args.out, args.kernel_package, arch=args.arch, suite=args.suite,
                         qemu_misc=args.qemu_misc)
    except BuildError as e:
        print(f"build_guest: {e}", file=sys.stderr)
        return 2
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
