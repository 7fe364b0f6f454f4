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


def write_halt_bios(path: Path) -> Path:
    try:
        path.write_bytes(halt_bios())
    except OSError as e:
        raise UsageError(f"cannot write halt firmware to {path}: {e.strerror}") from None
    return path
