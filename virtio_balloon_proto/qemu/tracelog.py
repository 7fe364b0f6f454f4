"""QEMU's ``-D`` trace log (``log`` trace backend) turned into per-buffer records.

QEMU 7.2's ``virtio_balloon_handle_output`` (hw/virtio/virtio-balloon.c) pops one element, then
walks its out-sg 4 bytes at a time: each PFN that hits RAM logs ``virtio_balloon_handle_output
section name: NAME gpa: 0x...``, each other one ``virtio_balloon_bad_addr 0x...``; then it
pushes the element with len 0 (``virtqueue_fill ... len 0``).  So every buffer is a
``virtqueue_pop`` line followed by its PFN lines, and its PFN array can be rebuilt exactly
(trailing bytes of a length that is not a multiple of 4 are never looked at, so they leave no
trace).  The ``vq`` pointer names the queue; ``virtio_queue_notify vdev .. n N vq P`` lines map
pointers to queue indices.

Lines are read incrementally (a session re-reads only what QEMU appended), complete lines only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TraceError

PAGE_SHIFT = 12  # VIRTIO_BALLOON_PFN_SHIFT

# optional "PID@SEC.USEC:" prefix (-msg timestamp=on) before the event name
_PREFIX = r"(?:\d+@\d+\.\d+:)?"
_RE = {
    name: re.compile(_PREFIX + pattern)
    for name, pattern in {
        "pop": r"virtqueue_pop vq (0x[0-9a-f]+) elem (0x[0-9a-f]+) in_num (\d+) out_num (\d+)",
        "fill": r"virtqueue_fill vq (0x[0-9a-f]+) elem (0x[0-9a-f]+) len (\d+) idx (\d+)",
        "handle": r"virtio_balloon_handle_output section name: (\S*) gpa: (0x[0-9a-f]+)",
        "bad": r"virtio_balloon_bad_addr (0x[0-9a-f]+)",
        "notify": r"virtio_queue_notify vdev (0x[0-9a-f]+) n (\d+) vq (0x[0-9a-f]+)",
        "status": r"virtio_set_status vdev (0x[0-9a-f]+) val (\d+)",
        "set_config": r"virtio_balloon_set_config actual: (\d+) oldactual: (\d+)",
        "get_config": r"virtio_balloon_get_config num_pages: (\d+) actual: (\d+)",
        "to_target": r"virtio_balloon_to_target balloon target: (0x[0-9a-f]+) num_pages: (\d+)",
    }.items()
}

#: a log line longer than this is not one of QEMU's trace lines; refuse rather than buffer it
MAX_LINE = 4096


@dataclass
class TraceBuffer:
    """One element QEMU popped, with what its handler logged."""

    line: int  # 1-based line of the virtqueue_pop
    vq: int  # VirtQueue pointer
    elem: int
    in_num: int
    out_num: int
    #: every 32-bit word the balloon handler read, in order, as PFNs (gpa >> 12)
    pfns: list[int] = field(default_factory=list)
    #: parallel to ``pfns``: False where QEMU logged bad_addr (not RAM) and skipped the page
    ok: list[bool] = field(default_factory=list)
    #: memory-region names of the good PFNs ("pc.ram")
    sections: set[str] = field(default_factory=set)
    used_len: int | None = None  # from virtqueue_fill
    used_slot: int | None = None
    used_line: int | None = None  # line of the virtqueue_fill
    queue: int | None = None  # resolved from the notify map

    @property
    def processed(self) -> list[int]:
        """PFNs QEMU acted on (handle_output lines), in order."""
        return [p for p, good in zip(self.pfns, self.ok, strict=True) if good]

    @property
    def bad(self) -> list[int]:
        return [p for p, good in zip(self.pfns, self.ok, strict=True) if not good]


@dataclass
class TraceLog:
    """Everything parsed so far from one ``-D`` file."""

    path: Path
    buffers: list[TraceBuffer] = field(default_factory=list)
    #: vq pointer -> queue index
    queues: dict[int, int] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)
    status_lines: list[tuple[int, int]] = field(default_factory=list)  # (line, value)
    set_config: list[tuple[int, int]] = field(default_factory=list)  # (actual, oldactual)
    set_config_lines: list[tuple[int, int]] = field(default_factory=list)  # (line, actual)
    to_target: list[tuple[int, int]] = field(default_factory=list)  # (target bytes, num_pages)
    notifies: list[int] = field(default_factory=list)  # queue index per notify
    other_lines: int = 0
    _offset: int = 0
    _lineno: int = 0
    _open: dict[int, TraceBuffer] = field(default_factory=dict)  # elem -> buffer awaiting fill
    _current: TraceBuffer | None = None

    def update(self) -> TraceLog:
        """Parse the lines QEMU appended since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self
        except OSError as e:
            raise TraceError(f"cannot read QEMU trace log {self.path}: {e.strerror}") from None
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) > MAX_LINE:
                raise TraceError(
                    f"line {self._lineno + 1} longer than {MAX_LINE} bytes", where=str(self.path)
                )
            return self
        self._offset += end + 1
        for raw in data[: end + 1].splitlines():
            self._lineno += 1
            self._line(raw.decode("utf-8", "replace"))
        for b in self.buffers:
            if b.queue is None:
                b.queue = self.queues.get(b.vq)
        return self

    def _line(self, text: str) -> None:
        if len(text) > MAX_LINE:
            raise TraceError(
                f"line longer than {MAX_LINE} bytes", where=f"{self.path}:{self._lineno}"
            )
        m = _RE["handle"].match(text)
        if m:
            self._pfn(int(m.group(2), 16), True, m.group(1))
            return
        m = _RE["bad"].match(text)
        if m:
            self._pfn(int(m.group(1), 16), False, None)
            return
        m = _RE["pop"].match(text)
        if m:
            vq, elem = int(m.group(1), 16), int(m.group(2), 16)
            buf = TraceBuffer(
                self._lineno, vq, elem, int(m.group(3)), int(m.group(4)),
                queue=self.queues.get(vq),
            )  # fmt: skip
            self.buffers.append(buf)
            self._open[elem] = buf
            self._current = buf
            return
        m = _RE["fill"].match(text)
        if m:
            elem = int(m.group(2), 16)
            if elem in self._open:
                done = self._open.pop(elem)
                done.used_len, done.used_slot = int(m.group(3)), int(m.group(4))
                done.used_line = self._lineno
            self._current = None
            return
        m = _RE["notify"].match(text)
        if m:
            n, vq = int(m.group(2)), int(m.group(3), 16)
            self.queues[vq] = n
            self.notifies.append(n)
            return
        m = _RE["status"].match(text)
        if m:
            self.statuses.append(int(m.group(2)))
            self.status_lines.append((self._lineno, int(m.group(2))))
            return
        m = _RE["set_config"].match(text)
        if m:
            self.set_config.append((int(m.group(1)), int(m.group(2))))
            self.set_config_lines.append((self._lineno, int(m.group(1))))
            return
        m = _RE["to_target"].match(text)
        if m:
            self.to_target.append((int(m.group(1), 16), int(m.group(2))))
            return
        self.other_lines += 1

    def _pfn(self, gpa: int, good: bool, section: str | None) -> None:
        buf = self._current
        if buf is None:
            raise TraceError(
                "balloon PFN line outside any popped buffer", where=f"{self.path}:{self._lineno}"
            )
        buf.pfns.append(gpa >> PAGE_SHIFT)
        buf.ok.append(good)
        if section is not None:
            buf.sections.add(section)

    @property
    def lines_read(self) -> int:
        """Complete lines parsed so far (a position to order host actions against)."""
        return self._lineno

    # --- views ---------------------------------------------------------------------------
    def on_queue(self, index: int) -> list[TraceBuffer]:
        return [b for b in self.buffers if b.queue == index]
