"""Guest RAM of a running QEMU as :class:`~virtio_balloon_proto.virtqueue.memory.GuestMemory`.

Reads and writes go through qtest ``read``/``write``; addresses are checked against the RAM
layout of the q35 machine first, so a ring walker or builder pointed outside RAM gets a
RingError (as with a memory image) instead of silently touching MMIO.
"""

from __future__ import annotations

from ..errors import RingError, UsageError
from .qtest import QtestClient

_4G = 1 << 32


def q35_ram_regions(ram_size: int) -> list[tuple[int, int]]:
    """(gpa, size) of RAM for ``-machine q35 -m ram_size`` (QEMU 7.2 ``pc_q35_init``).

    Below 4 GiB q35 keeps RAM under 0xb0000000, or under 0x80000000 once RAM reaches
    0xb0000000; the rest is mapped from 4 GiB up.
    """
    lowmem = 0x80000000 if ram_size >= 0xB0000000 else 0xB0000000
    below = min(ram_size, lowmem)
    regions = [(0, below)]
    if ram_size > below:
        regions.append((_4G, ram_size - below))
    return regions


def parse_size(text: str | int) -> int:
    """``256M``/``1G``/bytes -> bytes (QEMU's ``-m`` suffixes, binary units)."""
    if isinstance(text, int):
        return text
    t = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if t and t[-1] in mult:
            return int(t[:-1]) * mult[t[-1]]
        if t.endswith("B") and t[-2:-1] in mult:
            return int(t[:-2]) * mult[t[-2]]
        return int(t) << 20  # QEMU reads a bare -m number as MiB
    except ValueError:
        raise UsageError(f"bad memory size {text!r} (e.g. 256M, 1G)", field="memory") from None


class QtestMemory:
    """GuestMemory over qtest, bounded to the machine's RAM."""

    def __init__(
        self,
        qtest: QtestClient,
        ram_size: int,
        extra: list[tuple[int, int]] | None = None,
        *,
        regions: list[tuple[int, int]] | None = None,
    ) -> None:
        self.qt = qtest
        self.ram_size = ram_size
        #: (gpa, size) of RAM: ``regions`` as given (another machine's layout), else q35's for
        #: ``ram_size``; plus ``extra`` regions such as a pc-dimm
        base = q35_ram_regions(ram_size) if regions is None else list(regions)
        self.regions = base + list(extra or [])

    def contains(self, gpa: int, size: int) -> bool:
        return any(base <= gpa and gpa + size <= base + n for base, n in self.regions)

    def _check(self, gpa: int, size: int, what: str) -> None:
        if size < 0 or not self.contains(gpa, size):
            raise RingError(f"{what} of {size:#x} bytes at {gpa:#x} is outside guest RAM")

    def read(self, gpa: int, size: int) -> bytes:
        self._check(gpa, size, "read")
        return self.qt.read(gpa, size) if size else b""

    def write(self, gpa: int, data: bytes) -> None:
        self._check(gpa, len(data), "write")
        if data:
            self.qt.write(gpa, bytes(data))

    def fill(self, gpa: int, size: int, value: int) -> None:
        """memset, checked like a write."""
        self._check(gpa, size, "memset")
        self.qt.memset(gpa, size, value)


class BumpAllocator:
    """Hands out aligned guest-physical ranges from one window (rings, buffers, test pages)."""

    def __init__(self, start: int, end: int) -> None:
        if not 0 <= start <= end:
            raise UsageError(f"bad allocation window {start:#x}-{end:#x}")
        self.next = start
        self.end = end

    def alloc(self, size: int, align: int = 16) -> int:
        if size < 0 or align <= 0 or align & (align - 1):
            raise UsageError(f"bad allocation size {size} / alignment {align}")
        addr = (self.next + align - 1) // align * align
        if addr + size > self.end:
            raise UsageError(
                f"guest scratch window exhausted ({size:#x} bytes at {addr:#x}, "
                f"window ends {self.end:#x})"
            )
        self.next = addr + size
        return addr
