"""stdio adapter against the example testee and deliberately broken testees."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import conform_doubles as d

from virtio_balloon_proto.conformance.adapters import open_device
from virtio_balloon_proto.conformance.dut import Setup, Unsupported
from virtio_balloon_proto.conformance.runner import Runner, load_case
from virtio_balloon_proto.conformance.stdio_adapter import StdioDevice
from virtio_balloon_proto.errors import PeerError, UsageError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = [sys.executable, str(ROOT / "examples" / "stdio_testee.py")]
FAULTY = [sys.executable, str(Path(__file__).parent / "conform_testees" / "faulty_testee.py")]


@pytest.fixture
def cases(tmp_path: Path):  # type: ignore[no-untyped-def]
    return [load_case(d.spec_trace(tmp_path / f"c{i}.jsonl"), f"c{i}") for i in range(2)]


def test_example_round_trip(cases) -> None:  # type: ignore[no-untyped-def]
    runner = Runner(StdioDevice(EXAMPLE), reference=d.DictDevice)
    try:
        results = [runner.run_case(c) for c in cases]
    finally:
        runner.close()
    assert [r.outcome() for r in results] == ["pass", "pass"]
    assert "spec.device.stats.records-values" in {r.clause for r in results[0].results}


def test_example_passes_against_real_reference(cases) -> None:  # type: ignore[no-untyped-def]
    runner = Runner(StdioDevice(EXAMPLE))
    try:
        res = runner.run_case(cases[0])
    finally:
        runner.close()
    assert res.outcome() == "pass", res.details_text()


def test_example_says_unsupported_for_v3() -> None:
    dev = StdioDevice(EXAMPLE)
    try:
        with pytest.raises(Unsupported):
            dev.start(Setup(profile="v3", driver_features=0))
        # the process survives an unsupported answer and serves the next case
        neg = dev.start(Setup(profile="spec", driver_features=1 << 32))
        assert neg.queues == {"inflate": 0, "deflate": 1}
    finally:
        dev.close()


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("crash", "exited with status 3"),
        ("hang", "hang"),
        ("garbage", "not UTF-8 JSON"),
        ("huge", "2147483648 bytes"),
    ],
)
def test_broken_testee_is_reported_and_run_continues(cases, mode: str, message: str) -> None:  # type: ignore[no-untyped-def]
    runner = Runner(StdioDevice([*FAULTY, mode], timeout=1.0), reference=d.DictDevice)
    t0 = time.monotonic()
    try:
        results = [runner.run_case(c) for c in cases]
    finally:
        runner.close()
    assert time.monotonic() - t0 < 10
    for res in results:  # every case ran; each is reported on its own
        assert res.outcome() == "fail"
        transport = [r for r in res.failures() if r.clause == "suite.device.transport"]
        assert transport, res.details_text()
        assert message in transport[0].message and "avail deflate" in transport[0].message
    if mode == "crash":
        assert "segmentation fault (simulated)" in results[0].failures()[-1].message


def test_exit_127_is_unsupported(cases) -> None:  # type: ignore[no-untyped-def]
    for mode in ("unsupported", "exit127-start"):
        runner = Runner(StdioDevice([*FAULTY, mode], timeout=2.0), reference=d.DictDevice)
        try:
            res = [runner.run_case(c) for c in cases]
        finally:
            runner.close()
        assert [r.outcome() for r in res] == ["unsupported", "unsupported"]


def test_wrong_id_through_stdio(cases) -> None:  # type: ignore[no-untyped-def]
    runner = Runner(StdioDevice([*FAULTY, "wrong-id"]), reference=d.DictDevice)
    try:
        res = runner.run_case(cases[0])
    finally:
        runner.close()
    assert "spec.device.used.id-is-head" in {r.clause for r in res.failures()}


def test_missing_command_is_usage_error() -> None:
    dev = open_device("stdio:/nonexistent/testee --x")
    with pytest.raises(UsageError, match="cannot start"):
        dev.start(Setup(profile="spec", driver_features=0))


@pytest.mark.parametrize(
    "spec", ["bogus", "python:nomodule", "python:json:Nope", "reference:x", "stdio:'unclosed"]
)
def test_bad_device_specs(spec: str) -> None:
    with pytest.raises(UsageError):
        open_device(spec)


def test_python_adapter_loads_file(tmp_path: Path, cases) -> None:  # type: ignore[no-untyped-def]
    dev = open_device(f"python:{Path(__file__).parent / 'conform_doubles.py'}:FaultyIgnoresDeflate")
    res = Runner(dev, reference=d.DictDevice).run_case(cases[0])
    assert "spec.device.deflate.pfn-4k-units" in {r.clause for r in res.failures()}


def test_peer_error_names_step() -> None:
    dev = StdioDevice([*FAULTY, "garbage"], timeout=1.0)
    try:
        dev.start(Setup(profile="spec", driver_features=1 << 32))
        with pytest.raises(PeerError) as ei:
            dev.avail("deflate", 5, [])
        assert ei.value.where == "avail deflate head 5"
    finally:
        dev.close()


def test_traffic_matches_published_schema(cases) -> None:  # type: ignore[no-untyped-def]
    import json

    import jsonschema

    schema = json.loads((ROOT / "conformance" / "stdio-protocol.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    dev = StdioDevice(EXAMPLE)
    dev.frame_log = []
    try:
        assert Runner(dev, reference=d.DictDevice).run_case(cases[0]).outcome() == "pass"
    finally:
        dev.close()
    methods = {f.get("method") for f in dev.frame_log}
    assert {
        "hello",
        "start",
        "avail",
        "config_write",
        "config_read",
        "host_request",
        "observe",
    } <= methods
    for frame in dev.frame_log:
        errors = list(validator.iter_errors(frame))
        assert not errors, (frame, errors[0].message)
    defs = schema["$defs"]
    observe = next(
        r
        for q, r in zip(dev.frame_log, dev.frame_log[1:], strict=False)
        if q.get("method") == "observe"
    )
    jsonschema.validate(observe["result"], {"$defs": defs, **defs["observe_result"]})
