"""A 64 KiB "halt" firmware: lets virtual time flow while the vCPU does nothing.

Debian's QEMU has no qtest accelerator (no ``clock_step``), so timer-driven device behaviour
(the balloon's stats polling) needs a running machine.  With this image as ``-bios`` and
``-icount shift=0,sleep=off`` the CPU halts at the reset vector with interrupts off, and the
virtual clock jumps straight to the next timer deadline (research/qemu-peer.md, option A).

x86 starts at physical 0xfffffff0, which is offset 0xfff0 of a 64 KiB BIOS mapped at the top of
4 GiB: ``cli`` (fa), ``hlt`` (f4), ``jmp -3`` (eb fd, back to the hlt).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError

BIOS_SIZE = 64 << 10
RESET_OFFSET = 0xFFF0
HALT_CODE = bytes([0xFA, 0xF4, 0xEB, 0xFD])


def halt_bios() -> bytes:
    image = bytearray(BIOS_SIZE)
    image[RESET_OFFSET : RESET_OFFSET + len(HALT_CODE)] = HALT_CODE
    return bytes(image)


#: ppc64 pseries: the firmware image is loaded at guest address 0 and the CPU starts at 0x100,
#: big-endian, in real mode.  The loop parks the CPU with the H_CEDE hypercall (PAPR; QEMU's
#: spapr halts the vCPU until an interrupt) after pushing the decrementer ~4 s away; the
#: decrementer (0x900) and external (0x500) interrupt vectors run the same loop.
PPC64_CEDE_LOOP = (
    0x3C807FFF,  # lis   r4, 0x7fff
    0x7C9603A6,  # mtdec r4
    0x386000E0,  # li    r3, 0xe0          (H_CEDE)
    0x44000022,  # sc    1                 (hypercall)
    0x4BFFFFF0,  # b     .-16
)
PPC64_VECTORS = (0x100, 0x500, 0x900, 0x980)
PPC64_IMAGE_SIZE = 0x1000


def halt_bios_ppc64() -> bytes:
    image = bytearray(PPC64_IMAGE_SIZE)
    code = b"".join(w.to_bytes(4, "big") for w in PPC64_CEDE_LOOP)
    for v in PPC64_VECTORS:
        image[v : v + len(code)] = code
    return bytes(image)


def write_halt_bios(path: Path, arch: str = "x86_64") -> Path:
    try:
        path.write_bytes(halt_bios_ppc64() if arch == "ppc64" else halt_bios())
    except OSError as e:
        raise UsageError(f"cannot write halt firmware to {path}: {e.strerror}") from None
    return path
