"""Importing a QEMU ELF core (``dump-guest-memory``) with QEMU's queue status (QMP).

:func:`import_qemu_core` reads the core's PT_LOAD segments by ``p_paddr`` and walks each balloon
queue at the addresses ``x-query-virtio-queue-status`` returned (:class:`QueueStatus`,
:func:`load_queue_status`), with the features of ``x-query-virtio-status`` when given
(:class:`VirtioStatus`, :func:`load_virtio_status`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TraceError, UsageError
from ..limits import MAX_JSON, check_int, loads_json, read_bounded
from ..virtqueue.filemem import MappedMemory
from .events import Event
from .header import TraceHeader, TraceSource
from .import_common import _header, load_elf_core
from .import_ring import snapshot_window, split_ring_events

# --- QEMU ELF core + x-query-virtio-queue-status -----------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """The fields of ``x-query-virtio-queue-status`` (QEMU qapi/virtio.json
    VirtQueueStatus) an import needs."""

    queue_index: int
    vring_num: int
    vring_desc: int
    vring_avail: int
    vring_used: int
    last_avail_idx: int
    used_idx: int
    name: str | None = None

    @classmethod
    def from_json(cls, o: Mapping[str, Any], where: str) -> QueueStatus:
        if "return" in o and isinstance(o["return"], dict):
            o = o["return"]  # a raw QMP reply
        u16, u64 = 0xFFFF, (1 << 64) - 1

        def num(key: str, hi: int) -> int:
            if key not in o:
                raise TraceError(f"queue status lacks {key!r}", where=where)
            return check_int(o[key], field=key, hi=hi, error=TraceError, where=where)

        name = o.get("name")
        if name is not None and not isinstance(name, str):
            raise TraceError(f"must be a string, got {type(name).__name__}", field="name",
                             where=where)
        return cls(num("queue-index", u16), num("vring-num", 32768), num("vring-desc", u64),
                   num("vring-avail", u64), num("vring-used", u64), num("last-avail-idx", u16),
                   num("used-idx", u16), name)


@dataclass(frozen=True, slots=True)
class VirtioStatus:
    """What an import needs of ``x-query-virtio-status`` (QEMU qapi/virtio.json VirtioStatus):
    the device's offered features (``host-features``; without the legacy-only bits when
    VERSION_1 was negotiated: what a modern driver read), the negotiated ones
    (``guest-features``: what the driver acknowledged) and the device's byte order."""

    offered: int
    negotiated: int
    endian: str

    @classmethod
    def from_json(cls, o: Any, where: str) -> VirtioStatus:
        if isinstance(o, dict) and isinstance(o.get("return"), dict):
            o = o["return"]  # a raw QMP reply
        if not isinstance(o, dict):
            raise TraceError("virtio status is not a JSON object", where=where)

        # QEMU's names -> bits: the same reading `capture attach` uses (qemu/capture.py)
        from ..errors import PeerError
        from ..qemu.capture import features_from_qmp, offered_by_transport

        def word(key: str) -> int:
            f = o.get(key)
            if not isinstance(f, dict):
                raise TraceError(f"virtio status lacks the object {key!r}", where=where)
            try:
                w = features_from_qmp(f)
            except PeerError as exc:
                raise TraceError(f"{key}: {exc.message}", where=where) from None
            if not 0 <= w < 1 << 64:
                raise TraceError(f"{key} is not a 64-bit feature word", where=where)
            return w

        endian = o.get("device-endian", "little")
        if endian not in ("little", "big"):
            raise TraceError(f"device-endian {endian!r} is not little or big", where=where)
        negotiated = word("guest-features")
        # what the driver read: a modern transport never shows the legacy-only bits (VIRTIO
        # 1.2 6.3: NOTIFY_ON_EMPTY 24, ANY_LAYOUT 27, bit 30 "SHOULD NOT be negotiated"),
        # the legacy register is 32 bits wide; QEMU's host-features has them all
        offered = offered_by_transport(word("host-features"),
                                       "modern" if negotiated >> 32 & 1 else "legacy")
        return cls(offered, negotiated, "le" if endian == "little" else "be")


def load_virtio_status(path: str | os.PathLike[str]) -> VirtioStatus:
    """The ``x-query-virtio-status`` reply (or its ``return`` object) in a JSON file."""
    raw = read_bounded(path, what="virtio status file", limit=MAX_JSON, error=TraceError)
    data = loads_json(raw, what="virtio status", error=TraceError, where=str(path))
    return VirtioStatus.from_json(data, str(path))


def load_queue_status(paths: Iterable[str | os.PathLike[str]]) -> list[QueueStatus]:
    """Queue status objects from JSON files (one object, a QMP reply, or a list of them)."""
    out = []
    for p in paths:
        raw = read_bounded(p, what="queue status file", limit=MAX_JSON, error=TraceError)
        data = loads_json(raw, what="queue status", error=TraceError, where=str(p))
        items = data if isinstance(data, list) else [data]
        for k, item in enumerate(items):
            if not isinstance(item, dict):
                raise TraceError("queue status is not a JSON object", where=f"{p} item {k}")
            out.append(QueueStatus.from_json(item, f"{p} item {k}"))
    return out


def _say_features(source: TraceSource, *, reported: bool) -> TraceSource:
    """The provenance says when the features are a default, not what the source reported."""
    if reported:
        return source
    return dataclasses.replace(source, provenance=(
        (source.provenance + "; " if source.provenance else "")
        + "features assumed (VERSION_1): give --virtio-status (x-query-virtio-status) or "
          "--negotiated"))


def import_qemu_core(
    core: str | os.PathLike[str],
    statuses: Sequence[QueueStatus],
    *,
    profile: str,
    offered: int | None = None,
    negotiated: int | None = None,
    index_model: str = "offered",
    endian: str = "le",
    source: TraceSource | None = None,
    virtio_status: VirtioStatus | None = None,
    host_page_size: int | None = None,
) -> tuple[TraceHeader, Iterator[Event], MappedMemory]:
    """Events of every queue in ``statuses``: used entries still in each used ring, then the
    chains between QEMU's last-avail-idx and avail.idx.  Queue index -> role follows the
    profile and the index model (QEMU: ``offered``).  Features: as given, else as QEMU
    reported them (``virtio_status``: offered = host-features, negotiated = guest-features),
    else VERSION_1.  Returns the memory too (close it after the events are consumed)."""
    if not statuses:
        raise UsageError("at least one --queue-status file is needed", field="queue-status")
    if virtio_status is not None:
        offered = virtio_status.offered if offered is None else offered
        negotiated = virtio_status.negotiated if negotiated is None else negotiated
        if not negotiated >> 32 & 1:  # legacy: the ring is in the device's (guest's) order
            endian = virtio_status.endian
    mem = load_elf_core(core)
    try:
        header = _header(
            profile,
            offered,
            negotiated,
            endian,
            index_model,
            "split",
            _say_features(source or TraceSource(
                provenance=f"QEMU dump-guest-memory core {Path(core).name}"),
                reported=virtio_status is not None or negotiated is not None),
            {},
            window=snapshot_window(host_page_size),
        )
        roles = {}
        for st in statuses:
            role = header.role_of(st.queue_index)
            if role is None:
                qmap = {r.value: i for r, i in header.queues.items()}
                raise UsageError(
                    f"queue {st.queue_index} has no role under profile {profile} with these "
                    f"features and index model {index_model!r} ({qmap})",
                    field="queue-status",
                )
            roles[st.queue_index] = role
    except BaseException:
        mem.close()
        raise

    def events() -> Iterator[Event]:
        for st in sorted(statuses, key=lambda s: s.queue_index):
            if st.vring_desc == 0:
                continue  # QEMU reports 0 for a queue the driver never set up
            yield from split_ring_events(
                mem,
                desc=st.vring_desc,
                avail=st.vring_avail,
                used=st.vring_used,
                size=st.vring_num,
                role=roles[st.queue_index],
                queue=st.queue_index,
                little_endian=endian == "le",
                last_avail=st.last_avail_idx,
                used_from=(st.used_idx - min(st.vring_num, st.used_idx)) & 0xFFFF,
                header=header,
            )

    return header, events(), mem
