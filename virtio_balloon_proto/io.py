"""The one output contract for every file the tool writes (traces, reports, vectors, plots).

* ``-`` is standard output.
* An existing path that is not a regular file (a character device such as ``/dev/null`` or
  ``/dev/full``, a FIFO, a socket, ``/dev/stdout``) is opened and written in place, never
  replaced.
* A regular file is replaced atomically: a temporary file is written beside it, fsync'ed and
  renamed over it, so readers see the old content or the new, never half of it.
* A symlink is written through: the temporary file goes next to the link's final *target*,
  which is what gets replaced; the link stays a link.
* A new file gets 0666 minus the umask; a replaced file keeps its mode.
* Errors (:class:`OSError`) name the user's path, never the temporary file.
* :func:`check_writable` tells before long work starts whether the output can be written.

``open_output`` is the streaming form (used by :class:`~virtio_balloon_proto.trace.TraceWriter`);
``write_atomic`` writes one buffer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

STDOUT = "-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _existing_mode(path: str) -> int | None:
    """``st_mode`` of what ``path`` names after following symlinks; None if nothing is there."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        return None


def is_stream(path: str | os.PathLike[str]) -> bool:
    """True for ``-`` and for existing non-regular files: written in place, in one go, and
    better written once at the end than rewritten after every step."""
    p = os.fspath(path)
    if p == STDOUT:
        return True
    mode = _existing_mode(p)
    return mode is not None and not stat.S_ISREG(mode)


def _user_error(exc: OSError, user_path: str) -> OSError:
    """The same error, naming the user's path instead of a temporary file."""
    return OSError(exc.errno or errno.EIO, exc.strerror or str(exc), user_path)


def _replace_target(p: str) -> Path:
    """The regular file an atomic write replaces: ``p``, or the final target of a symlink."""
    if os.path.islink(p):
        return Path(os.path.realpath(p))
    return Path(p)


def _target_dir(p: str) -> Path:
    """The directory the output ``p`` is written in, created if missing -- but never through
    a symlink: ``-o LINK`` to a file in a missing directory created that directory wherever
    the link points (as root: /nonexistent_dir_qa/), so it is refused (qa)."""
    target = _replace_target(p)
    if os.path.islink(p) and not target.parent.is_dir():
        raise OSError(errno.ENOENT, f"is a symlink to {target}, in a directory that does not "
                      "exist (not created through a symlink)", p)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise :class:`OSError` naming ``path`` if an output there cannot be written.

    Cheap and side-effect free except for creating missing parent directories (as the write
    itself would): call it before long work (booting a guest, a whole conformance run).
    """
    p = os.fspath(path)
    if p == STDOUT:
        return
    mode = _existing_mode(p)
    if mode is not None and stat.S_ISDIR(mode):
        raise OSError(errno.EISDIR, "is a directory", p)
    if mode is not None and not stat.S_ISREG(mode):
        if not os.access(p, os.W_OK):
            raise OSError(errno.EACCES, "not writable", p)
        return
    try:
        directory = _target_dir(p)
        fd, tmp = tempfile.mkstemp(prefix=".vbproto-probe.", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise _user_error(exc, p) from None


class Output:
    """A binary output following the contract; ``commit()`` publishes, ``abort()`` discards.

    Use as a context manager: committed when the block ends without an exception, aborted
    otherwise (a regular file keeps its old content; a stream keeps what was written).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._tmp: Path | None = None
        self._target: Path | None = None
        self._closed = False
        self._own = True
        p = self.path
        try:
            if p == STDOUT:
                sys.stdout.flush()
                self.file: BinaryIO = sys.stdout.buffer
                self._own = False
                return
            mode = _existing_mode(p)
            if mode is not None and stat.S_ISDIR(mode):
                raise OSError(errno.EISDIR, "is a directory", p)
            if mode is not None and not stat.S_ISREG(mode):
                # a device, FIFO or socket: write in place, never replace it
                self.file = open(p, "wb")
                return
            target = _replace_target(p)
            _target_dir(p)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                       dir=target.parent)
            self._tmp, self._target = Path(tmp), target
            os.fchmod(fd, stat.S_IMODE(mode) if mode is not None else 0o666 & ~_umask())
            # 64 KiB: a trace is many ~2 KB lines (the default 8 KiB buffer made a write
            # call every 4 lines: 0.025 s of trace synth's 7 GiB inflate, 0.009 s so)
            self.file = os.fdopen(fd, "wb", buffering=1 << 16)
        except OSError as exc:
            raise _user_error(exc, p) from None

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as exc:
            raise _user_error(exc, self.path) from None

    def commit(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.file.flush()
            if self._tmp is None:
                if self._own:
                    self.file.close()
                return
            os.fsync(self.file.fileno())
            self.file.close()
            assert self._target is not None
            os.replace(self._tmp, self._target)
            self._tmp = None
        except OSError as exc:
            self._discard()
            raise _user_error(exc, self.path) from None
        with contextlib.suppress(OSError):  # make the rename itself durable
            dfd = os.open(self._target.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _discard(self) -> None:
        if self._own:
            with contextlib.suppress(OSError):
                self.file.close()
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()
            self._tmp = None

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._tmp is None:
            with contextlib.suppress(OSError):
                self.file.flush()
        self._discard()

    def __enter__(self) -> Output:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def open_output(path: str | os.PathLike[str]) -> Output:
    """Open ``path`` for writing under the contract (see the module docstring)."""
    return Output(path)


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` under the contract: ``-`` is stdout, a device or FIFO is
    written in place, a regular file (or a symlink's target) is replaced atomically.

    Missing parent directories are created.  Raises :class:`OSError` naming ``path``.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with open_output(path) as out:
        out.write(raw)
