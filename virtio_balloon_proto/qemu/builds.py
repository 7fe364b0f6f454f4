"""Other QEMU builds as peers: Debian's bookworm-backports QEMU, fetched and run unpacked.

``python -m virtio_balloon_proto.qemu.builds fetch [--cache DIR]`` fetches the backport's
``qemu-system-x86`` (QEMU 10.0.2 today) with ``apt-get download`` into a cache directory and
unpacks it with ``dpkg-deb -x``; nothing is installed.  apt runs with a PRIVATE configuration
(``-o Dir::Etc::SourceList=...``, ``Dir::Etc::SourceParts``, ``Dir::State::Lists``,
``Dir::Cache::archives``, ``Dir::Etc::Preferences[Parts]``, all under the cache): the system's
``/etc/apt`` and its package lists are read, never written.  The backport suite is taken from
the same archive (URI and keyring) the system's own sources name for ``bookworm``.

The unpacked build runs with ``-L`` for its own firmware (:func:`.process.data_dirs_for`):
``--device qemu:build=10.0`` or ``--device qemu:binary=CACHE/<version>/root/usr/bin/...``.

A fetch writes ``CACHE/<version>/manifest.json`` (package versions, binary, timings).  A run
whose packages are already there reuses them; one that cannot reach the archive (offline)
raises :class:`~virtio_balloon_proto.errors.PeerError` and writes the reason to
``CACHE/last-error.txt``, which the tests that need the build show when they skip.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PeerError, UsageError
from .process import data_dirs_for

SUITE = "bookworm-backports"
BASE_SUITE = "bookworm"
#: what runs x86 QEMU unpacked: the binary, its shared modules, its ROMs, and SeaBIOS (10.0's
#: q35 needs SeaBIOS newer than bookworm's 1.16.2)
X86_PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios")
PPC_PACKAGES = ("qemu-system-ppc",)
APT_TIMEOUT = 600.0
_VERSION_RE = re.compile(r"QEMU emulator version (\d+\.\d+\.\d+)")
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def default_cache() -> Path:
    """``$VBPROTO_QEMU_CACHE``, else ``$XDG_CACHE_HOME/vbproto/qemu`` (``~/.cache/...``)."""
    env = os.environ.get("VBPROTO_QEMU_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "vbproto" / "qemu"


@dataclass(frozen=True)
class Build:
    """One unpacked QEMU build in the cache."""

    version: str  # "10.0.2"
    root: Path
    packages: dict[str, str]  # package -> Debian version

    def binary(self, name: str = "qemu-system-x86_64") -> Path:
        return self.root / "usr" / "bin" / name


def system_archive(sources_dir: Path = Path("/etc/apt")) -> tuple[str, str]:
    """(URI, keyring) of the system source serving ``bookworm`` main (read only)."""
    texts: list[str] = []
    for p in [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*"))]:
        if p.is_file() and (p.suffix in (".list", ".sources") or p.name == "sources.list"):
            try:
                texts.append(("deb822\n" if p.suffix == ".sources" else "") + p.read_text())
            except OSError:
                continue
    for text in texts:
        if text.startswith("deb822\n"):
            for stanza in text[7:].split("\n\n"):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    k, sep, v = line.partition(":")
                    if sep and not line.startswith((" ", "#")):
                        fields[k.strip().lower()] = v.strip()
                if (
                    BASE_SUITE in fields.get("suites", "").split()
                    and "deb" in fields.get("types", "").split()
                ):
                    uri = fields.get("uris", "").split()
                    if uri:
                        return uri[0], fields.get("signed-by", DEFAULT_KEYRING)
        else:
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s", line)
                if m and m.group(3) == BASE_SUITE:
                    opts = m.group(1) or ""
                    key = re.search(r"signed-by=(\S+?)[\s\]]", opts)
                    return m.group(2), key.group(1) if key else DEFAULT_KEYRING
    raise PeerError(f"no apt source for {BASE_SUITE} in {sources_dir}: cannot find the archive")


class PrivateApt:
    """apt-get / apt-cache with every list, cache and source under ``base`` (not /etc/apt)."""

    def __init__(self, base: Path, uri: str, keyring: str) -> None:
        self.base = base
        for d in ("lists/partial", "archives/partial", "etc/parts", "etc/preferences.d"):
            (base / d).mkdir(parents=True, exist_ok=True)
        self.sources = base / "etc" / "sources.list"
        self.sources.write_text(f"deb [signed-by={keyring}] {uri} {SUITE} main\n")
        self.options = [
            f"-oDir::Etc::SourceList={self.sources}",
            f"-oDir::Etc::SourceParts={base / 'etc' / 'parts'}",
            f"-oDir::State::Lists={base / 'lists'}",
            f"-oDir::Cache::archives={base / 'archives'}",
            f"-oDir::Etc::Preferences={base / 'etc' / 'preferences'}",
            f"-oDir::Etc::PreferencesParts={base / 'etc' / 'preferences.d'}",
            "-oDir::Cache::pkgcache=",
            "-oDir::Cache::srcpkgcache=",
            "-oAPT::Get::List-Cleanup=false",
            # downloads land in our own directory, which the _apt sandbox user cannot write
            "-oAPT::Sandbox::User=root",
            "-oAcquire::Retries=1",
            "-oAcquire::http::Timeout=20",
        ]

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        cmd = [tool, *self.options, *args]
        try:
            res = subprocess.run(
                cmd, capture_output=True, text=True, timeout=APT_TIMEOUT, cwd=cwd, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PeerError(f"{tool} {' '.join(args)}: {e}", where="apt") from None
        if res.returncode != 0:
            raise PeerError(
                f"{tool} {' '.join(args)} exited {res.returncode}: {res.stderr.strip()[-800:]}",
                where="apt",
            )
        failed = re.search(r"^(W|E): .*(Failed|Could not|Unable)", res.stderr, re.M)
        if tool == "apt-get" and "update" in args and failed:
            # apt-get update exits 0 when a source could not be fetched ("W: Failed to fetch")
            raise PeerError(f"apt-get update: {res.stderr.strip()[-800:]}", where="apt")
        return res.stdout

    def candidate(self, package: str) -> str:
        """The suite's version of ``package`` (apt-cache policy's candidate from our lists)."""
        out = self.run("apt-cache", "show", f"{package}/{SUITE}")
        m = re.search(r"^Version: (\S+)", out, re.M)
        if m is None:
            raise PeerError(f"{package} is not in {SUITE}", where="apt")
        return m.group(1)


def _qemu_version(binary: Path, data_dirs: tuple[Path, ...] = ()) -> str:
    args = [str(binary)]
    for d in data_dirs:
        args += ["-L", str(d)]
    try:
        out = subprocess.run(
            [*args, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PeerError(f"{binary} --version: {e}", where="QEMU") from None
    m = _VERSION_RE.search(out.stdout)
    if out.returncode != 0 or m is None:
        raise PeerError(f"{binary} does not run: {(out.stderr or out.stdout).strip()[-500:]}")
    return m.group(1)


def installed_builds(cache: Path | None = None) -> list[Build]:
    """Every unpacked build with a manifest in the cache, newest first."""
    cache = cache or default_cache()
    out: list[Build] = []
    for man in sorted(cache.glob("*/manifest.json")):
        try:
            data = json.loads(man.read_text())
            out.append(Build(str(data["version"]), man.parent / "root", dict(data["packages"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    out.sort(key=lambda b: tuple(int(x) for x in b.version.split(".")), reverse=True)
    return out


def find_build(version: str, cache: Path | None = None) -> Build:
    """The cached build whose version is ``version`` or starts with ``version.``."""
    cache = cache or default_cache()
    for b in installed_builds(cache):
        if b.version == version or b.version.startswith(version + "."):
            return b
    reason = last_error(cache)
    raise PeerError(
        f"QEMU build {version} is not in {cache}: fetch it with "
        f"`python -m virtio_balloon_proto.qemu.builds fetch`"
        + (f" (the last fetch failed: {reason})" if reason else ""),
        where="QEMU build",
    )


def last_error(cache: Path | None = None) -> str:
    try:
        return ((cache or default_cache()) / "last-error.txt").read_text().strip()
    except OSError:
        return ""


def fetch(
    cache: Path | None = None, *, packages: tuple[str, ...] = X86_PACKAGES, uri: str | None = None
) -> dict[str, Any]:
    """Fetch and unpack the backport's ``packages``; returns the manifest (see module doc)."""
    cache = cache or default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        manifest = _fetch(cache, packages, uri, t0)
    except PeerError as e:
        (cache / "last-error.txt").write_text(str(e) + "\n")
        raise
    (cache / "last-error.txt").unlink(missing_ok=True)
    return manifest


def _fetch(cache: Path, packages: tuple[str, ...], uri: str | None, t0: float) -> dict[str, Any]:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise PeerError("apt-get and dpkg-deb are needed (a Debian machine)", where="apt")
    found_uri, keyring = system_archive()
    apt = PrivateApt(cache / "apt", uri or found_uri, keyring)
    apt.run("apt-get", "-q", "update")
    t_update = time.monotonic() - t0
    versions = {p: apt.candidate(p) for p in packages}
    debs = cache / "debs"
    debs.mkdir(exist_ok=True)
    fetched: list[str] = []
    for p, v in versions.items():
        if not list(debs.glob(f"{p}_*{_deb_version(v)}_*.deb")):
            apt.run("apt-get", "-q", "download", f"{p}={v}", cwd=debs)
            fetched.append(p)
    t_download = time.monotonic() - t0 - t_update
    main = versions[packages[0]]
    upstream = main.split(":", 1)[-1].split("+", 1)[0]
    target = cache / upstream
    man_path = target / "manifest.json"
    if man_path.is_file() and not fetched:
        old = json.loads(man_path.read_text())
        if old.get("packages") == versions:
            old["reused"] = True
            return dict(old)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
    try:
        for p, v in versions.items():
            (deb,) = debs.glob(f"{p}_*{_deb_version(v)}_*.deb")
            res = subprocess.run(
                ["dpkg-deb", "-x", str(deb), str(staging / "root")],
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            if res.returncode != 0:
                raise PeerError(f"dpkg-deb -x {deb.name}: {res.stderr.strip()[-500:]}")
        binary = staging / "root" / "usr" / "bin" / "qemu-system-x86_64"
        version = _qemu_version(binary, data_dirs_for(str(binary)))
        manifest: dict[str, Any] = {
            "version": version,
            "suite": SUITE,
            "packages": versions,
            "binary": str(target / "root" / "usr" / "bin" / "qemu-system-x86_64"),
            "seconds": {
                "update": round(t_update, 2),
                "download": round(t_download, 2),
                "total": round(time.monotonic() - t0, 2),
            },
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _deb_version(v: str) -> str:
    """A Debian version as apt-get download spells it in the file name (``:`` -> ``%3a``)."""
    return v.replace(":", "%3a")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m virtio_balloon_proto.qemu.builds")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help=f"fetch and unpack QEMU from {SUITE}")
    f.add_argument("--cache", type=Path, default=None, help="cache directory")
    f.add_argument("--ppc", action="store_true", help="also qemu-system-ppc")
    ls = sub.add_parser("list", help="the builds in the cache")
    ls.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "fetch":
            pk = X86_PACKAGES + (PPC_PACKAGES if args.ppc else ())
            print(json.dumps(fetch(args.cache, packages=pk), indent=2))
        else:
            for b in installed_builds(args.cache):
                print(f"{b.version}\t{b.binary()}")
    except (PeerError, UsageError, OSError) as e:
        print(f"qemu builds: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
