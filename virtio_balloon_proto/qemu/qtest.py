"""Client of QEMU's qtest text protocol (``softmmu/qtest.c``).

One command per line, one reply per command: ``OK [value]``, ``FAIL reason`` or ``ERR reason``.
Asynchronous ``IRQ raise N`` / ``IRQ lower N`` lines (after ``irq_intercept_in``) may arrive
before any reply; they are kept in :attr:`QtestClient.irq_events`, not mistaken for replies.

QEMU's qtest parser ``g_assert``s on malformed arguments (and aborts), so every argument is
checked here before it is sent.
"""

from __future__ import annotations

from collections import deque

from ..errors import PeerError, UsageError
from .channel import LineChannel

_WIDTH = {"b": 1, "w": 2, "l": 4, "q": 8}
#: the largest single read/write; bigger transfers are split (bounded reply lines)
CHUNK = 1 << 20


def _check(value: int, bits: int, what: str) -> None:
    if not 0 <= value < 1 << bits:
        raise UsageError(f"{what} {value:#x} does not fit in {bits} bits", field=what)


class QtestClient:
    def __init__(self, channel: LineChannel) -> None:
        self._ch = channel
        #: ("raise" | "lower", irq number), most recent last; bounded
        self.irq_events: deque[tuple[str, int]] = deque(maxlen=4096)
        self.commands = 0

    def command(self, line: str, timeout: float | None = None) -> str:
        """Send one command; return the text after ``OK`` (PeerError on FAIL/ERR)."""
        self._ch.send(line)
        self.commands += 1
        # a bounded number of async lines may precede the reply
        for _ in range(100_000):
            reply = self._ch.readline(timeout)
            if reply.startswith("IRQ "):
                parts = reply.split()
                if len(parts) == 3 and parts[2].isdigit():
                    self.irq_events.append((parts[1], int(parts[2])))
                continue
            if reply == "OK":
                return ""
            if reply.startswith("OK "):
                return reply[3:]
            raise self._ch.fail(f"qtest command {line[:60]!r} answered {reply[:200]!r}")
        raise self._ch.fail("too many asynchronous lines without a reply")

    def _int_reply(self, line: str) -> int:
        text = self.command(line)
        try:
            return int(text, 16 if text.startswith("0x") else 10)
        except ValueError:
            raise self._ch.fail(f"qtest {line!r}: expected a number, got {text[:80]!r}") from None

    # --- handshake -----------------------------------------------------------------------
    def handshake(self) -> str:
        """``endianness``: proves the socket speaks qtest; returns ``little`` or ``big``."""
        order = self.command("endianness")
        if order not in ("little", "big"):
            raise self._ch.fail(f"unexpected endianness reply {order!r}")
        return order

    # --- port I/O --------------------------------------------------------------------------
    def outb(self, port: int, value: int) -> None:
        self._out("b", port, value)

    def outw(self, port: int, value: int) -> None:
        self._out("w", port, value)

    def outl(self, port: int, value: int) -> None:
        self._out("l", port, value)

    def _out(self, w: str, port: int, value: int) -> None:
        _check(port, 16, "port")
        _check(value, 8 * _WIDTH[w], "value")
        self.command(f"out{w} {port:#x} {value:#x}")

    def inb(self, port: int) -> int:
        return self._in("b", port)

    def inw(self, port: int) -> int:
        return self._in("w", port)

    def inl(self, port: int) -> int:
        return self._in("l", port)

    def _in(self, w: str, port: int) -> int:
        _check(port, 16, "port")
        return self._int_reply(f"in{w} {port:#x}") & ((1 << 8 * _WIDTH[w]) - 1)

    # --- memory-mapped I/O and RAM -----------------------------------------------------------
    def writeb(self, addr: int, value: int) -> None:
        self._write("b", addr, value)

    def writew(self, addr: int, value: int) -> None:
        self._write("w", addr, value)

    def writel(self, addr: int, value: int) -> None:
        self._write("l", addr, value)

    def writeq(self, addr: int, value: int) -> None:
        self._write("q", addr, value)

    def _write(self, w: str, addr: int, value: int) -> None:
        _check(addr, 64, "address")
        _check(value, 8 * _WIDTH[w], "value")
        self.command(f"write{w} {addr:#x} {value:#x}")

    def readb(self, addr: int) -> int:
        return self._read("b", addr)

    def readw(self, addr: int) -> int:
        return self._read("w", addr)

    def readl(self, addr: int) -> int:
        return self._read("l", addr)

    def readq(self, addr: int) -> int:
        return self._read("q", addr)

    def _read(self, w: str, addr: int) -> int:
        _check(addr, 64, "address")
        return self._int_reply(f"read{w} {addr:#x}") & ((1 << 8 * _WIDTH[w]) - 1)

    def read(self, addr: int, size: int) -> bytes:
        """``size`` bytes of guest-physical memory at ``addr`` (qtest ``read``)."""
        _check(addr, 64, "address")
        if size < 0 or addr + size > 1 << 64:
            raise UsageError(f"read of {size} bytes at {addr:#x} is out of range", field="size")
        out = bytearray()
        while len(out) < size:
            n = min(CHUNK, size - len(out))
            text = self.command(f"read {addr + len(out):#x} {n:#x}")
            if not text.startswith("0x") or len(text) != 2 + 2 * n:
                raise self._ch.fail(f"qtest read of {n} bytes answered {len(text)} characters")
            try:
                out += bytes.fromhex(text[2:])
            except ValueError:
                raise self._ch.fail("qtest read reply is not hex") from None
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        """Store ``data`` at guest-physical ``addr`` (qtest ``write``)."""
        _check(addr, 64, "address")
        if addr + len(data) > 1 << 64:
            raise UsageError(f"write of {len(data)} bytes at {addr:#x} is out of range")
        for off in range(0, len(data), CHUNK):
            part = data[off : off + CHUNK]
            self.command(f"write {addr + off:#x} {len(part):#x} 0x{part.hex()}")

    def memset(self, addr: int, size: int, value: int) -> None:
        _check(addr, 64, "address")
        _check(value, 8, "value")
        if size < 0 or addr + size > 1 << 64:
            raise UsageError(f"memset of {size} bytes at {addr:#x} is out of range", field="size")
        if size:
            self.command(f"memset {addr:#x} {size:#x} {value:#x}")

    def irq_intercept_in(self, qom_path: str) -> None:
        if not qom_path or any(c.isspace() for c in qom_path):
            raise UsageError(f"bad QOM path {qom_path!r}")
        self.command(f"irq_intercept_in {qom_path}")

    def close(self) -> None:
        self._ch.close()


__all__ = ["CHUNK", "PeerError", "QtestClient"]
