"""Free page hinting against QEMU (VIRTIO 1.2 5.5.6.5): the host side through a real migration.

QEMU publishes a command id only from migration's precopy notifier
(``virtio_balloon_free_page_hint_notify``): after a dirty-bitmap sync of a running VM it moves
``free_page_hint_cmd_id`` to a new id (0x80000001, 0x80000002, ...: it starts counting at
VIRTIO_BALLOON_FREE_PAGE_HINT_CMD_ID_MIN and increments before publishing), and when the
migration ends or is cancelled it publishes DONE (1).  So :class:`HintHost`:

* ``start()``: fills up to 256 MiB of guest RAM above its first MiB with a non-zero pattern
  (qtest ``memset`` in 16 MiB chunks), sets ``max-bandwidth`` to 32 KiB/s and migrates to
  ``exec:cat > /dev/null``; the first sync publishes an id, which it waits for in device
  config (offset 8).  The fill keeps the migration from ending while a case runs: QEMU sends
  a zero page as a tiny record that the bandwidth limit hardly slows (measured: an untouched
  256 MiB guest migrated in under 25 s even at 1 KiB/s), and once a migration completes the
  VM stops, QEMU's hinting iothread blocks and hint buffers are no longer given back -- a
  loaded machine turned that into a false ``hint.acks-buffers`` in docs/matrix.  Non-zero
  pages go whole: 7.2 keeps to 32 KiB/s (8 pages a second: hours), 10.0.2 measured ~1.3 MB/s
  whatever ``max-bandwidth`` says (~320 pages a second), so 255 MiB lasts ~3 minutes there;
* ``done()``: ``migrate_cancel``; waits for DONE.

QEMU's STOP (0) is transient: ``migration_bitmap_sync_precopy`` sets it (BEFORE_BITMAP_SYNC)
and replaces it by a new id (or DONE when the VM is stopped: AFTER_BITMAP_SYNC) in one call
made under the big QEMU lock (7.2: ``ram_init_bitmaps`` and ``ram_save_pending`` take it around
the sync; 10.0: ``ram_save_setup`` runs under it, ``ram_state_pending_exact`` takes it), and
every config read -- a vCPU's MMIO/PIO or qtest's -- takes that lock too: no driver ever reads
a STOP a migration set.  (A driver does read 0 after it echoed the id: QEMU's get_config leaves
the field 0 while hinting is in progress, S_START, and after a device reset, S_STOP.)  A case
that needs the host to publish STOP cannot run on QEMU.

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
#: guest RAM (from 1 MiB up) filled with BUSY_PATTERN before migrating: see the module doc
BUSY_BYTES = 256 << 20
#: one qtest memset per chunk: each well inside the qtest reply timeout on a loaded machine
BUSY_CHUNK = 16 << 20
BUSY_PATTERN = 0x5A


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
        lo = 1 << 20
        hi = min(self.s.ram_size, lo + BUSY_BYTES)
        if hi > lo and not (lo < self.s.window_base + (15 << 20) and self.s.window_base < hi):
            for a in range(lo, hi, BUSY_CHUNK):  # non-zero pages: see the module doc
                self.s.mem.fill(a, min(BUSY_CHUNK, hi - a), BUSY_PATTERN)
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
