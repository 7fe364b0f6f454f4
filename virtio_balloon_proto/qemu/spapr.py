"""PCI on QEMU's ppc64 ``-M pseries`` through qtest: a big-endian guest's view of a device.

pseries has no port I/O and no configuration mechanism #1: PCI configuration space is reached
through the RTAS calls ``ibm,read-pci-config`` / ``ibm,write-pci-config`` (PAPR), which qtest
runs with its ``rtas NAME NARGS ARGS NRET RET`` command (arguments and results are 32-bit words
in guest RAM, in the guest's big-endian order).  The default PHB (BUID 0x800000020000000) maps
its 64 KiB I/O window and its 32-bit MMIO window (PCI addresses 2-4 GiB) at CPU address 2^45.

qtest's ``readl``/``writel`` are CPU accesses in the target's order, and PCI registers are
little-endian, so :class:`SpaprBus` swaps 16/32-bit values the way a ppc64 driver's
``ioread32``/``iowrite32`` do.  Device-config bytes are read and written one byte at a time,
as Linux's legacy virtio-pci driver does (``vp_get``/``vp_set``).
"""

from __future__ import annotations

from ..errors import PeerError
from .qtest import QtestClient

SPAPR_PCI_BASE = 1 << 45
#: PCI addresses of the default PHB's windows (both seen at SPAPR_PCI_BASE + PCI address)
IO_WINDOW = 0x1000
IO_WINDOW_END = 0x10000
MEM_WINDOW = 0x80000000
MEM_WINDOW_END = 0x100000000
PHB_BUID = 0x800000020000000
#: RAM of a pseries guest starts at 0 in one piece
RTAS_SUCCESS = 0


def _swap(value: int, width: int) -> int:
    return int.from_bytes(value.to_bytes(width, "little"), "big")


class RtasPciConfig:
    """Configuration space of one function via RTAS (same methods as :class:`.pci.PciConfig`).

    ``scratch`` is 32 bytes of guest RAM for the call's argument and result words.
    """

    def __init__(self, qtest: QtestClient, bus: int, dev: int, fn: int, *, scratch: int) -> None:
        if not (0 <= bus < 256 and 0 <= dev < 32 and 0 <= fn < 8):
            raise PeerError(f"bad PCI address {bus}:{dev}.{fn}")
        self.qt = qtest
        self._addr = bus << 16 | (dev << 3 | fn) << 8
        self._args = scratch
        self._ret = scratch + 24

    def _call(self, name: str, args: list[int], nret: int) -> list[int]:
        for i, a in enumerate(args):
            self.qt.writel(self._args + 4 * i, a)
        res = self.qt.command(f"rtas {name} {len(args)} {self._args:#x} {nret} {self._ret:#x}")
        if res.strip() not in ("0", "0x0"):
            raise PeerError(f"qtest rtas {name} answered {res!r}", where="RTAS")
        return [self.qt.readl(self._ret + 4 * i) for i in range(nret)]

    def _read(self, off: int, size: int) -> int:
        if not 0 <= off < 256:
            raise PeerError(f"config offset {off:#x} outside the 256-byte header")
        status, value = self._call(
            "ibm,read-pci-config",
            [self._addr | off, PHB_BUID >> 32, PHB_BUID & 0xFFFFFFFF, size],
            2,
        )
        if status != RTAS_SUCCESS:
            # no function there (PAPR: -1 hardware error): what mechanism #1 reads as all-ones
            return (1 << 8 * size) - 1
        return value & ((1 << 8 * size) - 1)

    def _write(self, off: int, size: int, value: int) -> None:
        if not 0 <= off < 256:
            raise PeerError(f"config offset {off:#x} outside the 256-byte header")
        (status,) = self._call(
            "ibm,write-pci-config",
            [self._addr | off, PHB_BUID >> 32, PHB_BUID & 0xFFFFFFFF, size, value],
            1,
        )
        if status != RTAS_SUCCESS:
            raise PeerError(f"ibm,write-pci-config {off:#x} failed with status {status}")

    def read8(self, off: int) -> int:
        return self._read(off, 1)

    def read16(self, off: int) -> int:
        return self._read(off, 2)

    def read32(self, off: int) -> int:
        return self._read(off, 4)

    def write8(self, off: int, v: int) -> None:
        self._write(off, 1, v)

    def write16(self, off: int, v: int) -> None:
        self._write(off, 2, v)

    def write32(self, off: int, v: int) -> None:
        self._write(off, 4, v)


class SpaprBus:
    """Register accesses of a PCI function behind the pseries PHB (port I/O becomes MMIO)."""

    def __init__(self, qtest: QtestClient) -> None:
        self.qt = qtest

    def _pio(self, port: int) -> int:
        if not 0 <= port < IO_WINDOW_END:
            raise PeerError(f"port {port:#x} outside the PHB's I/O window")
        return SPAPR_PCI_BASE + port

    def _mem(self, addr: int) -> int:
        if not MEM_WINDOW <= addr < MEM_WINDOW_END:
            raise PeerError(f"PCI address {addr:#x} outside the PHB's 32-bit MMIO window")
        return SPAPR_PCI_BASE + addr

    def inb(self, port: int) -> int:
        return self.qt.readb(self._pio(port))

    def inw(self, port: int) -> int:
        return _swap(self.qt.readw(self._pio(port)), 2)

    def inl(self, port: int) -> int:
        return _swap(self.qt.readl(self._pio(port)), 4)

    def outb(self, port: int, value: int) -> None:
        self.qt.writeb(self._pio(port), value)

    def outw(self, port: int, value: int) -> None:
        self.qt.writew(self._pio(port), _swap(value, 2))

    def outl(self, port: int, value: int) -> None:
        self.qt.writel(self._pio(port), _swap(value, 4))

    def readb(self, addr: int) -> int:
        return self.qt.readb(self._mem(addr))

    def readw(self, addr: int) -> int:
        return _swap(self.qt.readw(self._mem(addr)), 2)

    def readl(self, addr: int) -> int:
        return _swap(self.qt.readl(self._mem(addr)), 4)

    def writeb(self, addr: int, value: int) -> None:
        self.qt.writeb(self._mem(addr), value)

    def writew(self, addr: int, value: int) -> None:
        self.qt.writew(self._mem(addr), _swap(value, 2))

    def writel(self, addr: int, value: int) -> None:
        self.qt.writel(self._mem(addr), _swap(value, 4))
