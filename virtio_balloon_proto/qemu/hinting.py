"""Free page hinting against QEMU (VIRTIO 1.2 5.5.6.5): the host side through a real migration.

QEMU publishes a command id only from migration's precopy notifier
(``virtio_balloon_free_page_hint_notify``): after a dirty-bitmap sync of a running VM it moves
``free_page_hint_cmd_id`` to a new id (0x80000001, 0x80000002, ...: it starts counting at
VIRTIO_BALLOON_FREE_PAGE_HINT_CMD_ID_MIN and increments before publishing), and when the
migration ends or is cancelled it publishes DONE (1).  So :class:`HintHost`:

* ``start()``: sets ``max-bandwidth`` to 32 KiB/s (QEMU sends a zero page as a 9-byte
  record, so even an untouched 256 MiB guest takes ~18 s: no second bitmap sync during a case)
  and migrates to ``exec:cat > /dev/null``; the first sync publishes an id, which it waits for
  in device config (offset 8);
* ``done()``: ``migrate_cancel``; waits for DONE.

QEMU's STOP (0) is transient: it is set before a bitmap sync and replaced by a new id (or DONE
when the VM is stopped) in the same call, so no host action makes a driver see it; a case that
needs the host to publish STOP cannot run on QEMU.

Command ids are opaque tokens chosen by the device; the driver echoes what it read.  A
recorded case carries its recording device's ids, so :class:`IdMap` renames QEMU's k-th id to
the case's k-th id in what the driver reads (config offset 8) and back in what it echoes (the
4-byte out-buffer on the free page queue): the replayed driver behaves as the recorded one did
(an echo of an older id stays an echo of an older id).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..errors import PeerError
from .qmp import QmpError

if TYPE_CHECKING:
    from .device import QemuBalloon

CMD_ID_STOP, CMD_ID_DONE = 0, 1
CMD_ID_OFFSET = 8
#: bytes/s while hinting.  QEMU sends an untouched (zero) page as a 9-byte record, so a 256 MiB
#: guest still takes ~18 s to migrate at this rate: no second bitmap sync during a case
HINT_BANDWIDTH = 32 << 10
MIGRATE_URI = "exec:cat > /dev/null"


class IdMap:
    """Device command id <-> the case's command id (published ids only; STOP/DONE as is)."""

    def __init__(self) -> None:
        self.to_case: dict[int, int] = {}
        self.to_device: dict[int, int] = {}

    def add(self, device_id: int, case_id: int) -> None:
        self.to_case[device_id] = case_id
        self.to_device[case_id] = device_id

    def config(self, offset: int, data: bytes) -> bytes:
        """A config read as the case's device would have answered it (offset 8 renamed)."""
        lo, hi = max(offset, CMD_ID_OFFSET), min(offset + len(data), CMD_ID_OFFSET + 4)
        if hi - lo != 4:
            return data  # a partial read of the id is passed through unrenamed
        i = CMD_ID_OFFSET - offset
        v = int.from_bytes(data[i : i + 4], "little")  # config space is LE (5.5.4)
        if v not in self.to_case:
            return data
        return data[:i] + self.to_case[v].to_bytes(4, "little") + data[i + 4 :]

    def echo(self, data: bytes, byteorder: str) -> bytes:
        """A driver's 4-byte command-id buffer, renamed to the device's id."""
        if len(data) != 4:
            return data
        v = int.from_bytes(data, byteorder)  # type: ignore[arg-type]
        if v not in self.to_device:
            return data
        return self.to_device[v].to_bytes(4, byteorder)  # type: ignore[arg-type]


class HintHost:
    """The host side of hinting on one QEMU session (which must be running: ``cont``)."""

    def __init__(self, session: QemuBalloon, timeout: float = 5.0) -> None:
        self.s = session
        self.timeout = timeout
        self.migrating = False

    def cmd_id(self) -> int:
        return int.from_bytes(self.s.config_read(CMD_ID_OFFSET, 4), "little")

    def _wait(self, ok: str, pred: object) -> int:
        deadline = time.monotonic() + self.timeout
        while True:
            v = self.cmd_id()
            if callable(pred) and pred(v):
                return v
            if time.monotonic() > deadline:
                st = self.s.try_qmp("query-migrate")
                raise PeerError(
                    f"QEMU did not publish {ok} within {self.timeout:g} s "
                    f"(free_page_hint_cmd_id {v:#x}, migration {st!r})",
                    where="free page hinting",
                )
            time.sleep(0.002)

    def start(self) -> int:
        """Start a migration; the device's new command id (>= 2) once published."""
        if self.migrating:
            raise PeerError("a migration is already running", where="free page hinting")
        before = self.cmd_id()
        try:
            self.s.qmp("migrate-set-parameters", {"max-bandwidth": HINT_BANDWIDTH})
            self.s.qmp("migrate", {"uri": MIGRATE_URI})
        except QmpError as e:
            raise PeerError(f"cannot start the migration: {e}", where="free page hinting") from None
        self.migrating = True
        return self._wait("a command id", lambda v: v >= 2 and v != before)

    def done(self) -> int:
        """Cancel the migration: QEMU publishes DONE."""
        if self.migrating:
            self.s.qmp("migrate_cancel")
            self.migrating = False
        return self._wait("DONE", lambda v: v == CMD_ID_DONE)
