"""Devices for tests/test_matrix.py: a column process that dies in the middle of its run, one
that hangs holding a QEMU."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from virtio_balloon_proto.models.device import ReferenceDevice


class DiesOnThirdCase(ReferenceDevice):
    """The reference device, except that the whole process is SIGKILLed when the third case
    starts (a segfaulting in-process device, an OOM kill): its column must end ``crashed``
    with the two cases it finished, and cost no other column."""

    starts = 0

    def start(self, setup: Any) -> Any:
        DiesOnThirdCase.starts += 1
        if DiesOnThirdCase.starts == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().start(setup)


class HangsHoldingQemu(ReferenceDevice):
    """Starts a real QEMU balloon for the case, then never answers (a device stuck in a
    syscall): only the matrix's column timeout ends it, and QEMU must go with it."""

    def start(self, setup: Any) -> Any:
        from virtio_balloon_proto.conformance.qemu_adapter import QemuDevice

        self.qemu = QemuDevice()
        self.qemu.start(setup)
        threading.Event().wait()  # forever
        raise AssertionError("unreachable")


class HangsForever(ReferenceDevice):
    """Never comes back from start (no QEMU): a column that is still running whenever the
    matrix is interrupted."""

    def start(self, setup: Any) -> Any:
        threading.Event().wait()  # forever
        raise AssertionError("unreachable")
