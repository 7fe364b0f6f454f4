"""The verifier: our codec passes every vector (in-process and over stdio); broken codecs fail
exactly the vectors their bug touches; CLI exit codes, JUnit, timeouts, unsupported."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from virtio_balloon_proto.errors import UsageError
from virtio_balloon_proto.vectorgen.verify import (
    Report,
    default_dir,
    iter_tests,
    open_codec,
    verify,
)

ROOT = default_dir()
BROKEN = Path(__file__).with_name("vectors_broken_codec.py")
VBPROTO = [sys.executable, "-m", "virtio_balloon_proto"]


def _all() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    out = []
    for p in sorted(ROOT.glob("*.json")):
        doc = json.loads(p.read_text())
        out += [(p.stem, g, t) for g, t in iter_tests(doc)]
    return out


def _broken(bug: str) -> Report:
    return verify(None, open_codec(f"stdio:{sys.executable} {BROKEN} {bug}", 10.0))


def test_reference_codec_passes_every_vector() -> None:
    r = verify()
    c = r.counts()
    assert c["failed"] == 0 and c["skipped"] == 0
    assert c["passed"] == len(_all()) > 900


def test_reference_codec_over_stdio_passes_every_vector() -> None:
    r = verify(None, open_codec(f"stdio:{sys.executable} -m virtio_balloon_proto.vectorgen.serve",
                                10.0))
    assert r.counts() == {"passed": len(_all()), "failed": 0, "skipped": 0}


def test_drop_last_pfn_fails_exactly_the_pfn_vectors() -> None:
    expected = set()
    for name, _g, t in _all():
        if name == "pfns" and "error" not in t and t["fields"]["pfns"]:
            expected.add(t["id"])
        if name.startswith("pageset-") and any(c["kind"] == "pfns" for c in t.get("chains", [])):
            expected.add(t["id"])
    assert len(expected) > 60
    assert "pfns/be-4k/pfn-max" in expected and "pageset-spec/inflate-le/run-257" in expected
    r = _broken("drop-last-pfn")
    assert r.failed_ids() == expected
    assert r.counts()["skipped"] == 0


def test_be_as_le_fails_big_endian_vectors_only() -> None:
    r = _broken("be-as-le")
    failed = r.failed_ids()
    be = {t["id"] for name, g, t in _all() if g.get("endian") == "be"}
    assert failed <= be
    # config space is little-endian whatever the endian parameter: the bug cannot show there
    assert not {i for i in failed if i.startswith("config/")}
    # ring walks take no decode request: unaffected
    assert not {i for i in failed if i.startswith("ring-")}
    for must_fail in ("pfns/be-4k/pfn-1", "v3-bmap/be64/one-page", "v3-bmap/be32-wle/one-page",
                      "hybrid/be/order0-pfn0", "stats/be/spec-tags", "hint-cmd/be/device-id",
                      "v3-req/be/param", "pageset-spec/inflate-be/frame-1",
                      "pageset-hybrid/inflate-be/bitmap-window"):
        assert must_fail in failed, must_fail
    # inputs that read the same either way pass: empty, truncated (an error either way), zeros
    for must_pass in ("pfns/be-4k/empty", "v3-bmap/be64/truncated-0", "v3-req/be/zero",
                      "stats/be/empty", "hybrid/be/truncated-7", "hint-cmd/be/stop"):
        assert must_pass not in failed, must_pass
    decodable_be = {t["id"] for name, g, t in _all() if g.get("endian") == "be"
                    and name in ("pfns", "v3-bmap", "hybrid", "stats", "v3-req", "hint-cmd")
                    and "error" not in t}
    assert len(failed & decodable_be) > 0.8 * len(decodable_be)


def test_decode_only_codec_passes_encode_checks_are_optional() -> None:
    r = _broken("no-encode")
    assert r.counts()["failed"] == 0


def test_exit_127_skips_everything() -> None:
    r = _broken("exit-127")
    assert r.counts() == {"passed": 0, "failed": 0, "skipped": len(_all())}


def test_hanging_codec_fails_with_a_timeout_not_a_hang() -> None:
    r = verify(None, open_codec("stdio:sleep 30", 0.2))
    assert r.counts()["failed"] == len(_all())
    assert "no answer within 0.2 s" in r.outcomes[0].message


def test_malformed_answers_fail_without_crashing(tmp_path: Path) -> None:
    script = tmp_path / "echo.py"
    script.write_text(
        "import sys, struct, json\n"
        "while True:\n"
        "    h = sys.stdin.buffer.read(4)\n"
        "    if len(h) < 4: break\n"
        "    sys.stdin.buffer.read(struct.unpack('<I', h)[0])\n"
        "    b = json.dumps({'fields': 'nonsense', 'chains': 'x', 'error': None}).encode()\n"
        "    sys.stdout.buffer.write(struct.pack('<I', len(b)) + b); sys.stdout.buffer.flush()\n")
    r = verify(None, open_codec(f"stdio:{sys.executable} {script}", 5.0))
    assert r.counts()["failed"] == len(_all())


def test_bad_usage() -> None:
    with pytest.raises(UsageError):
        open_codec("python:foo", 1.0)
    with pytest.raises(UsageError):
        verify("/nonexistent-dir")


def test_cli_exit_codes_and_junit(tmp_path: Path) -> None:
    ok = subprocess.run([*VBPROTO, "vectors", "verify"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "pfns: 50 passed, 0 failed, 0 skipped" in ok.stdout
    junit = tmp_path / "out" / "j.xml"
    junit.parent.mkdir()
    bad = subprocess.run([*VBPROTO, "vectors", "verify", str(ROOT), "--impl",
                          f"stdio:{sys.executable} {BROKEN} drop-last-pfn", "--junit",
                          str(junit)], capture_output=True, text=True)
    assert bad.returncode == 1, bad.stderr
    assert "\nFAIL pageset-spec/" in bad.stdout
    root = ET.parse(junit).getroot()
    fails = [tc.get("name") for tc in root.iter("testcase") if tc.find("failure") is not None]
    assert int(root.get("failures", "-1")) == len(fails) > 60
    assert all(f.startswith(("pfns/", "pageset-")) for f in fails)
    assert [p.name for p in junit.parent.iterdir()] == ["j.xml"]  # atomic: no temp left
    for args in (["vectors", "verify", str(tmp_path / "missing")],
                 ["vectors", "verify", "--impl", "carrier-pigeon"],
                 ["vectors", "verify", str(tmp_path)]):
        r = subprocess.run([*VBPROTO, *args], capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr, args


def test_a_corrupted_vector_file_is_bad_usage(tmp_path: Path) -> None:
    doc = json.loads((ROOT / "pfns.json").read_text())
    doc["testGroups"][0]["tests"][0]["result"] = "maybe"
    (tmp_path / "pfns.json").write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="does not follow"):
        verify(tmp_path)


def test_an_edited_vector_fails_our_codec(tmp_path: Path) -> None:
    doc = json.loads((ROOT / "hybrid.json").read_text())
    t = next(t for _, t in iter_tests(doc) if t["id"] == "hybrid/le/order9")
    t["pages"] = [[512, 511]]  # one frame short of the 2 MiB block
    (tmp_path / "hybrid.json").write_text(json.dumps(doc))
    r = verify(tmp_path)
    assert r.failed_ids() == {"hybrid/le/order9"}
    assert "pages" in next(o.message for o in r.outcomes if o.status == "failed")
