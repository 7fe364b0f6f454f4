"""Which QEMU machine a balloon session runs on, and where its RAM is.

* ``q35`` (x86_64): virtio-balloon-pci, modern or legacy; the session window may be a 16 MiB
  pc-dimm at 256 GiB, and further guest RAM regions become pc-dimms at their own addresses;
* ``microvm`` (x86_64): virtio-balloon-device on virtio-mmio (qemu/mmio.py); no hotplug, so
  the window is RAM right above the case's;
* ``pseries`` (ppc64, big-endian): virtio-balloon-pci behind the PHB (qemu/spapr.py); pseries
  DIMMs come in 256 MiB blocks.

:func:`machine_layout` gives the ``-machine``/``-m`` values, extra arguments and the RAM regions
qtest may touch; :func:`open_pci` finds the PCI balloon and its transport on q35 or pseries.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PeerError
from .memory import q35_ram_regions
from .mmio import microvm_args, microvm_ram_regions
from .pci import PciFunction, find_balloon
from .qtest import QtestClient
from .spapr import IO_WINDOW as SPAPR_IO_WINDOW
from .spapr import MEM_WINDOW as SPAPR_MEM_WINDOW
from .spapr import RtasPciConfig, SpaprBus
from .transport import Transport, open_transport

#: where the session window goes when it must be out of a recorded trace's way: a pc-dimm at
#: 256 GiB (PFN 0x4000000), far above any RAM a replayed case talks about
DIMM_BASE = 0x40_0000_0000
DIMM_SIZE = 16 << 20
SPAPR_DIMM_SIZE = 256 << 20
MMIO_TRANSPORTS = ("mmio", "mmio-legacy")
TRANSPORTS = ("modern", "legacy", *MMIO_TRANSPORTS)
#: TCG's qemu64 CPU has 40 physical address bits
TCG_PHYS_LIMIT = 1 << 40


@dataclass(frozen=True)
class MachineLayout:
    machine: str
    device_type: str
    memory: int | str  # the -m argument
    extra: tuple[str, ...]
    regions: tuple[tuple[int, int], ...]  # (gpa, size) of guest RAM, the window's included


def machine_layout(
    *,
    arch: str,
    kind: str,
    ram_size: int,
    window_dimm: bool,
    window_base: int,
    dimm_size: int,
    ram_dimms: tuple[tuple[int, int], ...] = (),
) -> MachineLayout:
    """The machine for ``arch``/``kind`` with ``ram_size`` of RAM from 0 (and ``ram_dimms``)."""
    memory: int | str = ram_size
    extra: tuple[str, ...] = ()
    machine, device_type = "q35", "virtio-balloon-pci"
    regions = q35_ram_regions(ram_size)
    if arch == "ppc64":
        machine = "pseries"
        regions = [(0, ram_size)]
    if kind in MMIO_TRANSPORTS:
        machine, device_type = "microvm", "virtio-balloon-device"
        extra = microvm_args(kind)
        if window_dimm:
            memory = window_base + DIMM_SIZE
        regions = microvm_ram_regions(int(memory))
    elif window_dimm:
        regions.append((DIMM_BASE, dimm_size))
        # -m SIZE,slots=N,maxmem=... reserves the hotplug range above 4 GiB; the window DIMM's
        # addr puts it where no PFN of a case goes (guest RAM stays SIZE)
        top = max([DIMM_BASE + dimm_size] + [a + n for a, n in ram_dimms])
        memory = f"{ram_size >> 20}M,slots={1 + len(ram_dimms)},maxmem={(top >> 30) + 64}G"
        extra = (
            "-object", f"memory-backend-ram,id=vbwin,size={dimm_size}",
            "-device", f"pc-dimm,id=vbdimm,memdev=vbwin,addr={DIMM_BASE:#x}",
        )  # fmt: skip
        for i, (gpa, size) in enumerate(ram_dimms):
            # a case's RAM region away from 0 (VIRTIO leaves the guest's layout open)
            extra += (
                "-object", f"memory-backend-ram,id=vbram{i},size={size}",
                "-device", f"pc-dimm,id=vbramdimm{i},memdev=vbram{i},addr={gpa:#x}",
            )  # fmt: skip
            regions.append((gpa, size))
        if top > TCG_PHYS_LIMIT:
            # more physical address bits, and an Intel vendor id: for an AMD one QEMU moves
            # device memory above the 1 TiB HyperTransport hole
            bits = min(52, top.bit_length() + 1)
            extra += ("-cpu", f"qemu64,vendor=GenuineIntel,phys-bits={bits}")
    return MachineLayout(machine, device_type, memory, extra, tuple(regions))


def open_pci(
    qtest: QtestClient, arch: str, kind: str, scratch: int
) -> tuple[PciFunction, Transport]:
    """The balloon's PCI function (BARs assigned, enabled) and its virtio-pci transport.

    On pseries configuration space goes through RTAS with its words at ``scratch`` (32 bytes
    of guest RAM), registers through the PHB windows, device config bytewise.
    """
    if arch == "x86_64":
        fn = find_balloon(qtest)
        return fn, open_transport(qtest, fn, kind)
    if arch != "ppc64":
        raise PeerError(f"no PCI layout for arch {arch!r}")

    def config(b: int, d: int, f: int) -> RtasPciConfig:
        return RtasPciConfig(qtest, b, d, f, scratch=scratch)

    fn = find_balloon(qtest, config=config, mem_window=SPAPR_MEM_WINDOW, io_window=SPAPR_IO_WINDOW)
    transport = open_transport(qtest, fn, kind, SpaprBus(qtest))
    transport.config_width = 1
    return fn, transport
