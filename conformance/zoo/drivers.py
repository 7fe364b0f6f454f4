"""Driver bugs of the zoo: traces a buggy guest driver produces, judged offline (conform check).

A driver entry builds two traces with the suite's own driver (models/synth.py) -- one as the
published bug made the driver behave, one as the fix does -- and names the driver clause the
judgement must fail the buggy one on.  tests/test_zoo.py writes both and runs ``conform check``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from virtio_balloon_proto.models.synth import SynthOptions, synthesize
from virtio_balloon_proto.trace import AvailEvent, Event, TraceHeader

Trace = tuple[TraceHeader, list[Event]]


def _swap_words(data: bytes | None) -> bytes | None:
    if data is None:
        return None
    n = len(data) // 4 * 4
    return b"".join(data[i : i + 4][::-1] for i in range(0, n, 4)) + data[n:]


def linux_native_pfns(fixed: bool) -> Trace:
    """A big-endian guest with 64 KiB pages (ppc64) on a VERSION_1 device inflating and
    deflating.  Before 87c9403b0d1d ("virtio_balloon: fix PFN format for virtio-1") Linux
    filled ``u32 pfns[]`` in the CPU's byte order; a virtio 1 device reads little-endian
    ``__virtio32`` PFNs, so each 64 KiB page's 16 PFNs arrive byte-swapped: not consecutive,
    not the guest's pages.  The fix writes ``cpu_to_virtio32()``."""
    header, events = synthesize(SynthOptions("spec", "deflate", "le", page_size=65536,
                                             pages=512))
    if fixed:
        return header, events
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, AvailEvent) and str(getattr(ev.role, "value", ev.role)) in (
                "inflate", "deflate"):
            ev = dataclasses.replace(ev, out=tuple(_swap_words(b) for b in ev.out))
        out.append(ev)
    return header, out


@dataclass(frozen=True)
class DriverZooEntry:
    id: str
    project: str
    bug: str
    source: str
    fixed_in: str
    clause: str  # the driver clause conform check must fail the buggy trace on
    build: Callable[[bool], Trace]  # build(fixed) -> the trace
    #: why the bug is only *noted* (``clause`` is an informational MAY suite rule: its result
    #: is a pass with a note, never a failure) because the trace shows no breach of a spec
    #: sentence; None when conform check fails the buggy trace on ``clause``
    noted_only: str | None = None


DRIVER_ZOO: tuple[DriverZooEntry, ...] = (
    DriverZooEntry(
        "linux-native-endian-pfns", "Linux",
        "a big-endian guest on a virtio 1 device sends PFNs in CPU byte order (64 KiB pages: "
        "each page's 16 PFNs arrive byte-swapped)",
        "linux 87c9403b0d1d 'virtio_balloon: fix PFN format for virtio-1' (mst)",
        "the first Linux release holding 87c9403b0d1d (release not checked here)",
        "suite.driver.pfns.page-group", linux_native_pfns,
        noted_only="a byte-swapped PFN is still a legal __le32 PFN value: which pages the driver "
        "meant is not in the trace (no guest RAM map in a driver trace), and VIRTIO 5.5.6 asks "
        "for no grouping of a 64 KiB page's 4 KiB frames; the swapped groups are named by the "
        "suite rule (Linux's set_page_pfns convention)"),
)
