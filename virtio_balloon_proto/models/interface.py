"""The device-under-test interface: what the conformance runner needs from any balloon device.

Sans-IO in shape: the runner hands the device *driver-side events* taken from a trace (a buffer
made available, a config write, a host request) and gets back *effects* (used entries with the
bytes the device wrote, config bytes, observable state).  Every adapter implements
:class:`DeviceUnderTest`: the built-in reference device, ``python:module:Class``, an external
process over the stdio protocol (docs/stdio-protocol.md), and QEMU over qtest.

An adapter raises :class:`Unsupported` for a profile or feature it does not implement (the
runner reports the case ``unsupported``, not failed), and
:class:`~virtio_balloon_proto.errors.PeerError` when the device misbehaves at the transport level
(crash, hang past the step timeout, garbage frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from virtio_balloon_proto.codecs.buffers import Segment
from virtio_balloon_proto.errors import VBProtoError

__all__ = [
    "UNSUPPORTED_BY",
    "DeviceUnderTest",
    "Negotiated",
    "Segment",
    "Setup",
    "Unsupported",
    "Used",
]


#: whose limit an :class:`Unsupported` is (``Unsupported.by``)
UNSUPPORTED_BY = ("device", "adapter")


class Unsupported(VBProtoError):
    """The device under test does not implement this profile, feature or request.

    ``by`` says whose limit it is, so a results matrix can count them apart:

    * ``"device"``: the device (its build, machine, transport) does not offer what the case
      needs -- a profile, a feature bit, a byte order, a queue, a device option;
    * ``"adapter"``: the device has it, but the adapter cannot make the device do it or
      cannot observe it (a host action the device exposes no control for, a case that names
      the adapter's own memory, a memory layout the adapter does not build);
    * ``""``: not said (counted apart as unclassified, never as the device's).
    """

    def __init__(self, message: str, *, by: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        if by not in ("", *UNSUPPORTED_BY):
            raise ValueError(f"Unsupported(by={by!r}): expected one of {UNSUPPORTED_BY}")
        self.by = by


@dataclass(frozen=True)
class Setup:
    """How to bring the device up for one case."""

    profile: str  # "spec" | "v3" | "hybrid"
    #: features the driver wants (the trace's negotiated word, transport bits included)
    driver_features: int
    #: byte order of __virtio fields: "le" when VERSION_1 is negotiated, else the guest's
    endian: str = "le"
    #: v3 bitmap layout (BITS_PER_LONG and native word order of the recorded guest)
    word_size: int = 64
    word_order: str = "le"
    page_size: int = 4096
    #: device-side options the case needs (e.g. {"deflate-on-oom": True, "free-page-reporting":
    #: True}); an adapter that cannot honour one raises Unsupported
    device_options: dict[str, Any] = field(default_factory=dict)
    #: guest RAM size in bytes the case assumes (PFNs in traces lie below it)
    memory_size: int = 256 << 20
    #: guest RAM as (start, size) byte regions when the trace header says so (format 1.1);
    #: empty: one region [0, memory_size)
    memory_regions: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Negotiated:
    offered: int  # what the device offered
    accepted: int  # what was finally negotiated (FEATURES_OK accepted)
    #: role -> queue index the device actually uses
    queues: dict[str, int]
    config_size: int


@dataclass(frozen=True)
class Used:
    """One used-ring entry the device produced."""

    id: int  # the head id it returned (the adapter maps its own ids back to the trace's)
    length: int  # used len the device wrote
    written: bytes = b""  # bytes the device wrote into the chain's writable segments


@runtime_checkable
class DeviceUnderTest(Protocol):
    name: str

    def start(self, setup: Setup) -> Negotiated:
        """Reset, negotiate ``setup.driver_features`` (masked by what is offered), set up queues."""
        ...

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        """Make one chain available on ``role`` (head id ``head``), notify, return the used
        entries that appeared as a result (possibly none, possibly for earlier heads)."""
        ...

    def config_read(self, offset: int, size: int) -> bytes: ...

    def config_write(self, offset: int, data: bytes) -> None: ...

    def host_request(self, kind: str, params: dict[str, Any]) -> list[Used]:
        """A host-side action: ``set-target`` {num_pages}, ``get-unused-pages`` {req_id}
        (v3 misc queue), ``hint-start`` {cmd_id}, ``hint-stop``, ``stats-poll``.  Returns used
        entries the action produced (e.g. the misc request written into the posted buffer)."""
        ...

    def observe(self) -> dict[str, Any]:
        """Observable state: ``balloon`` (sorted merged [first, count] 4 KiB extents) when the
        device can tell, ``num_pages``, ``actual``, ``stats`` {tag: value}, ``hint_cmd_id``,
        ``reported`` extents, ``unused`` {req_id: extents}; keys a device cannot observe are
        absent (not compared).

        A device may also have ``observe_changes()``: the same dict, except that the balloon
        may be given as ``balloon_delta`` {``add``, ``remove``: extents} -- what changed since
        its previous ``observe_changes()`` call (the first: since ``start``, empty) -- instead
        of ``balloon``.  The runner then records a delta per step and one full ``observe()``
        at the end of the case, so a replay costs O(what changed) per step (issue 13).  An
        in-process device may give extents there as a :class:`~..pageset.PageSet` (no list
        per extent), and may have ``observe_compact()``: ``observe()`` with the balloon as
        a PageSet, which the runner then takes for that last full observation."""
        ...

    def stop(self) -> None: ...
