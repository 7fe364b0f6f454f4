"""Regressions from the second spec audit (/work/wt/review2.md): false failures on what a capture
window did not see, on id-less captures, across a device reset inside a trace, and a false pass
of a too-short hint command id.  Each trace is a shipped corpus trace with events dropped or a
few events written by hand; each test also shows the real breakage still fails."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from virtio_balloon_proto.conformance.runner import check_trace
from virtio_balloon_proto.conformance.verdicts import CaseResult
from virtio_balloon_proto.profiles import QueueRole
from virtio_balloon_proto.trace import (
    AvailEvent,
    ConfigEvent,
    StatusEvent,
    TraceWindow,
    UsedEvent,
    read_trace,
    write_trace,
)

SPEC = Path(__file__).resolve().parent.parent / "conformance" / "traces" / "spec"
ALL = ("status", "features", "config", "host", "avail", "used", "driver-bytes", "device-bytes")
INF, DEF = QueueRole.INFLATE, QueueRole.DEFLATE


def failed(res: CaseResult) -> set[str]:
    return {r.clause for r in res.failures()}


def windowed(tmp: Path, src: str, captured: tuple[str, ...], drop: tuple[type, ...] = (),
             start: str = "reset") -> CaseResult:
    header, events = read_trace(SPEC / f"{src}.jsonl")
    kept = [e for e in events if not isinstance(e, drop)] if drop else list(events)
    path = tmp / f"{src}.jsonl"
    write_trace(path, dataclasses.replace(header, window=TraceWindow(start, "cut",  # type: ignore[arg-type]
                                                                     captured=captured)), kept)
    return check_trace(path)


def pfns(*p: int) -> bytes:
    return struct.pack(f"<{len(p)}I", *p)


def actual(n: int) -> ConfigEvent:
    return ConfigEvent(offset=4, data=n.to_bytes(4, "little"), write=True)


def hand_trace(tmp: Path, name: str, events: list[Any]) -> CaseResult:
    """A trace with the header and device initialization of spec/deflate-le."""
    header, evs = read_trace(SPEC / "deflate-le.jsonl")
    path = tmp / name
    write_trace(path, header, [*evs[:5], *events])
    return check_trace(path)


# --- what a window did not capture is never failed ---------------------------------------------
def test_a_window_without_used_elements_fails_no_ordering_rule(tmp_path: Path) -> None:
    """A capture that saw no used elements cannot tell an acknowledged inflate from one in
    flight, nor a used stats buffer from a held one (5.5.6.1 "MUST NOT request deflation of
    pages in the balloon before the device has acknowledged the inflate request"; 5.5.6.3.1
    "MUST make at most one buffer available to the device in the statsq, at all times")."""
    no_used = tuple(c for c in ALL if c != "used")
    for src in ("deflate-le", "must-tell-host-le"):
        res = windowed(tmp_path, src, no_used, drop=(UsedEvent,))
        assert "spec.driver.op.no-deflate-before-inflate-ack" not in failed(res), \
            res.details_text()
        assert any("no-deflate-before-inflate-ack not judged" in n for n in res.notes)
    res = windowed(tmp_path, "stats-le", no_used, drop=(UsedEvent,))
    assert "spec.driver.stats.one-buffer" not in failed(res), res.details_text()
    # with used elements captured, the driver that really posts a second buffer still fails
    res = windowed(tmp_path, "stats-second-buffer-le", ALL)
    assert "spec.driver.stats.one-buffer" in failed(res)


def test_a_window_without_avail_elements_fails_no_used_id(tmp_path: Path) -> None:
    no_avail = tuple(c for c in ALL if c not in ("avail", "driver-bytes"))
    res = windowed(tmp_path, "deflate-le", no_avail, drop=(AvailEvent,))
    assert "spec.device.used.id-is-head" not in failed(res), res.details_text()
    assert any("avail elements not captured" in n for n in res.notes)
    # the same trace claiming it saw every avail: the used ids name nothing -> fail
    res = windowed(tmp_path, "deflate-le", ALL, drop=(AvailEvent,))
    assert "spec.device.used.id-is-head" in failed(res)


# --- a capture without used ids: which chain was used is a guess -------------------------------
def test_out_of_order_use_in_a_capture_without_ids_fails_no_driver(tmp_path: Path) -> None:
    """Two inflates in flight; the device uses the second first (allowed: only IN_ORDER
    orders uses, 2.7.9); the driver then deflates the second's page.  With ids the trace
    passes; without ids the pairing by order blamed the driver."""
    def events(ids: bool) -> list[Any]:
        a, b, d = (0, 1, 0) if ids else (None, None, None)
        return [AvailEvent(INF, 0, (pfns(0x100),), id=a), AvailEvent(INF, 0, (pfns(0x200, 0x201),),
                                                                   id=b),
                UsedEvent(INF, 0, 0, id=b), actual(2),
                AvailEvent(DEF, 1, (pfns(0x200, 0x201),), id=d),
                UsedEvent(INF, 0, 0, id=a), UsedEvent(DEF, 1, 0, id=d), actual(1)]
    assert hand_trace(tmp_path, "ids.jsonl", events(True)).outcome() == "pass"
    res = hand_trace(tmp_path, "noids.jsonl", events(False))
    assert res.outcome() == "pass", res.details_text()
    assert any("without an id while several chains were outstanding" in n for n in res.notes)
    # no used element at all after the inflate: it is certainly unacknowledged -> still fails
    early = [AvailEvent(INF, 0, (pfns(0x100),)), AvailEvent(DEF, 1, (pfns(0x100),)),
             UsedEvent(INF, 0, 0), UsedEvent(DEF, 1, 0)]
    res = hand_trace(tmp_path, "early.jsonl", early)
    assert failed(res) == {"spec.driver.op.no-deflate-before-inflate-ack"}, res.details_text()


# --- a device reset inside a trace starts a new life -------------------------------------------
def test_a_device_reset_drops_what_was_in_flight(tmp_path: Path) -> None:
    """VIRTIO 1.2 2.4.1: "A device MUST NOT send notifications or interact with the queues after
    indicating completion of the reset by reinitializing device status to 0, until the driver
    re-initializes the device": a chain outstanding at a reset is never used, and the driver
    starts again from an empty balloon and a new initial stats buffer (real captures hold 19
    status writes of 0)."""
    header, evs = read_trace(SPEC / "stats-le.jsonl")
    life = list(evs)
    k = [n for n, e in enumerate(life) if isinstance(e, AvailEvent)][1] + 1
    path = tmp_path / "stats-reset.jsonl"
    write_trace(path, dataclasses.replace(header, window=TraceWindow("reset", "quiesced")),
                [*life[:k], StatusEvent(0), *life])
    res = check_trace(path)
    assert res.outcome() == "pass", res.details_text()
    assert any("dropped by a device reset" in n for n in res.notes)

    header, evs = read_trace(SPEC / "deflate-le.jsonl")
    init = list(evs[:5])
    one = [AvailEvent(INF, 0, (pfns(0x100, 0x101),), id=0), UsedEvent(INF, 0, 0, id=0), actual(2),
           AvailEvent(INF, 0, (pfns(0x102),), id=0)]  # in flight at the reset
    two = [StatusEvent(0), *init, AvailEvent(INF, 0, (pfns(0x200),), id=0),
           UsedEvent(INF, 0, 0, id=0), actual(1)]
    res = hand_trace(tmp_path, "actual-reset.jsonl", [*one, *two])
    assert res.outcome() == "pass", res.details_text()
    # the device using a chain from before the reset afterwards is its failure
    late = [*one, StatusEvent(0), *init, UsedEvent(INF, 0, 0, id=0)]
    res = hand_trace(tmp_path, "late.jsonl", late)
    assert "spec.device.used.id-is-head" in failed(res), res.details_text()


# --- a too-short hint command id: decode's error is the oracle's failure -----------------------
def test_a_two_byte_hint_command_id_fails_len_4(tmp_path: Path) -> None:
    """5.5.6.5.1 "The driver MUST use an output buffer size of 4 bytes for all output buffers
    submitted to the free_page_vq": the decoder refuses a 2-byte one naming the clause, and
    `conform check` passed it."""
    header, evs = read_trace(SPEC / "hint-le.jsonl")
    out: list[Any] = []
    done = False
    for e in evs:
        if not done and isinstance(e, AvailEvent) and e.role == QueueRole.FREE_PAGE:
            e = dataclasses.replace(e, out=(e.out[0][:2],), descriptors=None)  # type: ignore[index]
            done = True
        out.append(e)
    path = tmp_path / "hint-short.jsonl"
    write_trace(path, header, out)
    res = check_trace(path)
    assert "spec.driver.hint.len-4" in failed(res), res.details_text()
    dec = subprocess.run([sys.executable, "-m", "virtio_balloon_proto", "decode", "--json",
                          str(path)], capture_output=True, text=True, check=False)
    assert "spec.driver.hint.len-4" in dec.stdout
    assert json.loads(json.dumps(res.to_json()))["outcome"] == "fail"


# --- citations: the section numbers and quotes the catalog gives are the spec's ---------------
#: the sections of VIRTIO 1.2 cs01 (oasis-tcs/virtio-spec tag v1.2-cs01, numbered from the LaTeX:
#: \subparagraph right under a \subsubsection numbers as N.0.1) that citations here may name
V12_SECTIONS = frozenset("""
2 2.1 2.1.1 2.1.2 2.2 2.2.1 2.2.2 2.2.3 2.3 2.4 2.4.1 2.4.2 2.5 2.5.1 2.5.2 2.5.3 2.5.4 2.6
2.6.1 2.6.1.1 2.6.1.1.1 2.6.1.1.2 2.6.1.2 2.6.1.2.1 2.6.1.2.2 2.7 2.7.1 2.7.2 2.7.3 2.7.4
2.7.4.1 2.7.4.2 2.7.4.3 2.7.5 2.7.5.1 2.7.5.2 2.7.5.3 2.7.5.3.1 2.7.5.3.2 2.7.6 2.7.6.1
2.7.7 2.7.7.1 2.7.7.2 2.7.8 2.7.8.1 2.7.8.2 2.7.8.3 2.7.9 2.7.10 2.7.10.1 2.7.10.2 2.7.11
2.7.12 2.7.13 2.7.13.1 2.7.13.2 2.7.13.3 2.7.13.3.1 2.7.13.4 2.7.13.4.1 2.7.14 2.8 2.8.1
2.8.2 2.8.3 2.8.4 2.8.5 2.8.6 2.8.7 2.8.8 2.8.9 2.8.10 2.8.10.1 2.8.11 2.8.12 2.8.13 2.8.14
2.8.15 2.8.16 2.8.17 2.8.18 2.8.19 2.8.20 2.8.21 2.8.21.1 2.8.21.1.1 2.8.21.2 2.8.21.3
2.8.21.3.1 2.8.22 2.9 2.10 2.10.1 2.10.2 2.11 3 3.1 3.1.1 3.1.2 3.2 3.2.1 3.3 3.3.1 4.1.3
4.1.3.1 4.1.3.2 4.1.4.3 4.1.4.3.1 4.1.4.3.2 4.1.4.10 4.2.2 4.2.2.1 4.2.2.2 4.3.2 4.3.2.1 4.3.2.1.1
4.3.2.1.2 4.3.2.1.3 4.3.2.2 4.3.2.2.1 4.3.2.2.2 4.3.2.3 4.3.2.3.1 4.3.2.3.2 4.3.2.4 4.3.2.5
4.3.2.6 4.3.2.6.1 4.3.2.6.2 4.3.2.6.3 4.3.2.6.3.1 4.3.2.6.4 5.5 5.5.1 5.5.2 5.5.3 5.5.3.1
5.5.3.2 5.5.3.2.0.1 5.5.4 5.5.4.0.0.1 5.5.5 5.5.6 5.5.6.1 5.5.6.2 5.5.6.2.1 5.5.6.3
5.5.6.3.1 5.5.6.3.2 5.5.6.3.3 5.5.6.4 5.5.6.5 5.5.6.5.1 5.5.6.5.2 5.5.6.5.3 5.5.6.6
5.5.6.6.1 5.5.6.6.2 5.5.6.7 5.5.6.7.1 5.5.6.7.2 6 6.1 6.2 6.3
""".split())


def test_every_virtio_1_2_section_cited_exists() -> None:
    """'VIRTIO 1.2 5.5.3.2.1' (the legacy feature-bits text is the subparagraph 5.5.3.2.0.1)
    and '2.6.4.1' (1.1's number for 2.7.4.1) named sections 1.2 does not have."""
    import re

    root = SPEC.parent.parent.parent
    files = [root / "conformance" / "clauses.toml", root / "conformance" / "errata.toml",
             *sorted((root / "conformance" / "known-failures").glob("*.toml")),
             *sorted((root / "conformance" / "checks").glob("*.py")),
             *sorted((root / "docs").glob("*.md")), root / "README.md"]
    wrong = [(f.name, m) for f in files
             for m in re.findall(r"VIRTIO 1\.2 (\d+(?:\.\d+)*)", f.read_text())
             if m not in V12_SECTIONS]
    assert not wrong, wrong


def test_catalog_quotes_are_spec_text() -> None:
    from virtio_balloon_proto.conformance.catalog import catalog

    cat = catalog()

    def c(i: str):  # type: ignore[no-untyped-def]
        found = cat.find(i)
        assert found is not None, i
        return found

    # 2.7.8.1 is "Legacy Interface: The Virtqueue Used Ring"; the device MUSTs are 2.7.8.2
    assert c("spec.device.used.len-written").ref.startswith("VIRTIO 1.2 2.7.8.2")
    # "Number of pages we've actually got in balloon" is Linux's virtio_balloon.h comment
    for i in ("spec.device.config.actual-readback", "spec.driver.op.actual-is-balloon-size"):
        for text in (c(i).ref, c(i).text):
            assert "actually got" not in text or "Linux" in text, (i, text)
    # the legacy requirement is on transitional devices; the endian rule is 2.7.3 (2.4: reset)
    assert "transitional devices MUST support" in c(
        "spec.device.features.legacy-no-must-tell-host").text
    assert "2.7.3" in c("spec.device.pfns.endian").ref
    assert "2.4" not in c("spec.device.pfns.endian").ref
    # 5.5.6 step 4 is the acknowledgement (steps 2/3 are the driver's inflate/deflate)
    for i in ("spec.device.inflate.acks-buffer", "spec.device.deflate.acks-buffer"):
        assert "step 4" in c(i).ref and "acknowledges inflate and deflate requests" in c(i).text


def test_seed_citations_name_the_patch_that_holds_the_code() -> None:
    """shared/seed/virtio-balloon-v3-thread.txt: tell_host, set_page_bitmap and BALLOON_BMAP_*
    are in 4/7 (5/7 is mm's get_unused_pages); misc_handle_rq, send_unused_pages_info and
    init_vqs are in 7/7 (6/7 only defines the misc queue's structs and enums)."""
    from virtio_balloon_proto.conformance.catalog import catalog

    seed = (SPEC.parent.parent.parent.parent / "shared" / "seed" /
            "virtio-balloon-v3-thread.txt")
    patch_of: dict[str, str] = {}
    if seed.exists():  # the shared background; the table below was read from it
        part = "0/7"
        for line in seed.read_text().splitlines():
            if line.startswith("* [RESEND PATCH v3 kernel "):
                part = line.split("kernel ")[1].split("]")[0]
            for name in ("tell_host(struct", "set_page_bitmap(struct", "define BALLOON_BMAP_SIZE",
                         "misc_handle_rq(struct", "send_unused_pages_info(struct",
                         "init_vqs(struct", "get_unused_pages(unsigned"):
                if name in line and name not in patch_of:
                    patch_of[name] = part
        assert patch_of["tell_host(struct"] == patch_of["define BALLOON_BMAP_SIZE"] == "4/7"
        assert patch_of["misc_handle_rq(struct"] == patch_of["send_unused_pages_info(struct"] \
            == "7/7"
    for c in catalog():
        if not c.ref.startswith("seed"):
            continue
        for fn in ("tell_host", "set_page_bitmap", "BALLOON_BMAP_"):
            assert fn not in c.ref or "4/7" in c.ref, (c.id, c.ref)
        for fn in ("misc_handle_rq", "send_unused_pages_info", "init_vqs"):
            assert fn not in c.ref or "7/7" in c.ref, (c.id, c.ref)
        assert "set_bulk_pages" not in c.ref, (c.id, c.ref)  # no such function in the seed


def test_stale_unused_fields_of_the_seed_driver_are_not_a_must() -> None:
    """seed 4/7 tell_host: 'cmd, reserved and req_id are init to 0, unused here'; the seed's
    driver itself leaks flag = DONE and the last req_id into its next inflate (shared header).
    Fields the dialect calls unused cannot fail a driver at MUST."""
    res = check_trace(SPEC.parent / "v3" / "linux-v3-exact-le.jsonl")
    r = next(x for x in res.results if x.clause == "v3.driver.bmap.inflate-fields-zero")
    assert r.verdict.value == "non-strict" and "flag=1" in r.message


def test_used_len_of_a_guessed_pairing_is_not_judged(tmp_path: Path) -> None:
    """Two reporting chains of different sizes outstanding, used out of order with len = bytes
    (cloud-hypervisor's choice), in a capture without ids: pairing by order gave the 8 KiB len
    to the 4 KiB chain -> a false spec.device.used.len-written failure."""
    from virtio_balloon_proto.trace import TraceDescriptor

    header, evs = read_trace(SPEC / "report-le.jsonl")
    init = [e for e in evs if not isinstance(e, (AvailEvent, UsedEvent))][:5]
    rep = QueueRole.REPORTING

    def chain(addr: int, size: int, ids: bool, n: int) -> AvailEvent:
        return AvailEvent(rep, 3, (), (size,), id=n if ids else None,
                          descriptors=(TraceDescriptor(addr, size, 2, index=n),))

    def events(ids: bool) -> list[Any]:
        return [*init, chain(0x1000000, 4096, ids, 0), chain(0x2000000, 8192, ids, 1),
                UsedEvent(rep, 3, 8192, id=1 if ids else None),
                UsedEvent(rep, 3, 4096, id=0 if ids else None)]
    for ids in (True, False):
        path = tmp_path / f"rep-{ids}.jsonl"
        write_trace(path, header, events(ids))
        res = check_trace(path)
        assert "spec.device.used.len-written" not in failed(res), res.details_text()
