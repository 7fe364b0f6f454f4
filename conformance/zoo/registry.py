"""The regression zoo: published balloon bugs, each as a device, its fixed twin, its source, the
clause that must catch it and the corpus traffic that triggers it.

Every device is importable for the adapters as ``python:<module>:<Class>`` and, through the
testee server, ``stdio:python -m virtio_balloon_proto.conformance.testee <module>:<Class>``
(:meth:`ZooEntry.target`).  tests/test_zoo.py runs every entry through both adapters: the
device must fail ``clause`` (and break no MUST outside ``clause`` and ``also``), the twin must
pass with no finding.  ``awaits`` / ``twin_awaits`` name the piece of the judgement a side still
waits for (the entry is listed and documented; that side's test waits with it).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import cloud_hypervisor as ch
from . import firecracker as fc
from . import libkrun as krun
from . import qemu
from ._base import ZooDevice


@dataclass(frozen=True)
class ZooEntry:
    id: str
    project: str
    bug: str  # what the device does wrong, on the wire
    source: str  # commit / issue / code location that shows the bug and its fix
    fixed_in: str  # first release with the fix ("not fixed at <commit>" if none)
    clause: str  # the clause the judgement must fail the device on
    cases: tuple[str, ...]  # corpus case ids (under conformance/traces) whose traffic shows it
    device: type[ZooDevice]
    twin: type[ZooDevice]
    #: other clauses the same defect also breaks (allowed in the device's verdict)
    also: tuple[str, ...] = ()
    #: the judgement's missing piece the device's verdict waits for (zoo-needs.md); None when
    #: the device is caught now
    awaits: str | None = None
    #: the same for the twin's pass (a fix that makes a choice the spec allows)
    twin_awaits: str | None = None
    #: (behaviour-profile key, value) the twin's report must name: the allowed choice its fix
    #: makes, where it makes one
    twin_choice: tuple[str, str] | None = None

    def target(self, which: str = "device") -> str:
        cls = self.device if which == "device" else self.twin
        return f"{cls.__module__}:{cls.__name__}"


USED_LEN = "spec.device.used.len-written"

ZOO: tuple[ZooEntry, ...] = (
    ZooEntry(
        "qemu-stats-second-buffer-lost", "QEMU",
        "a second stats buffer overwrites the one held: the first is never used",
        "qemu 4eae2a657d 'balloon: fix segfault and harden the stats queue' (2016-03-01)",
        "QEMU 2.6.0", "spec.device.stats.returns-superseded",
        ("spec/stats-second-buffer-le", "spec/stats-second-buffer-be"),
        qemu.QemuStatsSecondBufferLost, qemu.QemuStatsSecondBufferReturned),
    ZooEntry(
        "qemu-used-len-bytes-read", "QEMU",
        "used len = bytes read (inflate/deflate PFNs, stats entries) and 1 on free_page_vq",
        "qemu d3f1f940eb 'virtio-balloon: correct used length' (2021-11-29)",
        "QEMU 6.2.0", USED_LEN,
        ("spec/inflate-le", "spec/stats-le", "spec/hint-le"),
        qemu.QemuUsedLenBytesRead, qemu.QemuUsedLenZero),
    ZooEntry(
        "qemu-hint-replayed-id-restarts", "QEMU",
        "a replayed old command id after STOP restarts hinting; the stale hints are taken",
        "qemu 20a4da0f23 'virtio-balloon: Prevent guest from starting a report when we "
        "didn't request one' (2020-07-20)",
        "QEMU 5.1.0", "spec.device.hint.ignore-stale-cmd-id",
        ("spec/hint-replayed-id-le", "spec/hint-replayed-id-be"),
        qemu.QemuHintReplayedIdRestarts, qemu.QemuHintStartsOnlyFromRequested),
    ZooEntry(
        "qemu-host-page-bitmap-set", "QEMU",
        "64 KiB host pages: inflating a host page's first 4 KiB page discards all 16",
        "qemu 483f13524b 'virtio-balloon: Fix QEMU crashes on pagesize > BALLOON_PAGE_SIZE' "
        "(2019-07-22)",
        "QEMU 4.1.0", "spec.device.inflate.pfn-4k-units",
        ("spec/inflate-host-64k-le",),
        qemu.Qemu40HostPageBitmapSet, qemu.Qemu41HostPageSetBit),
    ZooEntry(
        "qemu-pfn-sign-extension", "QEMU",
        "PFNs with bit 31 set (RAM at or above 8 TiB) are sign-extended and skipped",
        "qemu ffa207d082 'virtio-balloon: Fix wrong sign extension of PFNs' (2019-07-22)",
        "QEMU 4.1.0", "spec.device.inflate.pfn-4k-units",
        ("spec/inflate-high-ram-le",),
        qemu.QemuPfnSignExtension, qemu.QemuPfnUnsigned),
    ZooEntry(
        "qemu-stats-query-assert", "QEMU",
        "reading the guest stats asserts on a NULL stat name (tags 10-15): QEMU aborts",
        "qemu bff1050a56 'hw/virtio: fix crash in processing balloon stats' (2024-11-29), "
        "RHBZ 2329448",
        "QEMU 9.2.0 (broken in 9.2.0-rc1)", "suite.device.transport",
        ("spec/stats-le",),
        qemu.Qemu92rc1StatsQueryAssert, qemu.Qemu92StatsQueryNamed),
    ZooEntry(
        "firecracker-stats-rejects-tags-10-15", "Firecracker",
        "a stats buffer with Linux 6.12's tags 10-15 is dropped (never used), stats lost",
        "firecracker 5a3419f 'feat: support linux v6.12 balloon stat' (PR #5516)",
        "Firecracker v1.14.0", "spec.device.stats.ignores-unknown-tag",
        # spec/stats-linux-6.12-*: every buffer has tags 10-15, so a dropped one may be a device
        # that never asks (5.5.6.3): only a note there; this traffic shows the contrast
        ("spec/stats-new-tags-linux-6.12-le",),
        fc.Firecracker113StatsRejectsTags10To15, fc.Firecracker114StatsRejectsUnknownTag),
    ZooEntry(
        "firecracker-stats-rejects-unknown-tag", "Firecracker",
        "a stats buffer with a tag outside 0-15 (crosvm's 65534/65535) is dropped",
        "firecracker ff0e866 'feat(balloon): add logging for malformed balloon-stats tag'",
        "Firecracker v1.15.0", "spec.device.stats.ignores-unknown-tag",
        ("spec/stats-new-tags-crosvm-le",),
        fc.Firecracker114StatsRejectsUnknownTag, fc.Firecracker115StatsSkipsUnknownTag),
    ZooEntry(
        "firecracker-inflate-oversized-leak", "Firecracker",
        "an inflate descriptor over 1,024 bytes is skipped and never used (buffer leak)",
        "firecracker src/vmm/src/devices/virtio/balloon/device.rs process_inflate() "
        "'continue' before add_used, at 81b38b9 (2026-08-21)",
        "not fixed at 81b38b9", "spec.device.inflate.acks-buffer",
        ("spec/inflate-big-buffer-le",),
        fc.FirecrackerInflateOversizedLeak, fc.FirecrackerInflateOversizedUsed),
    ZooEntry(
        "firecracker-inflate-head-only", "Firecracker",
        "only the first descriptor of an inflate chain is read; chained PFNs are dropped",
        "firecracker src/vmm/src/devices/virtio/balloon/device.rs process_inflate() reads "
        "head.len at head.addr, at 81b38b9 (2026-08-21)",
        "not fixed at 81b38b9", "spec.device.inflate.pfn-4k-units",
        ("spec/inflate-chained-le", "spec/inflate-chained-be"),
        fc.FirecrackerInflateHeadOnly, fc.FirecrackerInflateWholeChain),
    ZooEntry(
        "cloud-hypervisor-used-len-desc-len", "Cloud Hypervisor",
        "inflate/deflate used len = the PFN descriptor's length",
        "cloud-hypervisor ff78eb8 'virtio-devices: balloon: Report used length of 0 for "
        "inflate/deflate'",
        "Cloud Hypervisor v52.0", USED_LEN,
        ("spec/inflate-le", "spec/deflate-le"),
        ch.CloudHypervisor51UsedLenDescLen, ch.CloudHypervisor52UsedLenZero),
    ZooEntry(
        "cloud-hypervisor-first-descriptor-only", "Cloud Hypervisor",
        "only the first descriptor of an inflate/deflate chain is read",
        "cloud-hypervisor 52db3f8 'virtio-devices: balloon: Process all inflate/deflate "
        "descriptors'",
        "Cloud Hypervisor v52.0", "spec.device.inflate.pfn-4k-units",
        ("spec/inflate-chained-le", "spec/inflate-chained-be"),
        ch.CloudHypervisor51FirstDescriptorOnly, ch.CloudHypervisor52WholeChain,
        also=("spec.device.deflate.pfn-4k-units",)),
    ZooEntry(
        "cloud-hypervisor-dies-on-bad-inflate", "Cloud Hypervisor",
        "a malformed inflate buffer ends the balloon thread: it and every later buffer unused",
        "cloud-hypervisor c1b5b18 'virtio-devices: balloon: Handle invalid inflate/deflate "
        "input'",
        "Cloud Hypervisor v52.0", "spec.device.inflate.acks-buffer",
        ("spec/inflate-malformed-then-good-le",),
        ch.CloudHypervisor51DiesOnBadInflate, ch.CloudHypervisor52SkipsBadInflate,
        also=("spec.device.malformed.acks-buffer", "spec.device.deflate.acks-buffer",
              "spec.device.inflate.pfn-4k-units"),
        twin_choice=("pfns.malformed-buffer", "skipped")),
    ZooEntry(
        "cloud-hypervisor-dies-on-bad-report", "Cloud Hypervisor",
        "a reported range outside guest RAM ends the balloon thread: no report used again",
        "cloud-hypervisor ce74caa 'virtio-devices: balloon: Handle reporting queue errors "
        "gracefully'",
        "Cloud Hypervisor v52.0", "spec.device.reporting.acks-buffer",
        ("spec/report-outside-ram-le",),
        ch.CloudHypervisor51DiesOnBadReport, ch.CloudHypervisor52SkipsBadReport,
        also=("spec.device.reporting.records-ranges",)),
    ZooEntry(
        "libkrun-ignores-config-writes", "libkrun",
        "driver writes to config space are dropped: actual always reads 0",
        "libkrun src/devices/src/virtio/balloon/device.rs write_config() only warns, at "
        "08c94da and 6ed74fa",
        "not fixed at 6ed74fa", "spec.device.config.actual-readback",
        ("spec/inflate-le", "spec/deflate-le"),
        krun.LibkrunIgnoresConfigWrites, krun.LibkrunStoresConfigWrites),
    ZooEntry(
        "libkrun-panics-on-bad-report-address", "libkrun",
        "a reported range outside guest RAM panics the VMM (get_host_address().unwrap())",
        "libkrun src/devices/src/virtio/balloon/device.rs process_frq(), at 08c94da and 6ed74fa",
        "not fixed at 6ed74fa", "suite.device.transport",
        ("spec/report-outside-ram-le",),
        krun.LibkrunPanicsOnBadReportAddress, krun.LibkrunSkipsBadReportAddress),
)


def find(entry_id: str) -> ZooEntry:
    for e in ZOO:
        if e.id == entry_id:
            return e
    raise KeyError(entry_id)
