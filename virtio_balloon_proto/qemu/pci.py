"""PCI through qtest: configuration mechanism #1, BAR assignment, virtio capabilities.

No firmware runs under ``-S`` (MMCONFIG stays off on q35), so configuration space is reached
through the legacy ports 0xcf8/0xcfc and BARs are sized and assigned by hand, as a BIOS would
(PCI Local Bus 3.0 section 6.2.5.1).  The virtio capabilities are VIRTIO 1.x section 4.1.4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

from ..errors import PeerError
from .qtest import QtestClient

CONFIG_ADDRESS = 0xCF8
CONFIG_DATA = 0xCFC

VENDOR_VIRTIO = 0x1AF4
#: transitional balloon (VIRTIO 1.x 4.1.2.1: 0x1000 + legacy id 5 is 0x1002) and modern-only
#: balloon (0x1040 + device id 5)
DEVICE_BALLOON_TRANSITIONAL = 0x1002
DEVICE_BALLOON_MODERN = 0x1045

PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_BAR0 = 0x10
PCI_SUBSYSTEM_VENDOR = 0x2C
PCI_CAP_PTR = 0x34
PCI_HEADER_TYPE = 0x0E
PCI_INTERRUPT_PIN = 0x3D
CMD_IO, CMD_MEM, CMD_MASTER = 0x1, 0x2, 0x4
STATUS_CAP_LIST = 0x10
CAP_ID_VENDOR = 0x09
CAP_ID_MSIX = 0x11
#: MSI-X Message Control bits (PCI Local Bus 3.0 6.8.2.3)
MSIX_ENABLE = 1 << 15
MSIX_FUNCTION_MASK = 1 << 14

#: where BARs go (research/qemu-peer.md: BAR4 at 0xe0000000, BAR0 at 0xc000)
MEM_WINDOW = 0xE0000000
IO_WINDOW = 0xC000


class VirtioCfgType(IntEnum):
    """``cfg_type`` of ``struct virtio_pci_cap`` (VIRTIO 1.x 4.1.4)."""

    COMMON = 1
    NOTIFY = 2
    ISR = 3
    DEVICE = 4
    PCI = 5
    SHARED_MEMORY = 8
    VENDOR = 9


@dataclass(frozen=True)
class Bar:
    index: int
    kind: str  # "io" | "mem"
    is64: bool
    prefetchable: bool
    size: int
    addr: int = 0


@dataclass(frozen=True)
class VirtioCap:
    cap_offset: int  # where the capability sits in config space
    cfg_type: int
    bar: int
    offset: int
    length: int
    notify_off_multiplier: int = 0  # NOTIFY cap only


@dataclass(frozen=True)
class MsixCap:
    """An MSI-X capability (PCI Local Bus 3.0 6.8.2): table and PBA location."""

    cap_offset: int
    table_size: int  # number of vectors
    table_bar: int
    table_offset: int
    pba_bar: int
    pba_offset: int


@dataclass
class PciFunction:
    bus: int
    dev: int
    fn: int
    vendor: int
    device: int
    class_code: int  # 24 bits: class, subclass, prog-if
    subsys_vendor: int = 0
    subsys_id: int = 0
    bars: dict[int, Bar] = field(default_factory=dict)
    caps: list[VirtioCap] = field(default_factory=list)
    cap_ids: list[tuple[int, int]] = field(default_factory=list)  # (offset, cap id)
    msix: MsixCap | None = None

    @property
    def bdf(self) -> str:
        return f"{self.bus:02x}:{self.dev:02x}.{self.fn}"

    def cap(self, cfg_type: VirtioCfgType) -> VirtioCap | None:
        """The first capability of a type (VIRTIO 1.x 4.1.4.1: drivers use the first one)."""
        for c in self.caps:
            if c.cfg_type == cfg_type:
                return c
        return None

    def cap_addr(self, cfg_type: VirtioCfgType) -> int:
        """Guest-physical address of a capability's structure (BAR base + offset)."""
        c = self.cap(cfg_type)
        if c is None:
            raise PeerError(f"device {self.bdf} has no virtio {cfg_type.name} capability")
        bar = self.bars.get(c.bar)
        if bar is None or bar.addr == 0:
            raise PeerError(f"{cfg_type.name} capability points at unassigned BAR{c.bar}")
        if c.offset + c.length > bar.size:
            raise PeerError(
                f"{cfg_type.name} capability {c.offset:#x}+{c.length:#x} overruns "
                f"BAR{c.bar} of size {bar.size:#x}"
            )
        return bar.addr + c.offset


class ConfigSpace(Protocol):
    """Configuration-space accesses of one function (mechanism #1, or RTAS on pseries)."""

    def read8(self, off: int) -> int: ...
    def read16(self, off: int) -> int: ...
    def read32(self, off: int) -> int: ...
    def write8(self, off: int, v: int) -> None: ...
    def write16(self, off: int, v: int) -> None: ...
    def write32(self, off: int, v: int) -> None: ...


#: (bus, dev, fn) -> the function's configuration space
ConfigFactory = Callable[[int, int, int], ConfigSpace]


class PciConfig:
    """Configuration space of one function via mechanism #1."""

    def __init__(self, qtest: QtestClient, bus: int, dev: int, fn: int) -> None:
        if not (0 <= bus < 256 and 0 <= dev < 32 and 0 <= fn < 8):
            raise PeerError(f"bad PCI address {bus}:{dev}.{fn}")
        self.qt = qtest
        self._base = 0x80000000 | bus << 16 | dev << 11 | fn << 8

    def _select(self, off: int) -> None:
        if not 0 <= off < 256:
            raise PeerError(f"config offset {off:#x} outside the 256-byte header")
        self.qt.outl(CONFIG_ADDRESS, self._base | (off & 0xFC))

    def read8(self, off: int) -> int:
        self._select(off)
        return self.qt.inb(CONFIG_DATA + (off & 3))

    def read16(self, off: int) -> int:
        self._select(off)
        return self.qt.inw(CONFIG_DATA + (off & 2))

    def read32(self, off: int) -> int:
        self._select(off)
        return self.qt.inl(CONFIG_DATA)

    def write8(self, off: int, v: int) -> None:
        self._select(off)
        self.qt.outb(CONFIG_DATA + (off & 3), v)

    def write16(self, off: int, v: int) -> None:
        self._select(off)
        self.qt.outw(CONFIG_DATA + (off & 2), v)

    def write32(self, off: int, v: int) -> None:
        self._select(off)
        self.qt.outl(CONFIG_DATA, v)


def enumerate_bus(config: ConfigFactory, bus: int = 0) -> list[PciFunction]:
    """Every function present on ``bus`` (vendor id not 0xffff)."""
    found: list[PciFunction] = []
    for dev in range(32):
        for fn in range(8):
            cfg = config(bus, dev, fn)
            ids = cfg.read32(0)
            if ids & 0xFFFF == 0xFFFF:
                if fn == 0:
                    break
                continue
            class_rev = cfg.read32(0x08)
            f = PciFunction(bus, dev, fn, ids & 0xFFFF, ids >> 16, class_rev >> 8)
            if fn == 0 and not cfg.read8(PCI_HEADER_TYPE) & 0x80:
                found.append(f)
                break  # single-function device
            found.append(f)
    return found


def probe_bars(cfg: ConfigSpace) -> dict[int, Bar]:
    """Size every BAR of a type-0 header by writing all-ones (PCI 3.0 6.2.5.1)."""
    bars: dict[int, Bar] = {}
    i = 0
    while i < 6:
        off = PCI_BAR0 + 4 * i
        orig = cfg.read32(off)
        cfg.write32(off, 0xFFFFFFFF)
        mask = cfg.read32(off)
        cfg.write32(off, orig)
        if mask == 0:
            i += 1
            continue
        if mask & 1:  # I/O BAR
            size = (~(mask & 0xFFFFFFFC) & 0xFFFF) + 1
            bars[i] = Bar(i, "io", False, False, size)
            i += 1
            continue
        is64 = (mask >> 1) & 3 == 2
        pref = bool(mask & 8)
        full = mask & 0xFFFFFFF0
        if is64:
            if i == 5:
                raise PeerError("64-bit BAR5 has no upper half")
            hi_off = off + 4
            hi_orig = cfg.read32(hi_off)
            cfg.write32(hi_off, 0xFFFFFFFF)
            hi = cfg.read32(hi_off)
            cfg.write32(hi_off, hi_orig)
            full |= hi << 32
            size = ((~full) & ((1 << 64) - 1)) + 1
        else:
            size = ((~full) & 0xFFFFFFFF) + 1
        bars[i] = Bar(i, "mem", is64, pref, size)
        i += 2 if is64 else 1
    return bars


def assign_bars(
    cfg: ConfigSpace, bars: dict[int, Bar], mem_window: int = MEM_WINDOW, io_window: int = IO_WINDOW
) -> dict[int, Bar]:
    """Place memory BARs from ``mem_window`` and I/O BARs from ``io_window`` (PCI addresses),
    naturally aligned."""
    mem, io = mem_window, io_window
    out: dict[int, Bar] = {}
    for i, b in sorted(bars.items(), key=lambda kv: -kv[1].size):
        off = PCI_BAR0 + 4 * i
        if b.kind == "io":
            addr = (io + b.size - 1) // b.size * b.size
            io = addr + b.size
            if io > 0x10000:
                raise PeerError(f"I/O BAR{i} of {b.size:#x} bytes does not fit below 64 KiB")
            cfg.write32(off, addr)
        else:
            addr = (mem + b.size - 1) // b.size * b.size
            mem = addr + b.size
            if mem > 0xFEC00000:
                raise PeerError(f"memory BAR{i} of {b.size:#x} bytes does not fit the window")
            cfg.write32(off, addr & 0xFFFFFFFF)
            if b.is64:
                cfg.write32(off + 4, addr >> 32)
        out[i] = Bar(i, b.kind, b.is64, b.prefetchable, b.size, addr)
    return out


def walk_capabilities(cfg: ConfigSpace) -> tuple[list[tuple[int, int]], list[VirtioCap]]:
    """All capability ids and the virtio vendor capabilities (bounded, loop-safe)."""
    ids: list[tuple[int, int]] = []
    caps: list[VirtioCap] = []
    if not cfg.read16(PCI_STATUS) & STATUS_CAP_LIST:
        return ids, caps
    ptr = cfg.read8(PCI_CAP_PTR) & 0xFC
    seen: set[int] = set()
    while ptr:
        if ptr in seen or ptr < 0x40 or len(seen) >= 48:
            raise PeerError(f"capability list loops or points into the header at {ptr:#x}")
        seen.add(ptr)
        cap_id = cfg.read8(ptr)
        nxt = cfg.read8(ptr + 1) & 0xFC
        ids.append((ptr, cap_id))
        if cap_id == CAP_ID_VENDOR:
            # struct virtio_pci_cap: vndr, next, len, cfg_type, bar, id, pad[2], offset, length
            cap_len = cfg.read8(ptr + 2)
            cfg_type = cfg.read8(ptr + 3)
            bar = cfg.read8(ptr + 4)
            offset = cfg.read32(ptr + 8)
            length = cfg.read32(ptr + 12)
            mult = cfg.read32(ptr + 16) if cfg_type == VirtioCfgType.NOTIFY and cap_len >= 20 else 0
            caps.append(VirtioCap(ptr, cfg_type, bar, offset, length, mult))
        ptr = nxt
    return ids, caps


def find_balloon(
    qtest: QtestClient,
    bus: int = 0,
    *,
    config: ConfigFactory | None = None,
    mem_window: int = MEM_WINDOW,
    io_window: int = IO_WINDOW,
) -> PciFunction:
    """Find the virtio-balloon function, assign its BARs, enable it, read its capabilities.

    ``config`` reaches configuration space (default: mechanism #1 ports of ``qtest``).
    """
    if config is None:

        def config(b: int, d: int, f: int) -> ConfigSpace:
            return PciConfig(qtest, b, d, f)

    for f in enumerate_bus(config, bus):
        if f.vendor == VENDOR_VIRTIO and f.device in (
            DEVICE_BALLOON_TRANSITIONAL,
            DEVICE_BALLOON_MODERN,
        ):
            break
    else:
        raise PeerError(f"no virtio-balloon (1af4:1002 or 1af4:1045) on PCI bus {bus}")
    cfg = config(f.bus, f.dev, f.fn)
    sub = cfg.read32(PCI_SUBSYSTEM_VENDOR)
    f.subsys_vendor, f.subsys_id = sub & 0xFFFF, sub >> 16
    f.bars = assign_bars(cfg, probe_bars(cfg), mem_window, io_window)
    cfg.write16(PCI_COMMAND, cfg.read16(PCI_COMMAND) | CMD_IO | CMD_MEM | CMD_MASTER)
    f.cap_ids, f.caps = walk_capabilities(cfg)
    f.msix = read_msix(cfg, f.cap_ids)
    return f


def read_msix(cfg: ConfigSpace, cap_ids: list[tuple[int, int]]) -> MsixCap | None:
    """The function's MSI-X capability, if it has one."""
    for off, cap_id in cap_ids:
        if cap_id == CAP_ID_MSIX:
            control = cfg.read16(off + 2)
            table = cfg.read32(off + 4)
            pba = cfg.read32(off + 8)
            return MsixCap(off, (control & 0x7FF) + 1, table & 7, table & ~7, pba & 7, pba & ~7)
    return None


def msix_enable(qtest: QtestClient, fn: PciFunction, messages: list[tuple[int, int]]) -> None:
    """Program the first ``len(messages)`` table entries (address, data), unmasked, and set
    MSI-X Enable (PCI Local Bus 3.0 6.8.2.3): an interrupt then writes ``data`` at ``address``.
    """
    m = fn.msix
    if m is None:
        raise PeerError(f"device {fn.bdf} has no MSI-X capability")
    if len(messages) > m.table_size:
        raise PeerError(f"{len(messages)} MSI-X vectors asked, the table has {m.table_size}")
    bar = fn.bars.get(m.table_bar)
    if bar is None or bar.kind != "mem" or bar.addr == 0:
        raise PeerError(f"MSI-X table BAR{m.table_bar} is not an assigned memory BAR")
    cfg = PciConfig(qtest, fn.bus, fn.dev, fn.fn)
    for i, (address, data) in enumerate(messages):
        entry = bar.addr + m.table_offset + 16 * i
        qtest.writel(entry, address & 0xFFFFFFFF)
        qtest.writel(entry + 4, address >> 32)
        qtest.writel(entry + 8, data)
        qtest.writel(entry + 12, 0)  # vector control: unmasked
    control = cfg.read16(m.cap_offset + 2)
    cfg.write16(m.cap_offset + 2, (control | MSIX_ENABLE) & ~MSIX_FUNCTION_MASK)
