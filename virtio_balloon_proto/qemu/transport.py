"""virtio-pci transports driven through qtest: modern (VIRTIO 1.x 4.1.4) and legacy (4.1.4.8).

Both expose the same driver-side operations: reset, status, feature negotiation, queue setup,
notify, ISR and device-config access.  The balloon's config space is little-endian on both
(VIRTIO 1.x 5.5.4, "the balloon is the exception": legacy included), and the legacy registers
are x86 I/O ports, so no byte swapping happens here.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Protocol

from ..errors import PeerError, UsageError
from .pci import PciFunction, VirtioCfgType
from .qtest import QtestClient

# device status bits (VIRTIO 1.x 2.1)
ACKNOWLEDGE = 1
DRIVER = 2
DRIVER_OK = 4
FEATURES_OK = 8
DEVICE_NEEDS_RESET = 0x40
FAILED = 0x80

VERSION_1_BIT = 32
#: "no MSI-X vector" (VIRTIO 1.x 4.1.5.1.2.1)
NO_VECTOR = 0xFFFF


class _CommonCfg:
    """Offsets of ``struct virtio_pci_common_cfg`` (VIRTIO 1.x 4.1.4.3)."""

    DEVICE_FEATURE_SELECT = 0x00
    DEVICE_FEATURE = 0x04
    DRIVER_FEATURE_SELECT = 0x08
    DRIVER_FEATURE = 0x0C
    MSIX_CONFIG = 0x10
    NUM_QUEUES = 0x12
    DEVICE_STATUS = 0x14
    CONFIG_GENERATION = 0x15
    QUEUE_SELECT = 0x16
    QUEUE_SIZE = 0x18
    QUEUE_MSIX_VECTOR = 0x1A
    QUEUE_ENABLE = 0x1C
    QUEUE_NOTIFY_OFF = 0x1E
    QUEUE_DESC = 0x20
    QUEUE_DRIVER = 0x28
    QUEUE_DEVICE = 0x30


class _Legacy:
    """Offsets of the legacy I/O BAR (VIRTIO 1.x 4.1.4.8)."""

    HOST_FEATURES = 0x00
    GUEST_FEATURES = 0x04
    QUEUE_PFN = 0x08
    QUEUE_NUM = 0x0C
    QUEUE_SEL = 0x0E
    QUEUE_NOTIFY = 0x10
    STATUS = 0x12
    ISR = 0x13
    CONFIG = 0x14
    # with MSI-X enabled in the function (4.1.4.8: "when MSI-X capability is enabled"):
    CONFIG_VECTOR = 0x14
    QUEUE_VECTOR = 0x16
    CONFIG_MSIX = 0x18


#: legacy vring alignment (VIRTIO 1.x 2.7.2 "Legacy Interfaces: A Note on Virtqueue Layout")
LEGACY_ALIGN = 4096


@dataclass(frozen=True)
class QueueAddrs:
    desc: int
    driver: int  # avail ring
    device: int  # used ring
    size: int


class Transport(abc.ABC):
    """Driver side of one virtio-pci function."""

    kind: str

    #: widest device-config access (1 on a big-endian guest: bytes, as Linux's vp_get does)
    config_width = 4

    def __init__(self, qtest: QtestClient, fn: PciFunction, bus: RegisterBus | None = None) -> None:
        #: register accesses (qtest itself on x86; a swapping PHB window on pseries)
        self.qt: RegisterBus = qtest if bus is None else bus
        self.fn: PciFunction | None = fn
        #: MSI-X is enabled in the function (msix_enable): vector registers are in use
        self.msix = False

    # --- status --------------------------------------------------------------------------
    @abc.abstractmethod
    def get_status(self) -> int: ...

    @abc.abstractmethod
    def set_status(self, status: int) -> None: ...

    def reset(self) -> None:
        self.set_status(0)
        # VIRTIO 1.x 4.1.4.3.2: after writing 0 the driver waits for device_status to read 0;
        # QEMU resets synchronously, so one read must already show it
        if self.get_status() != 0:
            raise PeerError("device status is not 0 after reset", field="device_status")

    def add_status(self, bits: int) -> None:
        self.set_status(self.get_status() | bits)

    # --- features ------------------------------------------------------------------------
    @abc.abstractmethod
    def device_features(self) -> int: ...

    @abc.abstractmethod
    def write_driver_features(self, features: int) -> None: ...

    def negotiate(self, wanted: int) -> tuple[int, int]:
        """Reset, ACKNOWLEDGE|DRIVER, accept ``wanted & offered``, FEATURES_OK (modern).

        Returns (offered, accepted).  PeerError if the device refuses FEATURES_OK.
        """
        self.reset()
        self.set_status(ACKNOWLEDGE)
        self.add_status(DRIVER)
        offered = self.device_features()
        accepted = wanted & offered
        self.write_driver_features(accepted)
        if self.uses_features_ok(accepted):
            self.add_status(FEATURES_OK)
            # VIRTIO 1.x 3.1.1 step 6: re-read status; FEATURES_OK still set means accepted
            if not self.get_status() & FEATURES_OK:
                raise PeerError(
                    f"device refused FEATURES_OK for features {accepted:#x}",
                    field="device_status",
                )
        return offered, accepted

    def uses_features_ok(self, accepted: int) -> bool:
        return True

    def driver_ok(self) -> None:
        self.add_status(DRIVER_OK)

    # --- queues --------------------------------------------------------------------------
    @abc.abstractmethod
    def num_queues(self) -> int: ...

    @abc.abstractmethod
    def queue_max_size(self, index: int) -> int: ...

    @abc.abstractmethod
    def setup_queue(self, index: int, addrs: QueueAddrs, vector: int | None = None) -> int:
        """Lay queue ``index`` out and enable it; with MSI-X, map it to ``vector`` first.

        Returns the vector the device read back (VIRTIO 1.x 4.1.5.1.2: NO_VECTOR if it could
        not allocate one), NO_VECTOR without MSI-X.
        """

    @abc.abstractmethod
    def set_config_vector(self, vector: int) -> int:
        """Map configuration changes to an MSI-X vector; returns the device's read-back."""

    @abc.abstractmethod
    def notify(self, index: int) -> None: ...

    @abc.abstractmethod
    def isr(self) -> int:
        """Read (and so clear) the ISR status byte."""

    # --- device config -------------------------------------------------------------------
    @abc.abstractmethod
    def _cfg_read(self, off: int, width: int) -> int: ...

    @abc.abstractmethod
    def _cfg_write(self, off: int, width: int, value: int) -> None: ...

    def config_read(self, offset: int, size: int) -> bytes:
        """Device-config bytes, read with the widest naturally aligned accesses (LE)."""
        if offset < 0 or size < 0 or offset + size > 0x1000:
            raise UsageError(f"config read {offset:#x}+{size} is outside config space")
        out = bytearray()
        off = offset
        end = offset + size
        while off < end:
            w = _width(off, end - off, self.config_width)
            out += self._cfg_read(off, w).to_bytes(w, "little")
            off += w
        return bytes(out)

    def config_write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > 0x1000:
            raise UsageError(f"config write {offset:#x}+{len(data)} is outside config space")
        off = 0
        while off < len(data):
            w = _width(offset + off, len(data) - off, self.config_width)
            self._cfg_write(offset + off, w, int.from_bytes(data[off : off + w], "little"))
            off += w


def _width(off: int, left: int, widest: int = 4) -> int:
    for w in (4, 2):
        if w <= widest and off % w == 0 and left >= w:
            return w
    return 1


class RegisterBus(Protocol):
    """Port and memory-mapped register accesses (``QtestClient`` has them all)."""

    def inb(self, port: int) -> int: ...
    def inw(self, port: int) -> int: ...
    def inl(self, port: int) -> int: ...
    def outb(self, port: int, value: int) -> None: ...
    def outw(self, port: int, value: int) -> None: ...
    def outl(self, port: int, value: int) -> None: ...
    def readb(self, addr: int) -> int: ...
    def readw(self, addr: int) -> int: ...
    def readl(self, addr: int) -> int: ...
    def writeb(self, addr: int, value: int) -> None: ...
    def writew(self, addr: int, value: int) -> None: ...
    def writel(self, addr: int, value: int) -> None: ...


class ModernTransport(Transport):
    """VIRTIO 1.x virtio-pci: common/ISR/device/notify structures in a memory BAR."""

    kind = "modern"

    def __init__(self, qtest: QtestClient, fn: PciFunction, bus: RegisterBus | None = None) -> None:
        super().__init__(qtest, fn, bus)
        self.common = fn.cap_addr(VirtioCfgType.COMMON)
        self.isr_addr = fn.cap_addr(VirtioCfgType.ISR)
        self.device_cfg = fn.cap_addr(VirtioCfgType.DEVICE)
        self.notify_base = fn.cap_addr(VirtioCfgType.NOTIFY)
        notify = fn.cap(VirtioCfgType.NOTIFY)
        assert notify is not None  # cap_addr raised otherwise
        self.notify_mult = notify.notify_off_multiplier
        self._notify_addr: dict[int, int] = {}

    def get_status(self) -> int:
        return self.qt.readb(self.common + _CommonCfg.DEVICE_STATUS)

    def set_status(self, status: int) -> None:
        self.qt.writeb(self.common + _CommonCfg.DEVICE_STATUS, status)

    def device_features(self) -> int:
        word = 0
        for sel in (0, 1):
            self.qt.writel(self.common + _CommonCfg.DEVICE_FEATURE_SELECT, sel)
            word |= self.qt.readl(self.common + _CommonCfg.DEVICE_FEATURE) << (32 * sel)
        return word

    def write_driver_features(self, features: int) -> None:
        for sel in (0, 1):
            self.qt.writel(self.common + _CommonCfg.DRIVER_FEATURE_SELECT, sel)
            self.qt.writel(
                self.common + _CommonCfg.DRIVER_FEATURE, features >> (32 * sel) & 0xFFFFFFFF
            )

    def config_generation(self) -> int:
        return self.qt.readb(self.common + _CommonCfg.CONFIG_GENERATION)

    def num_queues(self) -> int:
        return self.qt.readw(self.common + _CommonCfg.NUM_QUEUES)

    def _select(self, index: int) -> None:
        self.qt.writew(self.common + _CommonCfg.QUEUE_SELECT, index)

    def queue_max_size(self, index: int) -> int:
        self._select(index)
        return self.qt.readw(self.common + _CommonCfg.QUEUE_SIZE)

    def set_config_vector(self, vector: int) -> int:
        self.qt.writew(self.common + _CommonCfg.MSIX_CONFIG, vector)
        return self.qt.readw(self.common + _CommonCfg.MSIX_CONFIG)

    def setup_queue(self, index: int, addrs: QueueAddrs, vector: int | None = None) -> int:
        self._select(index)
        if self.qt.readw(self.common + _CommonCfg.QUEUE_SIZE) == 0:
            raise PeerError(f"queue {index} does not exist (queue_size 0)", field="queue_size")
        self.qt.writew(self.common + _CommonCfg.QUEUE_SIZE, addrs.size)
        for off, val in (
            (_CommonCfg.QUEUE_DESC, addrs.desc),
            (_CommonCfg.QUEUE_DRIVER, addrs.driver),
            (_CommonCfg.QUEUE_DEVICE, addrs.device),
        ):
            # 64-bit fields as two 32-bit accesses (VIRTIO 1.x 4.1.3.1: drivers split them)
            self.qt.writel(self.common + off, val & 0xFFFFFFFF)
            self.qt.writel(self.common + off + 4, val >> 32)
        off = self.qt.readw(self.common + _CommonCfg.QUEUE_NOTIFY_OFF)
        self._notify_addr[index] = self.notify_base + off * self.notify_mult
        got = NO_VECTOR
        if vector is not None:
            self.qt.writew(self.common + _CommonCfg.QUEUE_MSIX_VECTOR, vector)
            got = self.qt.readw(self.common + _CommonCfg.QUEUE_MSIX_VECTOR)
        self.qt.writew(self.common + _CommonCfg.QUEUE_ENABLE, 1)
        return got

    def queue_enabled(self, index: int) -> bool:
        self._select(index)
        return bool(self.qt.readw(self.common + _CommonCfg.QUEUE_ENABLE))

    def notify(self, index: int) -> None:
        addr = self._notify_addr.get(index)
        if addr is None:
            # notify on a queue we never set up: still a legal write (queue_notify_off of it)
            self._select(index)
            addr = self.notify_base + (
                self.qt.readw(self.common + _CommonCfg.QUEUE_NOTIFY_OFF) * self.notify_mult
            )
        self.qt.writew(addr, index)

    def isr(self) -> int:
        return self.qt.readb(self.isr_addr)

    def _cfg_read(self, off: int, width: int) -> int:
        a = self.device_cfg + off
        return {1: self.qt.readb, 2: self.qt.readw, 4: self.qt.readl}[width](a)

    def _cfg_write(self, off: int, width: int, value: int) -> None:
        a = self.device_cfg + off
        {1: self.qt.writeb, 2: self.qt.writew, 4: self.qt.writel}[width](a, value)


class LegacyTransport(Transport):
    """Legacy virtio-pci through the I/O BAR0 (transitional device)."""

    kind = "legacy"

    def __init__(self, qtest: QtestClient, fn: PciFunction, bus: RegisterBus | None = None) -> None:
        super().__init__(qtest, fn, bus)
        bar = fn.bars.get(0)
        if bar is None or bar.kind != "io":
            raise PeerError(
                f"device {fn.bdf} has no legacy I/O BAR0 (modern-only device, disable-legacy=on?)"
            )
        self.io = bar.addr

    def get_status(self) -> int:
        return self.qt.inb(self.io + _Legacy.STATUS)

    def set_status(self, status: int) -> None:
        self.qt.outb(self.io + _Legacy.STATUS, status)

    def device_features(self) -> int:
        return self.qt.inl(self.io + _Legacy.HOST_FEATURES)

    def write_driver_features(self, features: int) -> None:
        if features >> 32:
            raise UsageError(
                f"legacy transport carries feature bits 0-31 only, not {features:#x}",
                field="guest_features",
            )
        self.qt.outl(self.io + _Legacy.GUEST_FEATURES, features)

    def uses_features_ok(self, accepted: int) -> bool:
        # VIRTIO 1.x 3.1.2: legacy drivers skip FEATURES_OK
        return False

    def num_queues(self) -> int:
        # no register: count queues until one reports size 0 (bounded by QEMU's 1024 queues)
        for i in range(1024):
            if self.queue_max_size(i) == 0:
                return i
        return 1024

    def queue_max_size(self, index: int) -> int:
        self.qt.outw(self.io + _Legacy.QUEUE_SEL, index)
        return self.qt.inw(self.io + _Legacy.QUEUE_NUM)

    def set_config_vector(self, vector: int) -> int:
        if not self.msix:
            raise UsageError("legacy vector registers exist only with MSI-X enabled")
        self.qt.outw(self.io + _Legacy.CONFIG_VECTOR, vector)
        return self.qt.inw(self.io + _Legacy.CONFIG_VECTOR)

    def setup_queue(self, index: int, addrs: QueueAddrs, vector: int | None = None) -> int:
        size = self.queue_max_size(index)
        if size == 0:
            raise PeerError(f"queue {index} does not exist (queue_num 0)", field="queue_num")
        if addrs.size != size:
            raise UsageError(f"legacy queue {index} has fixed size {size}, not {addrs.size}")
        # the legacy layout is implied by one PFN: avail right after desc, used 4096-aligned
        avail = addrs.desc + 16 * size
        used = (avail + 6 + 2 * size + LEGACY_ALIGN - 1) // LEGACY_ALIGN * LEGACY_ALIGN
        if addrs.desc % LEGACY_ALIGN or addrs.driver != avail or addrs.device != used:
            raise UsageError(
                f"legacy queue {index} needs the legacy layout at a 4096-aligned base "
                f"(desc {addrs.desc:#x}, avail {avail:#x}, used {used:#x})"
            )
        pfn = addrs.desc // LEGACY_ALIGN
        if pfn >> 32:
            raise UsageError(f"legacy queue address {addrs.desc:#x} needs more than 32-bit PFN")
        got = NO_VECTOR
        if vector is not None:
            if not self.msix:
                raise UsageError("legacy vector registers exist only with MSI-X enabled")
            self.qt.outw(self.io + _Legacy.QUEUE_VECTOR, vector)
            got = self.qt.inw(self.io + _Legacy.QUEUE_VECTOR)
        self.qt.outl(self.io + _Legacy.QUEUE_PFN, pfn)
        return got

    def notify(self, index: int) -> None:
        self.qt.outw(self.io + _Legacy.QUEUE_NOTIFY, index)

    def isr(self) -> int:
        return self.qt.inb(self.io + _Legacy.ISR)

    @property
    def config_base(self) -> int:
        # VIRTIO 1.x 4.1.4.8: the device-specific part follows the two vector registers
        # when MSI-X is enabled
        return self.io + (_Legacy.CONFIG_MSIX if self.msix else _Legacy.CONFIG)

    def _cfg_read(self, off: int, width: int) -> int:
        p = self.config_base + off
        return {1: self.qt.inb, 2: self.qt.inw, 4: self.qt.inl}[width](p)

    def _cfg_write(self, off: int, width: int, value: int) -> None:
        p = self.config_base + off
        {1: self.qt.outb, 2: self.qt.outw, 4: self.qt.outl}[width](p, value)


def open_transport(
    qtest: QtestClient, fn: PciFunction, kind: str, bus: RegisterBus | None = None
) -> Transport:
    if kind == "modern":
        return ModernTransport(qtest, fn, bus)
    if kind == "legacy":
        return LegacyTransport(qtest, fn, bus)
    raise UsageError(f"unknown virtio-pci transport {kind!r} (modern or legacy)", field="transport")
