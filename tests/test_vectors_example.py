"""The docs example (examples/consume_vectors_test.py) actually runs, one test per vector."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from virtio_balloon_proto.vectorgen.verify import default_dir

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "consume_vectors_test.py"


def _count(name: str, pred: object = None) -> int:
    doc = json.loads((default_dir() / f"{name}.json").read_text())
    return sum(1 for g in doc["testGroups"] for t in g["tests"]
               if pred is None or pred(g))  # type: ignore[operator]


def test_example_runs_one_test_per_vector(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-p", "no:randomly", str(EXAMPLE), "--rootdir", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    large = _count("pfns", lambda g: g["pageSize"] != 4096)
    passed = _count("pfns") - large + _count("stats")
    assert f"{passed} passed, {large} skipped" in r.stdout, r.stdout[-500:]


def test_example_catches_a_wrong_corpus(tmp_path: Path) -> None:
    """Pointed (VBPROTO_VECTORS) at a corpus with one wrong vector, the example fails it."""
    src = default_dir()
    for name in ("pfns", "stats"):
        doc = json.loads((src / f"{name}.json").read_text())
        if name == "pfns":
            t = next(t for g in doc["testGroups"] for t in g["tests"]
                     if t["id"] == "pfns/be-4k/pfn-1")
            t["pages"] = [[2, 1]]
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(EXAMPLE), "--rootdir", str(tmp_path)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120,
                       env={**__import__("os").environ, "VBPROTO_VECTORS": str(tmp_path)})
    assert r.returncode == 1
    assert "1 failed" in r.stdout and "pfns/be-4k/pfn-1" in r.stdout
