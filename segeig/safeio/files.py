"""User-named files: opened without blocking, refused unless regular, read with a bound.

Why each step: ``open()`` of a FIFO blocks until a writer appears (forever, for
a hostile one), and reading ``/dev/zero`` or a 2 GB file "to check its size"
exhausts memory. So a file is opened with ``O_NONBLOCK`` (a FIFO opens at
once), ``fstat`` of the open descriptor (not of the name, which could be
swapped in between) must say it is a regular file, and its size is checked
before a byte is read; the read itself stops one byte past the bound in case
the file grows meanwhile.

Appending inside an output folder (:func:`open_append`) never follows a
symbolic link, refuses a folder on the way that resolves outside the output
folder, and starts on a fresh line when the file does not end with one (a run
that crashed mid-line must not swallow the next run's first record).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["UserFileError", "iter_lines", "open_append", "open_regular", "read_bounded"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UserFileError(ValueError):
    """A file that is not a regular file, is too large, cannot be read or does not parse.

    Attributes:
        errno: the ``errno`` of the failed system call (``errno.ENOENT``: the
            file does not exist), or None when the file exists but was refused.
    """

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def open_regular(path: str | os.PathLike[str], what: str = "file", *,
                 follow_symlinks: bool = True) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading, refusing anything but a regular file, without blocking.

    Args:
        path: the file.
        what: how messages call it (``"names file"``).
        follow_symlinks: False refuses a symbolic link (files inside an output folder).

    Returns:
        ``(file descriptor, its fstat)``; the caller closes the descriptor.

    Raises:
        UserFileError: missing or unreadable (``errno`` set), or not a regular
            file (a directory, FIFO, device, socket; a link with ``follow_symlinks=False``).
    """
    flags = os.O_RDONLY | _NONBLOCK | _CLOEXEC | (0 if follow_symlinks else _NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP and not follow_symlinks:
            raise UserFileError(f"{what} {path} is a symbolic link; refusing to follow it",
                                err.errno) from None
        raise UserFileError(f"cannot read the {what} {path}: {err.strerror or err}",
                            err.errno) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserFileError(f"{what} {path} is {_kind(info.st_mode)}, not a regular file; "
                                "give a file")
        os.set_blocking(fd, True)  # reads of a regular file never block; be plain again
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_bounded(path: str | os.PathLike[str], max_bytes: int, what: str = "file", *,
                 follow_symlinks: bool = True) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked before reading).

    Memory stays below ``max_bytes + 1`` whatever the file is; a FIFO or a
    device is refused at once.

    Raises:
        UserFileError: see :func:`open_regular`, or the file is larger than ``max_bytes``.
    """
    fd, info = open_regular(path, what, follow_symlinks=follow_symlinks)
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > max_bytes:
            raise UserFileError(f"{what} {path} is {_size(info.st_size)}, more than the "
                                f"{_size(max_bytes)} it may be; is it the right file?")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UserFileError(f"{what} {path} grew past {_size(max_bytes)} while being read")
    return data


def iter_lines(path: str | os.PathLike[str], what: str = "file", *,
               max_line_bytes: int = 1 << 20, follow_symlinks: bool = True
               ) -> Iterator[tuple[int, bytes | None]]:
    """Stream the lines of a regular file: ``(1-based line number, bytes without the
    newline)``, or ``(n, None)`` for a line longer than ``max_line_bytes`` (skipped
    without holding it in memory). Memory is bounded by one line, not the file.

    Raises:
        UserFileError: see :func:`open_regular` (when the iteration starts).
    """
    fd, _ = open_regular(path, what, follow_symlinks=follow_symlinks)
    with os.fdopen(fd, "rb") as handle:
        number = 0
        while True:
            line = handle.readline(max_line_bytes + 1)
            if not line:
                return
            number += 1
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # drop the rest of the long line
                    line = handle.readline(1 << 16)
                yield number, None
                continue
            yield number, line.rstrip(b"\r\n")


def open_append(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> IO[bytes]:
    """Open ``path`` (inside the folder ``root``) for appending, safely.

    Refused: ``path`` a symbolic link (it could point anywhere), a hard link
    shared with another name, anything but a regular file, and a ``path``
    whose folder resolves outside ``root`` (a symlinked subfolder). When the
    file does not end with a newline (a writer died mid-line), a newline is
    appended first, so every record written here starts on its own line.

    Args:
        path: the file (created with mode 0o666 minus the umask when missing).
        root: the output folder it must stay in.

    Returns:
        The binary file, positioned at its end (every write appends).

    Raises:
        UserFileError: with the path and the reason.
    """
    path = Path(path)
    base = Path(root).resolve()
    folder = path.parent.resolve()
    if not folder.is_relative_to(base):
        raise UserFileError(f"refusing to write {path}: its folder resolves to {folder}, "
                            f"outside {base} (a symlinked folder?)")
    target = folder / path.name
    # Read-write: the last byte is read to know whether a newline is missing.
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _NONBLOCK | _CLOEXEC
    if not _NOFOLLOW and target.is_symlink():  # no O_NOFOLLOW (Windows): check the name
        raise UserFileError(f"refusing to write through the symbolic link {target}")
    try:
        fd = os.open(target, flags, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserFileError(f"refusing to write through the symbolic link {target} (it "
                                f"could point outside {base}); delete it") from None
        raise UserFileError(f"cannot write {target}: {err.strerror or err}", err.errno) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserFileError(f"refusing to write {target}: it is {_kind(info.st_mode)}")
        if info.st_nlink > 1:
            raise UserFileError(f"refusing to write {target}: it is a hard link shared with "
                                "another name (which could be outside the folder); delete it")
        os.set_blocking(fd, True)
        if info.st_size and os.pread(fd, 1, info.st_size - 1) != b"\n":
            os.write(fd, b"\n")
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise
