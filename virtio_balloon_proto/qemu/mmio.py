"""virtio-mmio driven through qtest (VIRTIO 1.x 4.2): the transport of Firecracker-style VMMs.

QEMU's ``-M microvm`` has no PCI; it creates 24 virtio-mmio transports of 512 bytes each from
0xfeb00000 (``hw/i386/microvm.c``: VIRTIO_MMIO_BASE, one IRQ each) and plugs
``virtio-balloon-device`` into one of them (the last, in 7.2 and 10.0).  :func:`find_mmio_device`
scans that layout for MagicValue "virt" and DeviceID 5.  ``virtio-mmio.force-legacy`` picks the
register layout: Version 1 (legacy, 4.2.4: GuestPageSize / QueuePFN) or Version 2 (4.2.2:
QueueReady and 64-bit ring addresses).  All registers are little-endian 32-bit (4.2.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PeerError, UsageError
from .qtest import QtestClient
from .transport import LEGACY_ALIGN, NO_VECTOR, QueueAddrs, Transport

#: microvm's virtio-mmio window (QEMU hw/i386/microvm.c)
MICROVM_MMIO_BASE = 0xFEB00000
MICROVM_MMIO_STRIDE = 0x200
MICROVM_MMIO_COUNT = 24
MAGIC = 0x74726976  # "virt"
DEVICE_ID_BALLOON = 5


class _Reg:
    """Register offsets (VIRTIO 1.x 4.2.2, legacy-only ones from 4.2.4)."""

    MAGIC = 0x000
    VERSION = 0x004
    DEVICE_ID = 0x008
    VENDOR_ID = 0x00C
    DEVICE_FEATURES = 0x010
    DEVICE_FEATURES_SEL = 0x014
    DRIVER_FEATURES = 0x020
    DRIVER_FEATURES_SEL = 0x024
    GUEST_PAGE_SIZE = 0x028  # legacy
    QUEUE_SEL = 0x030
    QUEUE_NUM_MAX = 0x034
    QUEUE_NUM = 0x038
    QUEUE_ALIGN = 0x03C  # legacy
    QUEUE_PFN = 0x040  # legacy
    QUEUE_READY = 0x044
    QUEUE_NOTIFY = 0x050
    INTERRUPT_STATUS = 0x060
    INTERRUPT_ACK = 0x064
    STATUS = 0x070
    QUEUE_DESC_LOW = 0x080
    QUEUE_DRIVER_LOW = 0x090
    QUEUE_DEVICE_LOW = 0x0A0
    CONFIG_GENERATION = 0x0FC
    CONFIG = 0x100


#: microvm keeps RAM below this address and maps the rest from 4 GiB (QEMU x86 microvm)
MICROVM_LOWMEM = 0xC0000000


def microvm_args(kind: str) -> tuple[str, ...]:
    """Command-line pieces for a balloon on microvm's virtio-mmio (``mmio`` = Version 2)."""
    legacy = "true" if kind == "mmio-legacy" else "false"
    return ("-global", f"virtio-mmio.force-legacy={legacy}")


def microvm_ram_regions(ram_size: int) -> list[tuple[int, int]]:
    below = min(ram_size, MICROVM_LOWMEM)
    return [(0, below)] + ([(1 << 32, ram_size - below)] if ram_size > below else [])


@dataclass(frozen=True)
class MmioDevice:
    base: int
    version: int  # 1 legacy, 2 modern
    device_id: int
    vendor_id: int


def find_mmio_device(
    qtest: QtestClient,
    device_id: int = DEVICE_ID_BALLOON,
    base: int = MICROVM_MMIO_BASE,
    count: int = MICROVM_MMIO_COUNT,
    stride: int = MICROVM_MMIO_STRIDE,
) -> MmioDevice:
    """The first virtio-mmio transport in the layout whose DeviceID is ``device_id``."""
    for i in range(count):
        addr = base + i * stride
        if qtest.readl(addr + _Reg.MAGIC) != MAGIC:
            continue
        if qtest.readl(addr + _Reg.DEVICE_ID) == device_id:
            return MmioDevice(
                addr,
                qtest.readl(addr + _Reg.VERSION),
                device_id,
                qtest.readl(addr + _Reg.VENDOR_ID),
            )
    raise PeerError(
        f"no virtio-mmio device {device_id} among {count} transports at {base:#x} "
        f"(stride {stride:#x})"
    )


class MmioTransport(Transport):
    """Driver side of one virtio-mmio device, Version 1 (legacy) or 2."""

    def __init__(self, qtest: QtestClient, dev: MmioDevice) -> None:
        self.qt = qtest
        self.fn = None
        self.msix = False
        self.dev = dev
        self.base = dev.base
        if dev.version not in (1, 2):
            raise PeerError(f"virtio-mmio at {dev.base:#x} has unknown Version {dev.version}")
        self.kind = "mmio" if dev.version == 2 else "mmio-legacy"
        self.legacy = dev.version == 1
        if self.legacy:
            # 4.2.4: the driver writes the guest page size before using any queue
            self._w(_Reg.GUEST_PAGE_SIZE, LEGACY_ALIGN)

    def _r(self, off: int) -> int:
        return self.qt.readl(self.base + off)

    def _w(self, off: int, value: int) -> None:
        self.qt.writel(self.base + off, value)

    def get_status(self) -> int:
        return self._r(_Reg.STATUS) & 0xFF

    def set_status(self, status: int) -> None:
        self._w(_Reg.STATUS, status)
        if status == 0 and self.legacy:
            self._w(_Reg.GUEST_PAGE_SIZE, LEGACY_ALIGN)

    def device_features(self) -> int:
        word = 0
        for sel in (0, 1):
            self._w(_Reg.DEVICE_FEATURES_SEL, sel)
            word |= self._r(_Reg.DEVICE_FEATURES) << (32 * sel)
        return word

    def write_driver_features(self, features: int) -> None:
        for sel in (0, 1):
            self._w(_Reg.DRIVER_FEATURES_SEL, sel)
            self._w(_Reg.DRIVER_FEATURES, features >> (32 * sel) & 0xFFFFFFFF)

    def uses_features_ok(self, accepted: int) -> bool:
        return not self.legacy  # 3.1.2: legacy drivers skip FEATURES_OK

    def num_queues(self) -> int:
        # no register: count queues until one reports QueueNumMax 0 (4.2.3.2)
        for i in range(1024):
            if self.queue_max_size(i) == 0:
                return i
        return 1024

    def queue_max_size(self, index: int) -> int:
        self._w(_Reg.QUEUE_SEL, index)
        return self._r(_Reg.QUEUE_NUM_MAX)

    def setup_queue(self, index: int, addrs: QueueAddrs, vector: int | None = None) -> int:
        if vector is not None:
            raise UsageError("virtio-mmio has no MSI-X vectors")
        if self.queue_max_size(index) == 0:
            raise PeerError(f"queue {index} does not exist (QueueNumMax 0)", field="queue_num_max")
        self._w(_Reg.QUEUE_NUM, addrs.size)
        if self.legacy:
            avail = addrs.desc + 16 * addrs.size
            used = (avail + 6 + 2 * addrs.size + LEGACY_ALIGN - 1) // LEGACY_ALIGN * LEGACY_ALIGN
            if addrs.desc % LEGACY_ALIGN or addrs.driver != avail or addrs.device != used:
                raise UsageError(f"legacy mmio queue {index} needs the legacy ring layout")
            self._w(_Reg.QUEUE_ALIGN, LEGACY_ALIGN)
            self._w(_Reg.QUEUE_PFN, addrs.desc // LEGACY_ALIGN)
            return NO_VECTOR
        for off, val in (
            (_Reg.QUEUE_DESC_LOW, addrs.desc),
            (_Reg.QUEUE_DRIVER_LOW, addrs.driver),
            (_Reg.QUEUE_DEVICE_LOW, addrs.device),
        ):
            self._w(off, val & 0xFFFFFFFF)
            self._w(off + 4, val >> 32)
        self._w(_Reg.QUEUE_READY, 1)
        return NO_VECTOR

    def set_config_vector(self, vector: int) -> int:
        raise UsageError("virtio-mmio has no MSI-X vectors")

    def notify(self, index: int) -> None:
        self._w(_Reg.QUEUE_NOTIFY, index)

    def isr(self) -> int:
        """InterruptStatus, then acknowledged (4.2.3.4: the driver writes InterruptACK)."""
        status = self._r(_Reg.INTERRUPT_STATUS)
        if status:
            self._w(_Reg.INTERRUPT_ACK, status)
        return status

    def config_generation(self) -> int:
        return 0 if self.legacy else self._r(_Reg.CONFIG_GENERATION)

    def _cfg_read(self, off: int, width: int) -> int:
        a = self.base + _Reg.CONFIG + off
        return {1: self.qt.readb, 2: self.qt.readw, 4: self.qt.readl}[width](a)

    def _cfg_write(self, off: int, width: int, value: int) -> None:
        a = self.base + _Reg.CONFIG + off
        {1: self.qt.writeb, 2: self.qt.writew, 4: self.qt.writel}[width](a, value)
