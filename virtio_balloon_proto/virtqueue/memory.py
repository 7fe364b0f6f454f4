"""Guest memory seen by a ring walker or a ring builder.

``GuestMemory`` is the one interface the ring code reads and writes through: a memory image
made of (guest-physical address, bytes) regions here, a running QEMU over qtest in
``virtio_balloon_proto.qemu``.  Keeping the ring code behind it is what makes it sans-IO.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import RingError


@runtime_checkable
class GuestMemory(Protocol):
    def read(self, gpa: int, size: int) -> bytes:
        """Return ``size`` bytes at guest-physical ``gpa``; raise RingError if not all present."""
        ...

    def write(self, gpa: int, data: bytes) -> None:
        """Store ``data`` at ``gpa``; raise RingError if it does not fit in memory."""
        ...


@dataclass
class Region:
    gpa: int
    data: bytearray

    @property
    def end(self) -> int:
        return self.gpa + len(self.data)


class MemoryImage:
    """Guest memory as a sorted list of non-overlapping regions (a dump, a core, a test)."""

    def __init__(self, regions: list[tuple[int, bytes | bytearray]] | None = None) -> None:
        self._regions: list[Region] = []
        for gpa, data in regions or []:
            self.add(gpa, data)

    @property
    def regions(self) -> list[Region]:
        return list(self._regions)

    def add(self, gpa: int, data: bytes | bytearray) -> None:
        if gpa < 0 or gpa + len(data) > 1 << 64:
            raise RingError(f"region {gpa:#x}+{len(data):#x} is outside the 64-bit address space")
        new = Region(gpa, bytearray(data))
        for r in self._regions:
            if new.gpa < r.end and r.gpa < new.end:
                raise RingError(
                    f"region {gpa:#x}+{len(data):#x} overlaps region {r.gpa:#x}+{len(r.data):#x}"
                )
        starts = [r.gpa for r in self._regions]
        self._regions.insert(bisect.bisect(starts, gpa), new)

    def _locate(self, gpa: int, size: int) -> tuple[Region, int]:
        starts = [r.gpa for r in self._regions]
        i = bisect.bisect(starts, gpa) - 1
        if i >= 0:
            r = self._regions[i]
            if gpa + size <= r.end:
                return r, gpa - r.gpa
        raise RingError(f"guest address {gpa:#x}+{size:#x} is outside the memory image")

    def read(self, gpa: int, size: int) -> bytes:
        if size < 0:
            raise RingError(f"negative read size {size}")
        r, off = self._locate(gpa, size)
        return bytes(r.data[off : off + size])

    def write(self, gpa: int, data: bytes) -> None:
        r, off = self._locate(gpa, len(data))
        r.data[off : off + len(data)] = data

    def contains(self, gpa: int, size: int) -> bool:
        try:
            self._locate(gpa, size)
        except RingError:
            return False
        return True


def read_at(memory: GuestMemory, gpa: int, size: int, where: str, clause: str | None) -> bytes:
    """``memory.read(gpa, size)``: ``size`` bytes at guest-physical ``gpa``.

    Raises RingError naming ``where`` (the ring field or descriptor being read) and ``clause``
    (or the memory's own clause when ``clause`` is None) when the range is not all in memory.
    """
    try:
        return memory.read(gpa, size)
    except RingError as exc:
        raise RingError(exc.message, where=where, clause=clause or exc.clause) from None
