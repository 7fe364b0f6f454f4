"""Spec audit (review.md item 1): free_page_hint_cmd_id belongs to the device, which may change
it on its own at any time (VIRTIO 1.2 5.5.6.5 "A round of hinting ends ... when the device
updates free_page_hint_cmd_id configuration field to contain either VIRTIO_BALLOON_CMD_ID_STOP
or VIRTIO_BALLOON_CMD_ID_DONE"; 5.5.6.5.2 "SHOULD set ... STOP any time that it will not be
able to make use of the hints").  A device that does so is conforming; one that then still takes
pages hinted under the old id breaks 5.5.6.5.2 "MUST ignore pages that are provided with a
command ID that does not match the current value in free_page_hint_cmd_id"."""

from __future__ import annotations

import json
from pathlib import Path

from virtio_balloon_proto.conformance.runner import Runner, check_trace, discover_cases

HERE = Path(__file__).resolve().parent
SPEC = HERE.parent / "conformance" / "traces" / "spec"


def _failed(res) -> set[str]:  # type: ignore[no-untyped-def]
    return {r.clause for r in res.failures()}


def test_device_set_stop_after_echo_is_a_choice_not_a_failure(tmp_path: Path) -> None:
    lines = (SPEC / "hint-le.jsonl").read_text().splitlines()
    echo_used = next(n for n, ln in enumerate(lines) if json.loads(ln)["type"] == "used")
    stop = next(n for n, ln in enumerate(lines) if '"out":["00000000"]' in ln)
    # the device reads STOP right after the driver's echo; the driver then completes with STOP
    cut = [*lines[:echo_used + 1], '{"type":"config_read","offset":8,"data":"00000000"}',
           *lines[stop:stop + 2]]
    p = tmp_path / "device-stop.jsonl"
    p.write_text("\n".join(cut) + "\n")
    res = check_trace(p)
    assert res.outcome() == "pass", res.details_text()
    assert "suite.device.hint.cmd-id-readback" in {r.clause for r in res.results}
    choice = "changes free_page_hint_cmd_id on its own (to STOP)"
    assert list(res.behaviour["hint.cmd-id"]) == [choice]
    assert any("reads 0x0 (STOP)" in n for n in res.notes), res.notes


def test_byte_swapped_cmd_id_still_fails_little_endian(tmp_path: Path) -> None:
    lines = (SPEC / "hint-le.jsonl").read_text().splitlines()
    n = next(i for i, ln in enumerate(lines) if '"type":"config_read"' in ln)
    lines[n] = '{"type":"config_read","offset":8,"data":"80000000"}'  # 0x80000000 swapped
    p = tmp_path / "swapped.jsonl"
    p.write_text("\n".join(lines) + "\n")
    assert "spec.device.config.little-endian" in _failed(check_trace(p))


def _run(device: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    (case,) = discover_cases(SPEC.parent, case_globs=["spec/hint-le"])
    runner = Runner(f"python:{HERE / 'oracle_devices.py'}:{device}", save_traces=tmp_path)
    try:
        return runner.run_case(case)
    finally:
        runner.close()


def test_live_device_that_stops_after_echo_passes(tmp_path: Path) -> None:
    live = _run("StopsHintingAfterEcho", tmp_path)
    assert live.outcome() == "pass", live.details_text()
    assert "spec.device.hint.ignore-stale-cmd-id" in {r.clause for r in live.results}
    saved = check_trace(tmp_path / "spec" / "hint-le.jsonl", subject="device")
    assert saved.outcome() == "pass", saved.details_text()


def test_live_device_that_takes_hints_after_its_stop_fails_ignore_stale(tmp_path: Path) -> None:
    live = _run("TakesHintsAfterStop", tmp_path)
    assert _failed(live) == {"spec.device.hint.ignore-stale-cmd-id"}, live.details_text()
    saved = check_trace(tmp_path / "spec" / "hint-le.jsonl", subject="device")
    assert _failed(saved) == {"spec.device.hint.ignore-stale-cmd-id"}, saved.details_text()


def test_config_little_endian_cites_the_real_sentence() -> None:
    from virtio_balloon_proto.conformance.catalog import catalog

    c = catalog().get("spec.device.config.little-endian")
    # VIRTIO 1.2 5.5.4, subparagraph "Legacy Interface: Device configuration layout" (there is
    # no section 5.5.4.1); the normative subject is "transitional devices and drivers"
    assert "5.5.4.1" not in (c.ref or "")
    assert c.text.startswith("When using the legacy interface, transitional devices and drivers "
                             "MUST format the fields in struct virtio_balloon_config")


def test_descriptor_outside_ram_is_not_judged_with_access_platform() -> None:
    """VIRTIO 1.2 6.1: only "If VIRTIO_F_ACCESS_PLATFORM is not offered, then a driver MUST pass
    only physical addresses to the device"; with it, addr is a bus address (an IOVA such as
    intel-iommu's 0xfffff000 lies outside guest RAM) -- review.md item 2a."""
    from virtio_balloon_proto.profiles import QueueRole
    from virtio_balloon_proto.trace import AvailEvent, TraceDescriptor, TraceHeader
    from virtio_balloon_proto.trace.lengths import absurd_lengths

    iova = AvailEvent(QueueRole.INFLATE, 0, (None,),
                      descriptors=(TraceDescriptor(0xFFFFF000, 4, 0),), id=5)
    plain = TraceHeader.for_features("spec", (1 << 32) | 2, (1 << 32) | 2,
                                     memory=((0, 128 << 20),))
    assert [f.rule for f in absurd_lengths(plain, iova)] == ["spec.driver.ring.addr-in-memory"]
    iommu = TraceHeader.for_features("spec", (3 << 32) | 2, (3 << 32) | 2,
                                     memory=((0, 128 << 20),))
    assert absurd_lengths(iommu, iova) == []
