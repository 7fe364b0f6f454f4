"""Guest memory backed by files (raw dumps, ELF cores) through copy-on-write mmaps.

A core of a large guest is gigabytes; :class:`MappedMemory` never reads more than the walker
asks for, and writes (tests, ring builders) land in private copy-on-write pages, never in the
file.  Implements the :class:`~virtio_balloon_proto.virtqueue.memory.GuestMemory` protocol.
"""

from __future__ import annotations

import bisect
import mmap
import os
from dataclasses import dataclass

from ..errors import RingError, TraceError
from ..limits import open_regular


@dataclass(frozen=True, slots=True)
class MappedRegion:
    gpa: int
    size: int
    map_index: int
    offset: int  # byte offset of the region inside its mapping

    @property
    def end(self) -> int:
        return self.gpa + self.size


class MappedMemory:
    """Guest-physical regions, each a window (offset, size) of a mapped file."""

    def __init__(self) -> None:
        self._maps: list[mmap.mmap] = []
        self._regions: list[MappedRegion] = []
        self._starts: list[int] = []

    def map_file(self, path: str | os.PathLike[str]) -> int:
        """Map ``path`` copy-on-write; returns a handle for :meth:`add`."""
        f, _ = open_regular(path, what="memory file", error=TraceError)  # never blocks on a FIFO
        try:
            with f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise TraceError("memory file is empty", where=str(path))
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except OSError as exc:
            raise TraceError(f"cannot map: {exc.strerror or exc}", where=str(path)) from None
        self._maps.append(m)
        return len(self._maps) - 1

    def file_size(self, handle: int) -> int:
        return len(self._maps[handle])

    def add(self, gpa: int, handle: int, offset: int = 0, size: int | None = None) -> None:
        m = self._maps[handle]
        size = len(m) - offset if size is None else size
        if offset < 0 or size < 0 or offset + size > len(m):
            raise RingError(
                f"region at file offset {offset:#x}+{size:#x} is beyond the file ({len(m):#x})"
            )
        if gpa < 0 or gpa + size > 1 << 64:
            raise RingError(f"region {gpa:#x}+{size:#x} is outside the 64-bit address space")
        for r in self._regions:
            if gpa < r.end and r.gpa < gpa + size:
                raise RingError(f"region {gpa:#x}+{size:#x} overlaps region {r.gpa:#x}+{r.size:#x}")
        i = bisect.bisect(self._starts, gpa)
        self._regions.insert(i, MappedRegion(gpa, size, handle, offset))
        self._starts.insert(i, gpa)

    @property
    def regions(self) -> list[MappedRegion]:
        return list(self._regions)

    def _locate(self, gpa: int, size: int) -> tuple[mmap.mmap, int]:
        i = bisect.bisect(self._starts, gpa) - 1
        if i >= 0:
            r = self._regions[i]
            if gpa + size <= r.end:
                return self._maps[r.map_index], r.offset + gpa - r.gpa
        raise RingError(f"guest address {gpa:#x}+{size:#x} is outside the memory image")

    def contains(self, gpa: int, size: int) -> bool:
        try:
            self._locate(gpa, size)
        except RingError:
            return False
        return True

    def read(self, gpa: int, size: int) -> bytes:
        if size < 0:
            raise RingError(f"negative read size {size}")
        m, off = self._locate(gpa, size)
        return m[off : off + size]

    def write(self, gpa: int, data: bytes) -> None:
        m, off = self._locate(gpa, len(data))
        m[off : off + len(data)] = data

    def close(self) -> None:
        for m in self._maps:
            m.close()
        self._maps.clear()
        self._regions.clear()
        self._starts.clear()

    def __enter__(self) -> MappedMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
