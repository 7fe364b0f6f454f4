"""The CLI's process settings (virtio_balloon_proto/_startup.py) come before numpy's import."""

from __future__ import annotations

import os
import subprocess
import sys


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    return subprocess.run([sys.executable, "-X", "importtime", "-c", code], env={**e, **env},
                          capture_output=True, text=True, timeout=60, check=True)


def test_openblas_gets_one_thread_before_numpy_is_imported() -> None:
    r = _run("import os, virtio_balloon_proto.cli, virtio_balloon_proto.commands.decode, "
             "numpy; print(os.environ['OPENBLAS_NUM_THREADS'])")
    assert r.stdout.strip() == "1"
    order = [ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if "|" in ln]
    assert "numpy" in order and "virtio_balloon_proto._startup" in order
    # importtime lists a module when its import ends: _startup has no imports of its own, so
    # it ends before numpy's import starts exactly when it ran first
    assert order.index("virtio_balloon_proto._startup") < order.index("numpy._globals")


def test_a_users_setting_wins_and_the_library_sets_nothing() -> None:
    r = _run("import os, virtio_balloon_proto.cli; print(os.environ['OPENBLAS_NUM_THREADS'])",
             OPENBLAS_NUM_THREADS="2")
    assert r.stdout.strip() == "2"
    r = _run("import os, virtio_balloon_proto.pageset, virtio_balloon_proto.codecs; "
             "print(os.environ.get('OPENBLAS_NUM_THREADS'))")
    assert r.stdout.strip() == "None"
