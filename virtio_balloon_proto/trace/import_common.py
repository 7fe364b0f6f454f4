"""What every importer shares (docs/trace-format.md "Importers").

Importers turn what people actually have into a ``vbproto-trace/1`` trace:

* :func:`~.import_ring.import_split_ring` / :func:`~.import_ring.import_packed_ring` -- a raw
  guest-memory dump holding a ring (``--memory FILE[@GPA]``) plus the ring's addresses.
* :func:`~.import_core.import_qemu_core` -- an ELF core from QEMU's ``dump-guest-memory``
  (PT_LOAD segments by ``p_paddr``) plus the JSON ``x-query-virtio-queue-status`` returns for
  each queue.
* :func:`~.import_log.import_qemu_log` -- a QEMU ``-trace virtio_balloon_* -trace virtqueue_*`` log.

Each returns a header and an iterator of events; :func:`write_import` writes them atomically.
The walkers' errors (RingError) propagate unchanged: an importer never papers over a broken
ring.  This module holds what they share: addresses and memory dumps from the command line
(:func:`parse_int`, :func:`load_memory`, :func:`load_elf_core`), the header builder and
:func:`write_import`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..errors import TraceError, UsageError, VBProtoError
from ..profiles import VERSION_1, QueueRole, get_profile
from ..virtqueue.filemem import MappedMemory
from .events import Event
from .header import TraceHeader, TraceSource
from .writer import TraceWriter

ImportResult = tuple[TraceHeader, Iterator[Event]]


def parse_int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(f"{text!r} is not a number (decimal or 0x-hex)", field=what) from None


def parse_memory_spec(spec: str) -> tuple[str, int]:
    """``FILE[@GPA]`` -> (file, gpa); GPA defaults to 0."""
    path, sep, gpa = spec.rpartition("@")
    if not sep:
        return spec, 0
    return path, parse_int(gpa, "memory")


def load_memory(specs: Sequence[str]) -> MappedMemory:
    """Map raw dump files at their guest-physical addresses."""
    if not specs:
        raise UsageError("at least one --memory FILE[@GPA] is needed", field="memory")
    mem = MappedMemory()
    for spec in specs:
        path, gpa = parse_memory_spec(spec)
        h = mem.map_file(path)
        mem.add(gpa, h)
    return mem


def load_elf_core(path: str | os.PathLike[str]) -> MappedMemory:
    """Guest memory of a QEMU ``dump-guest-memory`` ELF core: its PT_LOAD segments at
    ``p_paddr`` (QEMU writes the guest-physical address there; ``p_vaddr`` is 0 or virtual)."""
    mem = MappedMemory()
    h = mem.map_file(path)
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            loads = [
                (int(s["p_paddr"]), int(s["p_offset"]), int(s["p_filesz"]))
                for s in elf.iter_segments()
                if s["p_type"] == "PT_LOAD" and s["p_filesz"] > 0
            ]
    except (ELFError, struct.error, ValueError) as exc:
        mem.close()
        raise TraceError(f"not a readable ELF core: {exc}", where=str(path)) from None
    except OSError as exc:
        mem.close()
        raise TraceError(f"cannot read: {exc.strerror or exc}", where=str(path)) from None
    if not loads:
        mem.close()
        raise TraceError("ELF core has no PT_LOAD segment with data", where=str(path))
    for paddr, offset, size in loads:
        mem.add(paddr, h, offset, size)
    return mem


def _header(
    profile: str,
    offered: int | None,
    negotiated: int | None,
    endian: str,
    index_model: str,
    ring: str,
    source: TraceSource,
    pin: Mapping[QueueRole, int],
    **kw: Any,
) -> TraceHeader:
    """Header whose queue map follows the index model, with ``pin`` (role -> index the input
    states outright) overriding it; a disagreement makes the model ``custom``."""
    if endian not in ("le", "be"):
        raise UsageError(f"endian must be le or be, not {endian!r}", field="endian")
    prof = get_profile(profile)
    if negotiated is None:
        negotiated = VERSION_1 if endian == "le" else 0
    if offered is None:
        offered = negotiated
    queues = dict(prof.queue_index(offered, negotiated, index_model))
    model = index_model
    for role, idx in pin.items():
        if queues.get(role) != idx:
            queues = {r: i for r, i in queues.items() if i != idx}
            queues[role] = idx
            model = "custom"
    return TraceHeader(
        profile,
        offered,
        negotiated,
        virtio_endian=endian,  # type: ignore[arg-type]
        queues=queues,
        index_model=model,
        ring=ring,  # type: ignore[arg-type]
        source=source,
        **kw,
    )


def _role(text: str | QueueRole) -> QueueRole:
    try:
        return QueueRole(text)
    except ValueError:
        roles = ", ".join(r.value for r in QueueRole)
        raise UsageError(f"unknown queue role {text!r} ({roles})", field="role") from None


def write_import(out: str | os.PathLike[str], header: TraceHeader, events: Iterable[Event]) -> int:
    """Write an import atomically; returns the number of events.  On any error nothing is
    left at ``out``."""
    try:
        with TraceWriter(out, header) as w:
            for ev in events:
                w.write(ev)
            return w.count - 1
    except VBProtoError:
        raise
