"""The project's one exception hierarchy.

Every error says *where* (a field name and/or a byte offset, a descriptor index, a trace line)
and, where a spec or seed rule applies, the clause id from the catalog in
``conformance/clauses.toml``.  The CLI turns any :class:`VBProtoError` into one readable line
and exit status 2.

Structural impossibilities (bytes too short, a length pointing past the bytes present, a
descriptor loop) are errors.  Input that parses but breaks a rule is *not* an error: it is
decoded and reported as a :class:`~virtio_balloon_proto.findings.Finding`.
"""

from __future__ import annotations


class VBProtoError(Exception):
    """Base class of every error this package raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        offset: int | None = None,
        clause: str | None = None,
        where: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.offset = offset
        self.clause = clause
        #: free-form location that is neither a field nor a byte offset
        #: ("descriptor 3", "trace line 17", "qtest reply")
        self.where = where

    def __str__(self) -> str:
        parts: list[str] = []
        if self.where is not None:
            parts.append(self.where)
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        if self.offset is not None:
            parts.append(f"at byte {self.offset}")
        head = " ".join(parts)
        text = f"{head}: {self.message}" if head else self.message
        if self.clause is not None:
            text += f" [{self.clause}]"
        return text


class DecodeError(VBProtoError):
    """Bytes that cannot be decoded at all (too short, a length past the end, ...)."""


class EncodeError(VBProtoError):
    """Values that cannot be put on the wire (out of range for their field, ...)."""


class RingError(DecodeError):
    """A virtqueue that cannot be walked (loop, chain too long, address outside memory)."""


class TraceError(VBProtoError):
    """A trace file that does not follow docs/trace-format.md (names the line)."""


class UsageError(VBProtoError):
    """Parameters that do not fit together (unknown profile, word size 48, ...)."""


class PeerError(VBProtoError):
    """An implementation under test (or QEMU) misbehaved at the transport level."""


class PeerStartError(PeerError):
    """The peer could not be brought up at all -- its program is missing or not executable,
    exits or stays silent before its control channels answer (QEMU: before the qtest and QMP
    handshakes complete), is a build for another machine.  Nothing of the device was reached,
    so a case that meets this *could not be run* (runner outcome ``error``, exit 2): never a
    device conformance failure, never a known-failure candidate.  A peer that started and
    then died is a plain :class:`PeerError` (the device's failure)."""
