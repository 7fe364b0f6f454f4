"""The device fuzzer (conformance/fuzz/, `vbproto fuzz`): generated sequences judged by the one
oracle, shrunk and replayable.

The default run is a small fixed-seed fuzz (seconds): zero findings on the reference device,
and zoo devices found from scratch.  The self-check (10,000 sequences against the reference and
every allowed-choice device, every zoo device found over several seeds) is marked
``fuzz_selfcheck`` and runs only with VBPROTO_FUZZ_SELFCHECK=1 (docs/fuzzing-devices.md gives
the command and the measured numbers).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from virtio_balloon_proto.codecs import Segment
from virtio_balloon_proto.conformance.fuzz import Campaign, Env, GenOptions, Program, generate
from virtio_balloon_proto.conformance.fuzz.program import (
    Avail,
    ConfigRead,
    ConfigWrite,
    Host,
    to_case,
    to_trace,
)
from virtio_balloon_proto.conformance.fuzz.shrink import Budget, ddmin
from virtio_balloon_proto.conformance.runner import Runner, load_case
from virtio_balloon_proto.conformance.zoo.registry import ZOO, find
from virtio_balloon_proto.trace import write_trace

pytest_plugins = ["pytester"]
HERE = Path(__file__).resolve().parent
FUZZ = [sys.executable, "-m", "virtio_balloon_proto", "fuzz"]
SELFCHECK = pytest.mark.skipif(
    not os.environ.get("VBPROTO_FUZZ_SELFCHECK"),
    reason="fuzz self-check (minutes): set VBPROTO_FUZZ_SELFCHECK=1 (docs/fuzzing-devices.md)")
#: devices that make only choices the spec allows: they must give no finding (oracle false
#: alarms otherwise).  The zoo twins whose fix still breaks a clause on generated traffic are
#: left out, each with the reason (docs/fuzzing-devices.md)
NOT_ALLOWED_CHOICE = {
    # its "fix" is Firecracker 1.14, itself the next zoo bug (drops unknown tags >= 16)
    "firecracker-stats-rejects-tags-10-15":
        "twin Firecracker114StatsRejectsUnknownTag is zoo bug "
        "firecracker-stats-rejects-unknown-tag",
    # v52 reads each descriptor on its own and skips one whose length is not a multiple of 4:
    # a PFN cut across two descriptors is dropped (VIRTIO 1.2 2.6.4.1 'The device MUST NOT make
    # assumptions about the particular arrangement of descriptors')
    "cloud-hypervisor-dies-on-bad-inflate":
        "twin CloudHypervisor52SkipsBadInflate drops a PFN that straddles two descriptors",
}


def _own_code(cls: type) -> bool:
    """Does a zoo twin change anything of the reference device (a method of its own below
    ZooDevice)?  One without is the reference's code: the reference's run covers it."""
    from virtio_balloon_proto.conformance.zoo._base import ZooDevice

    return any(callable(v) and not k.startswith("__") for c in cls.__mro__
               if issubclass(c, ZooDevice) and c is not ZooDevice for k, v in vars(c).items())


CHOICE_DEVICES = ["reference"] + [
    f"python:{e.target('twin')}" for e in ZOO
    if e.id not in NOT_ALLOWED_CHOICE and _own_code(e.twin)
] + [f"python:{HERE / 'oracle_devices.py'}:{c}" for c in (
    "KnowsTags0To9", "SkipsMalformedPfns", "Config12", "Config16", "Config20",
    "ReportLenIsBytes", "OfferedNumbering", "NeedsResetOnBadReport", "StopsHintingAfterEcho")]
ALL_FEATURES = GenOptions().features
#: the features each choice device is fuzzed with (default: all).  ReportLenIsBytes is
#: cloud-hypervisor's choice and cloud-hypervisor offers no PAGE_POISON: with a non-zero
#: poison_val the reference code it builds on keeps reported pages, and a used len > 0 then
#: claims bytes it did not write (2.7.8.2) -- a defect of that combination, not of the oracle.
#: Config12 is Firecracker's 12-byte config space: allowed only without PAGE_POISON (poison_val
#: is at offset 12; VIRTIO 1.2 5.5.4 "poison_val is available if VIRTIO_BALLOON_F_PAGE_POISON
#: has been negotiated")
CHOICE_FEATURES = {"ReportLenIsBytes": ALL_FEATURES - {"PAGE_POISON"},
                   "Config12": ALL_FEATURES - {"PAGE_POISON"}}


def choice_options(device: str) -> GenOptions:
    return GenOptions(features=CHOICE_FEATURES.get(device.rsplit(":", 1)[-1], ALL_FEATURES))


def _env(**kw: object) -> Env:
    base: dict[str, object] = {"offered": frozenset(), "wanted": frozenset()}
    base.update(kw)
    return Env(**base)  # type: ignore[arg-type]


def _broken(device: str, program: Program) -> set[str]:
    c = Campaign(device)
    try:
        res = c.judge(program)
    finally:
        c.close()
    assert res.status is None, res.reason
    return set(c.broken(res))


# --- the generator ------------------------------------------------------------------------
def test_a_sequence_is_drawn_the_same_every_time() -> None:
    a, b = generate(GenOptions(), 7, 42), generate(GenOptions(), 7, 42)
    assert a == b and a.origin == "seed 7 sequence 42"
    assert generate(GenOptions(), 7, 43) != a
    # the same in another interpreter (string hashing differs per process)
    code = ("import json; from virtio_balloon_proto.conformance.fuzz import generate, "
            "GenOptions, to_trace; from virtio_balloon_proto.trace.events import event_to_json;"
            "h, evs = to_trace(generate(GenOptions(), 7, 42));"
            "print(json.dumps([h.to_json(), *map(event_to_json, evs)]))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": h}).stdout
            for h in ("1", "2")}
    assert len(outs) == 1


def test_generated_traffic_covers_what_the_issue_lists() -> None:
    shapes: set[str] = set()
    envs = set()
    for k in range(400):
        p = generate(GenOptions(), 0, k)
        shapes |= set(p.shape())
        envs.add((p.env.endian, p.env.modern, p.env.page_size, len(p.env.memory) > 1,
                  p.env.indirect))
    words = " ".join(sorted(shapes))
    for want in ("inflate:pfns", "deflate:pfns", "chained", "straddle", "oversized", "dup",
                 "outside-ram", "partial-word", "empty", "writable", "byte-swapped",
                 "partial-group", "stats:stats", "linux-6.12", "unknown-tag", "duplicate-tag",
                 "partial-entry", "free_page:cmd-id", "free_page:stale-id",
                 "free_page:replayed-id", "free_page:stop", "free_page:hint", "bad-len",
                 "reporting:report", "unaligned", "host:set-target", "host:stats-poll",
                 "host:hint-start", "host:hint-stop", "config-read@", "config-write:actual",
                 "config-write:actual-partial", "config-write:device-owned",
                 "config-write:poison"):
        assert want in words, want
    assert {e[0] for e in envs} == {"le", "be"}
    assert {e[1] for e in envs} == {True, False}
    assert {e[2] for e in envs} == {4096, 65536}
    assert {e[3] for e in envs} == {True, False} and {e[4] for e in envs} == {True, False}


def test_a_program_trace_replays_as_the_same_case(tmp_path: Path) -> None:
    p = generate(GenOptions(), 3, 5)
    header, events = to_trace(p)
    write_trace(tmp_path / "p.jsonl", header, events)
    mem, disk = to_case(p, "p"), load_case(tmp_path / "p.jsonl", "p")
    assert mem.setup == disk.setup
    assert [s.to_json() for s in mem.steps] == [s.to_json() for s in disk.steps]


def test_indirect_chains_are_recorded_as_one_table_descriptor() -> None:
    seg = (Segment(0x1066000, 8, False, bytes(8)), Segment(0x1066008, 4, False, bytes(4)))
    p = Program(_env(indirect=True), (Avail("inflate", seg, "pfns:chained", indirect=True),))
    _, events = to_trace(p)
    (ev,) = [e for e in events if type(e).__name__ == "AvailEvent"]
    assert ev.descriptors[0].flags == 4 and ev.descriptors[0].len == 32
    assert [d.table for d in ev.descriptors[1:]] == [ev.descriptors[0].addr] * 2


# --- shrinking ----------------------------------------------------------------------------
def test_ddmin_finds_the_one_minimal_pair() -> None:
    budget = Budget(1000)
    got = ddmin(list(range(40)), lambda xs: 3 in xs and 31 in xs, budget)
    assert got == [3, 31] and budget.left > 0


def test_a_zoo_bug_is_found_shrunk_and_replayed_by_the_cli(tmp_path: Path) -> None:
    e = find("firecracker-inflate-oversized-leak")
    device = f"python:{e.target()}"
    out = tmp_path / "out"
    r = subprocess.run([*FUZZ, "--device", device,
                        "--sequences", "60", "--seed", "3", "--out", str(out), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    f = next(f for f in doc["findings"] if f["clause"] == e.clause)
    assert f["ops"] == 1 and f["shape"] == ["inflate:pfns:oversized"]
    assert f["original_ops"] > f["ops"]
    disk = json.loads((out / "findings.json").read_text())
    assert disk["findings"] == doc["findings"]
    assert disk["partial"] is False and disk["exit_code"] == 1 == doc["exit_code"]
    argv = shlex.split(f["replay"])
    assert argv[:3] == ["vbproto", "conform", "run"]
    rep = subprocess.run([sys.executable, "-m", "virtio_balloon_proto", *argv[1:], "--json"],
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 1
    (case,) = json.loads(rep.stdout)["cases"]
    assert e.clause in {c["clause"] for c in case["clauses"] if c["verdict"] == "fail"}
    # the twin runs the same minimal trace clean
    twin = subprocess.run([sys.executable, "-m", "virtio_balloon_proto", "conform", "run",
                           "--device", f"python:{e.target('twin')}", "--corpus", f["trace"]],
                          capture_output=True, text=True, timeout=120)
    assert twin.returncode == 0, twin.stdout


def test_cli_bad_usage_is_one_line_exit_2(tmp_path: Path) -> None:
    r = subprocess.run([*FUZZ, "--features", "NOPE", "--json"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert "NOPE" in json.loads(r.stdout)["error"]
    from click.testing import CliRunner

    from virtio_balloon_proto.cli import main

    # an empty name is a usage error (QA: "" and ",,STATS_VQ," ran as if all were given)
    for text in ("", ",,STATS_VQ,", "STATS_VQ,"):
        r = CliRunner().invoke(main, ["fuzz", "--features", text, "--sequences", "1"])
        assert r.exit_code == 2 and r.output.count("\n") == 1 and "empty name" in r.output
    none = CliRunner().invoke(main, ["fuzz", "--features", "none", "--sequences", "3",
                                     "--json"])
    assert none.exit_code == 0 and json.loads(none.stdout)["steps"] > 0
    # --out that cannot be a directory: the error names the option, not a bare OSError
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing" / "dir")
    for bad in ("file", "dangling"):
        r = CliRunner().invoke(main, ["fuzz", "--sequences", "1", "--out",
                                      str(tmp_path / bad), "--json"])
        err = json.loads(r.stdout)
        assert r.exit_code == 2 and err["field"] == "out" and "--out" in err["error"]
    assert (tmp_path / "file").read_text() == "x" and not (tmp_path / "missing").exists()


def test_an_interrupted_run_says_partial_on_disk(tmp_path: Path) -> None:
    import signal
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([*FUZZ, "--device", DIES_ON_BAD_INFLATE, "--sequences", "100000",
                             "--out", str(out), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "findings.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        running = json.loads((out / "findings.json").read_text())
        assert running["partial"] is True and running["findings"]
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    disk = json.loads((out / "findings.json").read_text())
    assert disk["partial"] is True and disk["exit_code"] == 130
    assert json.loads(stdout)["exit_code"] == 130
    assert not list(out.glob("*.tmp*"))


def test_pytest_plugin_fuzzes_a_device(pytester: pytest.Pytester, tmp_path: Path) -> None:
    e = find("libkrun-ignores-config-writes")
    out = tmp_path / "found"
    bad = pytester.runpytest_subprocess(
        "--vbproto-device", f"python:{e.target()}", "--vbproto-case", "none",
        "--vbproto-fuzz", "20", "--vbproto-fuzz-out", str(out), "-p", "no:cacheprovider")
    bad.assert_outcomes(failed=1)
    bad.stdout.fnmatch_lines([f"*{e.clause}*", "*replay: vbproto conform run*"])
    assert any(out.glob(f"{e.clause}--*.jsonl"))
    good = pytester.runpytest_subprocess(
        "--vbproto-device", "reference", "--vbproto-case", "none", "--vbproto-fuzz", "20",
        "-p", "no:cacheprovider")
    good.assert_outcomes(passed=1)
    # usage errors are one line (QA: -1 skipped with a wrong reason, a bogus device was a
    # 61-line INTERNALERROR)
    for args, word in ((("--vbproto-device", "reference", "--vbproto-fuzz=-1"), "-1"),
                       (("--vbproto-device", "bogus", "--vbproto-fuzz", "5"), "bogus")):
        r = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider")
        assert r.ret == pytest.ExitCode.USAGE_ERROR
        errors = [line for line in r.errlines if line.strip()]
        assert len(errors) == 1 and word in errors[0], r.errlines
        assert "INTERNALERROR" not in r.stdout.str() + r.stderr.str()


# --- one root cause, one finding -------------------------------------------------------------
DIES_ON_BAD_INFLATE = f"python:{find('cloud-hypervisor-dies-on-bad-inflate').target()}"


def _pfns(*frames: int) -> bytes:
    return b"".join(f.to_bytes(4, "little") for f in frames)


def test_a_shape_is_read_from_the_bytes_not_from_the_generators_label() -> None:
    from virtio_balloon_proto.conformance.fuzz.shape import covers, op_shape

    env = _env(memory=((0, 64 << 20),))
    # labelled dup + chained by the generator, but shrunk to one in-RAM PFN in one descriptor
    one = Avail("inflate", (Segment(0x1066000, 4, False, _pfns(0x2000)),), "pfns:chained:dup")
    assert op_shape(one, env) == "inflate:pfns"
    cut = Avail("deflate", (Segment(0x1066000, 6, False, _pfns(0x2000, 0x2000)[:6]),
                            Segment(0x1066006, 2, False, _pfns(0x2000, 0x2000)[6:]),
                            Segment.into(0x1066800, 16)), "pfns")
    assert op_shape(cut, env) == "deflate:pfns:dup:straddle:writable"
    far = Avail("inflate", (Segment(0x1066000, 4, False, _pfns(0x100000)),), "pfns")
    assert op_shape(far, env) == "inflate:pfns:outside-ram"
    assert covers(("inflate:pfns",), ("host:set-target", "inflate:pfns:dup"))
    assert not covers(("inflate:pfns:outside-ram",), ("inflate:pfns:dup",))


def test_what_fails_after_the_first_failing_prefix_is_a_consequence() -> None:
    stats = frozenset({"STATS_VQ"})
    entry = (0).to_bytes(2, "little") + (7).to_bytes(8, "little")
    ops = (Avail("stats", (Segment(0x1067000, 10, False, entry),), "stats"),
           Avail("inflate", (Segment(0x1066000, 4, False, _pfns(0x2000)),), "pfns"),
           Avail("inflate", (Segment(0x1066000, 6, False, _pfns(0x2001, 0)[:6]),),
                 "pfns:partial-word"),
           Avail("stats", (Segment(0x1067000, 10, False, entry),), "stats"),
           Avail("deflate", (Segment(0x1066000, 4, False, _pfns(0x2000)),), "pfns"))
    p = Program(_env(offered=stats, wanted=stats), ops)
    c = Campaign(DIES_ON_BAD_INFLATE)
    try:
        res = c.judge(p)
        everything = set(c.broken(res))
        # the stats buffer held from before is never returned when a second one supersedes
        # it: its clause names an *earlier* step than the bad inflate, yet it is a
        # consequence of the device's death
        assert {"spec.device.stats.returns-superseded", "spec.device.deflate.acks-buffer",
                "spec.device.malformed.acks-buffer"} <= everything
        prefix, pres = c.first_failing_prefix(p, res)
        assert prefix.ops == ops[:3]
        assert set(c.broken(pres)) == {"spec.device.malformed.acks-buffer"}
        assert c.stops_answering(prefix)
        assert not c.stops_answering(p.with_ops(ops[:2]))
        c.one_program(p, 0)
    finally:
        c.close()
    (f,) = c.findings.values()
    assert f.clause == "spec.device.malformed.acks-buffer" and f.stops_answering
    assert f.shape == ("inflate:pfns:partial-word",) and len(f.program.ops) == 1
    assert {"spec.device.stats.returns-superseded": 1, "spec.device.deflate.acks-buffer": 1} \
        == f.consequences


def test_a_device_that_dies_is_one_finding_whatever_killed_it() -> None:
    """QA: 54 sequences against the cloud-hypervisor <= v51 model gave 41 findings (one per
    clause and shape of everything left unacknowledged after the device died)."""
    c = Campaign(DIES_ON_BAD_INFLATE, seed=0, shrink_budget=150)
    try:
        c.run(sequences=54)
    finally:
        c.close()
    (f,) = c.findings.values()
    assert f.stops_answering and f.hits > 10
    clauses = {c for c, _ in f.triggers}
    assert {"spec.device.inflate.acks-buffer", "spec.device.deflate.acks-buffer"} <= clauses
    ops = {op for _, op in f.triggers}
    assert any("outside-ram" in op for op in ops) and any("partial-word" in op for op in ops)
    doc = f.to_json()
    assert doc["stops_answering"] and doc["consequences"] and len(doc["triggers"]) == len(ops)


def test_a_device_that_answers_wrongly_but_lives_is_not_merged() -> None:
    # firecracker-inflate-head-only keeps answering: each (clause, shape) stays its own
    e = find("firecracker-inflate-head-only")
    c = Campaign(f"python:{e.target()}", seed=0, shrink_budget=150)
    try:
        c.run(sequences=30)
    finally:
        c.close()
    assert c.findings and not any(f.stops_answering for f in c.findings.values())
    assert {f.clause for f in c.findings.values()} == {e.clause}


def test_a_host_that_cannot_start_a_second_hint_round_keeps_the_first() -> None:
    """QEMU can publish one command id per migration and DONE, not STOP: the campaign narrows
    to one round per sequence ending in DONE, and keeps fuzzing hinting (session 3 dropped
    every host start and stop)."""
    hint = frozenset({"FREE_PAGE_HINT"})
    c = Campaign(f"python:{HERE / 'oracle_devices.py'}:OneHintRoundDoneOnly", seed=3,
                 options=GenOptions(features=hint))
    try:
        c.run(sequences=50)
    finally:
        c.close()
    assert {"host:hint-start:again", "host:hint-stop:stop"} <= c.disabled_kinds
    assert "host:hint-start" not in c.disabled_kinds and c.options.hinting
    assert not c.findings, [f.to_json() for f in c.findings.values()]
    later = [c.program(k) for k in range(50, 110)]
    starts = [sum(isinstance(o, Host) and o.kind == "hint-start" for o in p.ops) for p in later]
    assert max(starts) == 1 and sum(starts) > 10
    assert any(isinstance(o, Host) and o.kind == "hint-stop" for p in later for o in p.ops)
    assert all(dict(o.params)["cmd_id"] == 1 for p in later for o in p.ops
               if isinstance(o, Host) and o.kind == "hint-stop")


def test_a_kind_the_device_runs_is_never_narrowed_away() -> None:
    """The 7.2 mmio campaign dropped every inflate and deflate after three sequences named a
    PFN in the QEMU adapter's ring window (right above RAM on microvm): unsupported data, not
    an unsupported kind."""
    c = Campaign(f"python:{HERE / 'oracle_devices.py'}:RefusesPfnsAboveRam", seed=1,
                 options=GenOptions(features=frozenset(), legacy=False, high_ram=False,
                                    large_pages=False))
    try:
        c.run(sequences=80)
    finally:
        c.close()
    assert c.stats.unsupported >= 3, c.stats
    assert not {"avail:inflate", "avail:deflate"} & c.disabled_kinds, c.stats.narrowed
    assert not c.findings


def test_a_big_endian_only_device_narrows_to_big_endian_guests() -> None:
    """The ppc64 campaign (QEMU 7.2's legacy device on pseries) narrowed away RAM regions,
    legacy drivers and 64 KiB pages on 'endian=le asked' and then ran 129,524 sequences, every
    one unsupported."""
    c = Campaign(f"python:{HERE / 'oracle_devices.py'}:BigEndianLegacyOnly", seed=0)
    try:
        st = c.run(sequences=40)
    finally:
        c.close()
    assert c.options.big_endian_only and c.options.legacy, st.narrowed
    assert st.unsupported < 10 and st.steps > 100, st
    assert all(c.program(k).env.endian == "be" for k in range(40, 60))


def test_a_finding_at_bring_up_does_not_swallow_later_ones() -> None:
    """The ppc64 campaign: QEMU could not start with 128 MiB (a finding with no operation);
    the empty shape is contained in every sequence, so every later suite.device.transport
    (a zero-length descriptor) was counted as its hit."""
    from virtio_balloon_proto.conformance.fuzz.campaign import Broken, Finding

    c = Campaign("reference")
    try:
        empty = Program(_env(), ())
        c.findings[("suite.device.transport", ())] = Finding(
            "suite.device.transport", "MUST", "start failed", (), empty, 0, 0, 0.0)
        one = Program(_env(), (Avail("inflate", (Segment(0x1066000, 0, False, b""),),
                                     "pfns:empty"),))
        later: list[Broken] = []
        assert not c._hit(one, "suite.device.transport", later)
        assert c._hit(empty, "suite.device.transport", later)
    finally:
        c.close()


# --- the default run: seconds, fixed seed ---------------------------------------------------
def test_reference_gives_no_finding_on_a_fixed_seed() -> None:
    c = Campaign("reference", seed=2026)
    try:
        st = c.run(sequences=150)
    finally:
        c.close()
    assert st.errors == 0 and st.unsupported == 0, st.error_messages
    assert not c.findings, [f.to_json() for f in c.findings.values()]
    assert st.steps > 1000


@pytest.mark.parametrize("entry", ["qemu-stats-second-buffer-lost", "qemu-pfn-sign-extension",
                                   "firecracker-inflate-head-only",
                                   "cloud-hypervisor-dies-on-bad-report",
                                   "libkrun-ignores-config-writes"])
def test_zoo_devices_are_found_from_scratch(entry: str) -> None:
    e = find(entry)
    c = Campaign(f"python:{e.target()}", seed=2026, shrink_budget=150)
    try:
        c.run(sequences=400, stop_when=lambda c: any(e.clause in f.clauses()
                                                     for f in c.findings.values()))
    finally:
        c.close()
    assert any(e.clause in f.clauses() for f in c.findings.values()), c.stats


# --- oracle and reference fixes the fuzzer found --------------------------------------------
def test_a_partial_write_of_actual_leaves_it_unjudged_until_a_whole_write() -> None:
    ops = (ConfigWrite(4, (288).to_bytes(4, "little")),
           ConfigWrite(6, b"\xff\xff", "actual-partial"), ConfigRead(4, 4))
    p = Program(_env(), ops)
    assert "spec.device.config.actual-readback" not in _broken("reference", p)
    # a whole write makes it judged again: a device that drops config writes still fails
    p2 = p.with_ops((*ops, ConfigWrite(4, (5).to_bytes(4, "little")), ConfigRead(4, 4)))
    assert "spec.device.config.actual-readback" not in _broken("reference", p2)
    krun = f"python:{find('libkrun-ignores-config-writes').target()}"
    assert "spec.device.config.actual-readback" in _broken(krun, p2)


def test_a_new_hint_request_during_a_round_ignores_hints_under_the_old_id() -> None:
    env = _env(offered=frozenset({"FREE_PAGE_HINT"}), wanted=frozenset({"FREE_PAGE_HINT"}))
    a, b = 0x80000000, 0x80000001
    ops = (Host("hint-start", (("cmd_id", a),)),
           Avail("free_page", (Segment(0x106B000, 4, False, a.to_bytes(4, "little")),),
                 "cmd-id"),
           Host("hint-start", (("cmd_id", b),)),
           Avail("free_page", (Segment.into(0x2000000, 4096),), "hint"))
    runner = Runner("reference")
    try:
        res = runner.run_case(to_case(Program(env, ops)))
    finally:
        runner.close()
    assert res.outcome() == "pass", res.details_text()


def test_poison_only_judges_a_discard_against_the_poison_val_of_its_time() -> None:
    both = frozenset({"PAGE_POISON", "PAGE_REPORTING"})
    report = Avail("reporting", (Segment.into(0x2000000, 4096),), "report")
    poison = ConfigWrite(12, (0xE2409128).to_bytes(4, "little"), "poison")
    # discarded while poison_val was still 0, written afterwards: no modification to judge
    assert "spec.device.reporting.poison-only" not in _broken(
        "reference", Program(_env(offered=both, wanted=both), (report, poison)))
    # discarded after a non-zero poison_val: the device broke the MUST
    faulty = f"python:{HERE / 'faulty_devices.py'}:DiscardsPoisonedReports"
    assert "spec.device.reporting.poison-only" in _broken(
        faulty, Program(_env(offered=both, wanted=both), (poison, report)))


def test_pfns_of_a_chain_with_a_writable_descriptor_may_be_skipped() -> None:
    pfns = b"".join((0x3000 + i).to_bytes(4, "little") for i in range(4))
    chain = (Segment(0x1066000, 16, False, pfns), Segment.into(0x1066800, 16))
    p = Program(_env(), (Avail("inflate", chain, "pfns:writable"),))
    for device, choice in (("reference", "kept whole words"), (
            f"python:{HERE / 'oracle_devices.py'}:SkipsMalformedPfns", "skipped")):
        runner = Runner(device)
        try:
            res = runner.run_case(to_case(p))
        finally:
            runner.close()
        assert res.outcome() == "pass", res.details_text()
        assert res.behaviour["pfns.malformed-buffer"] == [choice]


def test_what_fails_after_an_allowed_error_state_is_not_the_devices_failure() -> None:
    rep = frozenset({"PAGE_REPORTING"})
    outside = Avail("reporting", (Segment.into(1 << 30, 4096),), "report:outside-ram")
    inside = Avail("reporting", (Segment.into(0x2000000, 4096),), "report")
    device = f"python:{HERE / 'oracle_devices.py'}:NeedsResetOnBadReport"
    c = Campaign(device)
    try:
        res = c.judge(Program(_env(offered=rep, wanted=rep), (outside, inside)))
        assert res.outcome() == "pass", res.details_text()
        assert any("not judged: the device entered an error state" in n for n in res.notes)
    finally:
        c.close()
    # nor when the buffer the replay could not post carries unknown stats tags (found by
    # the fuzzer: NeedsResetOnBadReport, seed 5 sequence 81, was
    # spec.device.stats.ignores-unknown-tag)
    both = frozenset({"PAGE_REPORTING", "STATS_VQ"})
    tags = (12).to_bytes(2, "little") + (7).to_bytes(8, "little")
    tagged = Avail("stats", (Segment(0x1067000, 10, False, tags),), "stats:unknown-tag")
    c = Campaign(device)
    try:
        res = c.judge(Program(_env(offered=both, wanted=both), (outside, tagged)))
        assert res.outcome() == "pass", res.details_text()
    finally:
        c.close()
    # a device failing with no error state before it is judged as ever
    stats = frozenset({"STATS_VQ"})
    entry = (12).to_bytes(2, "little") + (7).to_bytes(8, "little")
    dies = f"python:{HERE / 'oracle_devices.py'}:DiesOnUnknownTags"
    assert "suite.device.transport" in _broken(dies, Program(
        _env(offered=stats, wanted=stats),
        (Avail("stats", (Segment(0x1067000, 10, False, entry),), "stats:linux-6.12"),)))


# --- the self-check (minutes; not in CI) ------------------------------------------------------
@SELFCHECK
@pytest.mark.fuzz_selfcheck
@pytest.mark.parametrize("device", CHOICE_DEVICES)
def test_selfcheck_no_finding_in_10000_sequences(device: str) -> None:
    c = Campaign(device, seed=1, options=choice_options(device))
    try:
        st = c.run(sequences=10_000)
    finally:
        c.close()
    assert st.errors == 0, st.error_messages
    assert not c.findings, [f.to_json() for f in c.findings.values()]


@SELFCHECK
@pytest.mark.fuzz_selfcheck
@pytest.mark.parametrize("entry", [e.id for e in ZOO])
def test_selfcheck_every_zoo_device_found_within_budget(entry: str) -> None:
    e = find(entry)
    for seed in range(5):
        c = Campaign(f"python:{e.target()}", seed=seed, shrink_budget=150)
        try:
            c.run(sequences=2000, stop_when=lambda c: any(e.clause in f.clauses()
                                                          for f in c.findings.values()))
        finally:
            c.close()
        assert any(e.clause in f.clauses() for f in c.findings.values()), (seed, c.stats)
