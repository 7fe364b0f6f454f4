"""Offline accounting (issue 11 item 3): actual against the pages really in the balloon, free
page hint command ids (device's id vs the driver's echo), v3 request ids per request, and the
stale hints decode --summary must not count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from virtio_balloon_proto.conformance.runner import check_trace

CORPUS = Path(__file__).resolve().parent.parent / "conformance" / "traces"


def _mutate(src: Path, dst: Path, edits: dict[int, dict[str, object]]) -> Path:
    """Copy a trace, replacing fields of events (1-based event numbers, header not counted)."""
    lines = src.read_text().splitlines()
    for n, fields in edits.items():
        rec = json.loads(lines[n])
        rec.update(fields)
        lines[n] = json.dumps(rec, separators=(",", ":"))
    dst.write_text("\n".join(lines) + "\n")
    return dst


def _results(path: Path, subject: str = "both") -> dict[str, tuple[str, str]]:
    res = check_trace(path, subject=subject)
    return {r.clause: (r.verdict.value, r.message) for r in res.results}


def test_seed_driver_actual_counts_pages_it_never_sent() -> None:
    r = _results(CORPUS / "v3" / "linux-v3-exact-le.jsonl")
    verdict, msg = r["spec.driver.op.actual-is-balloon-size"]
    assert verdict == "fail" and "actual = 512" in msg and "hold 0 page(s)" in msg


def test_real_capture_actual_is_exact_from_reset() -> None:
    r = _results(CORPUS / "real" / "qemu-7.2-linux-6.1-balloon-384M.jsonl")
    assert r["spec.driver.op.actual-is-balloon-size"][0] == "pass"


def test_a_window_compares_changes_of_actual(tmp_path: Path) -> None:
    """Cut the real capture after its first inflates: the balloon already holds pages the
    window never saw; only changes are compared, and they agree."""
    src = CORPUS / "real" / "qemu-7.2-linux-6.1-balloon-384M.jsonl"
    lines = src.read_text().splitlines()
    writes = [i for i, ln in enumerate(lines) if '"config_write"' in ln and '"offset":4' in ln]
    cut = writes[len(writes) // 2]
    win = tmp_path / "window.jsonl"
    win.write_text("\n".join([lines[0], *lines[cut + 1:]]) + "\n")
    res = check_trace(win)
    r = {x.clause: x for x in res.results}
    assert r["spec.driver.op.actual-is-balloon-size"].verdict.value == "pass"
    assert not [x for x in res.failures() if ".device." in x.clause], res.details_text()
    # a wrong value inside the window is still caught
    bad = lines[:]
    last = writes[-1]
    rec = json.loads(bad[last])
    rec["data"] = (int.from_bytes(bytes.fromhex(rec["data"]), "little") + 7).to_bytes(
        4, "little").hex()
    bad[last] = json.dumps(rec)
    badwin = tmp_path / "bad.jsonl"
    badwin.write_text("\n".join([bad[0], *bad[cut + 1:]]) + "\n")
    assert _results(badwin)["spec.driver.op.actual-is-balloon-size"][0] == "fail"


def test_big_endian_driver_echoing_a_byte_swapped_hint_id(tmp_path: Path) -> None:
    src = CORPUS / "spec" / "hint-be.jsonl"
    rec = json.loads(src.read_text().splitlines()[8])
    assert rec["out"] == ["80000000"]  # __virtio32 0x80000000 in the BE guest's order
    bad = _mutate(src, tmp_path / "swapped.jsonl", {8: {"out": ["00000080"]}})
    verdict, msg = _results(bad)["spec.driver.hint.start-with-cmd-id"]
    assert verdict == "fail" and "byte-swapped" in msg
    assert _results(src)["spec.driver.hint.start-with-cmd-id"][0] == "pass"


def test_replayed_hint_id_after_stop_is_stale() -> None:
    r = _results(CORPUS / "spec" / "hint-replayed-id-le.jsonl")
    verdict, msg = r["spec.driver.hint.start-with-cmd-id"]
    assert verdict == "fail" and "stale" in msg and "STOP" in msg


def _summary(path: Path) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "virtio_balloon_proto", "decode", "--summary",
                          "--json", str(path)], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    return dict(data.get("summary", data)["hinted"])


def test_decode_summary_does_not_count_stale_hints() -> None:
    good = _summary(CORPUS / "spec" / "hint-le.jsonl")
    stale = _summary(CORPUS / "spec" / "hint-replayed-id-le.jsonl")
    assert good["stale_frames"] == 0 and good["frames"] > 0
    assert stale["stale_frames"] > 0
    assert stale["frames"] == good["frames"]  # the replayed round's pages are not hinted


def test_v3_stale_param_is_the_devices_fault(tmp_path: Path) -> None:
    """The device answers the host's second request (0x123456789abc) with the first one's id:
    v3.device.req.param-is-req-id; the driver echoing what it was given is right."""
    src = CORPUS / "v3" / "unused-pages-le64.jsonl"
    lines = src.read_text().splitlines()
    ans = json.loads(lines[14])
    out0 = ans["out"][0]
    stale_answer = out0[:16] + (1).to_bytes(8, "little").hex() + out0[32:]
    bad = _mutate(src, tmp_path / "dev.jsonl", {
        13: {"data": "0000000000000000" + (1).to_bytes(8, "little").hex()},
        14: {"out": [stale_answer, *ans["out"][1:]]}})
    r = _results(bad)
    assert r["v3.device.req.param-is-req-id"][0] == "fail"
    assert "0x123456789abc" in r["v3.device.req.param-is-req-id"][1]
    assert r["v3.driver.unused.req-id-echo"][0] == "pass"


def test_v3_stale_echo_is_the_drivers_fault(tmp_path: Path) -> None:
    src = CORPUS / "v3" / "unused-pages-le64.jsonl"
    lines = src.read_text().splitlines()
    ans = json.loads(lines[14])
    out0 = ans["out"][0]
    stale_answer = out0[:16] + (1).to_bytes(8, "little").hex() + out0[32:]
    bad = _mutate(src, tmp_path / "drv.jsonl", {14: {"out": [stale_answer, *ans["out"][1:]]}})
    r = _results(bad)
    assert r["v3.device.req.param-is-req-id"][0] == "pass"
    verdict, msg = r["v3.driver.unused.req-id-echo"]
    assert verdict == "fail" and "stale" in msg
    assert _results(src)["v3.driver.unused.req-id-echo"][0] == "pass"
