"""Other QEMU builds as devices: ``binary=``, ``build=10.0`` (the bookworm-backports QEMU 10.0.2
fetched by qemu/builds.py with a private apt configuration), and MSI-X on/off (``vectors=0``).

The 10.0 tests SKIP, with the fetch's own error as the reason, when the backport could not be
fetched (.ci/run fetches it and prints why not); everything else fails without QEMU.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from virtio_balloon_proto.conformance.dut import Setup
from virtio_balloon_proto.conformance.known_failures import KnownFailures
from virtio_balloon_proto.conformance.qemu_adapter import QemuDevice
from virtio_balloon_proto.conformance.runner import Runner, discover_cases
from virtio_balloon_proto.errors import PeerError
from virtio_balloon_proto.profiles import VERSION_1
from virtio_balloon_proto.qemu import builds
from virtio_balloon_proto.qemu.device import QemuBalloon, pfn_array
from virtio_balloon_proto.qemu.process import data_dirs_for, find_qemu

pytestmark = pytest.mark.qemu
REPO = Path(__file__).resolve().parent.parent
KNOWN = REPO / "conformance" / "known-failures"
STATS_VQ = 1 << 1


def _system_qemu() -> str:
    try:
        return find_qemu()
    except PeerError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def qemu10() -> str:
    try:
        return str(builds.find_build("10.0").binary())
    except PeerError as e:
        pytest.skip(f"QEMU 10.0 backport not available: {e}")


def _etc_apt_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(Path("/etc/apt").rglob("*")):
        if p.is_file():
            h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()


def test_offline_fetch_fails_with_the_reason_and_never_touches_etc_apt(tmp_path: Path) -> None:
    """An archive that cannot be reached (a closed loopback port) is a PeerError; the reason
    is kept in last-error.txt and find_build() repeats it; /etc/apt is read, never written."""
    before = _etc_apt_digest()
    with pytest.raises(PeerError, match="apt-get"):
        builds.fetch(tmp_path, uri="http://127.0.0.1:9/debian")
    assert _etc_apt_digest() == before
    reason = (tmp_path / "last-error.txt").read_text()
    assert "127.0.0.1" in reason
    with pytest.raises(PeerError, match="last fetch failed") as info:
        builds.find_build("10.0", tmp_path)
    assert "python -m virtio_balloon_proto.qemu.builds fetch" in str(info.value)
    sources = (tmp_path / "apt" / "etc" / "sources.list").read_text()
    assert sources.split()[-2:] == ["bookworm-backports", "main"]
    # the CLI form: one line on stderr, exit 2
    res = subprocess.run(
        [sys.executable, "-m", "virtio_balloon_proto.qemu.builds", "list", "--cache",
         str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0 and res.stdout == ""


def test_system_archive_reads_deb822_and_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "x.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /k.gpg\n"
    )
    assert builds.system_archive(tmp_path) == ("http://mirror.invalid/debian", "/k.gpg")
    (tmp_path / "sources.list.d" / "x.sources").unlink()
    line = "deb [signed-by=/j.gpg] http://m.invalid/d bookworm main\n"
    (tmp_path / "sources.list").write_text(line)
    assert builds.system_archive(tmp_path) == ("http://m.invalid/d", "/j.gpg")
    (tmp_path / "sources.list").write_text("deb http://m.invalid/d trixie main\n")
    with pytest.raises(PeerError, match="no apt source for bookworm"):
        builds.system_archive(tmp_path)


def test_unpacked_tree_gets_its_firmware_dirs(tmp_path: Path) -> None:
    b = tmp_path / "usr" / "bin"
    b.mkdir(parents=True)
    (tmp_path / "usr" / "share" / "seabios").mkdir(parents=True)
    (b / "qemu-system-x86_64").touch()
    assert data_dirs_for(str(b / "qemu-system-x86_64")) == (tmp_path / "usr/share/seabios",)
    assert data_dirs_for("/usr/bin/qemu-system-x86_64") == ()


def test_binary_option_and_msix_needs_a_capability() -> None:
    """binary=PATH runs that build; 7.2's balloon has no MSI-X and no vectors property."""
    path = _system_qemu()
    d = QemuDevice(f"qemu:binary={path}")
    assert d.name == f"qemu:transport=modern,binary={path}"
    try:
        assert d.start(Setup(profile="spec", driver_features=VERSION_1)).accepted == VERSION_1
    finally:
        d.stop()
    with pytest.raises(PeerError, match="no MSI-X capability"):
        QemuBalloon(binary=path, msix=True).start()
    with pytest.raises(PeerError, match="vectors"):
        QemuDevice("qemu:vectors=0").start(Setup(profile="spec", driver_features=VERSION_1))
    with pytest.raises(PeerError, match="does not exist"):
        QemuDevice("qemu:binary=/nonexistent/qemu").start(Setup(profile="spec", driver_features=0))


@pytest.mark.parametrize("transport", ["modern", "legacy"])
def test_qemu10_msix_delivers_queue_and_config_vectors(qemu10: str, transport: str) -> None:
    """QEMU 10.0's balloon has MSI-X (2 vectors: config + one shared by the queues).  An
    inflate signals the queue vector, a new target the config vector; on legacy the device
    config moves to offset 0x18 once MSI-X is on (VIRTIO 1.2 4.1.4.8) -- num_pages reads
    back right only if the adapter followed it."""
    with QemuBalloon(binary=qemu10, transport=transport) as b:
        assert b.fn.msix is not None and b.fn.msix.table_size == 2
        b.negotiate(STATS_VQ | (VERSION_1 if transport == "modern" else 0))
        b.setup_queues()
        assert b.config_vector == 0 and set(b.vectors.values()) == {1}
        assert b.msix_fired() == set()
        b.exchange("inflate", [pfn_array(range(0x2000, 0x2010))])
        assert b.msix_fired() == {1}
        b.set_target(b.vm_ram_size - 10 * 4096)
        assert b.msix_fired() == {0}
        assert b.num_pages() == 10


def test_qemu10_vectors_0_has_no_msix(qemu10: str) -> None:
    with QemuBalloon(binary=qemu10, device_values=(("vectors", "0"),)) as b:
        assert b.fn.msix is None
        b.negotiate()
        b.setup_queues()
        b.exchange("inflate", [pfn_array([0x2000])])
        assert b.isr() & 1  # INTx: the queue interrupt shows in ISR
    with pytest.raises(PeerError, match="no MSI-X"):
        QemuBalloon(binary=qemu10, device_values=(("vectors", "0"),), msix=True).start()


@pytest.mark.parametrize("spec", ["qemu:build=10.0", "qemu:build=10.0,transport=legacy"])
def test_qemu10_columns_pass_the_spec_corpus(qemu10: str, spec: str) -> None:
    """Every spec case QEMU 10.0.2 can run passes (no known failures), MSI-X on or off."""
    cases = discover_cases(REPO / "conformance" / "traces", case_globs=["spec/*-le"])
    runner = Runner(
        spec,
        known_failures=KnownFailures.load(
            REPO / "conformance" / "known-failures" / "qemu-10.0.toml"
        ),
    )
    try:
        outcomes = {c.id: runner.run_case(c) for c in cases}
    finally:
        runner.close()
    failed = {k: r.details_text() for k, r in outcomes.items() if r.outcome() == "fail"}
    assert not failed
    assert sum(r.outcome() == "pass" for r in outcomes.values()) >= 17


def test_builds_list_cli(qemu10: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "virtio_balloon_proto.qemu.builds", "list"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0
    assert f"\t{qemu10}" in res.stdout and res.stdout.startswith("10.0.")
    man = json.loads((Path(qemu10).parents[3] / "manifest.json").read_text())
    assert man["packages"]["qemu-system-x86"].startswith("1:10.0")
