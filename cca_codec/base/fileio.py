"""Atomic file output: no reader sees a half-written file; a failed write leaves nothing behind.

Data goes to a hidden temporary file (``.<name>.<random>.part``) in the destination's
directory, is flushed and fsync'ed, and only then moved onto the destination in one step.
Every ``OSError`` is reported as :class:`~cca_codec.base.errors.InputError` with a one-line
message naming the destination.
"""
from __future__ import annotations

import errno
import os
import secrets
import sys
from pathlib import Path

from cca_codec.base.errors import InputError

STDOUT = "-"
"""The path that means "standard output" to :func:`write_output`."""
STDIN = "-"
"""The path that means "standard input" to :func:`read_input`."""

_TEMP_ATTEMPTS = 16
_LINK_UNSUPPORTED = frozenset({errno.EPERM, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})


def atomic_write(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically.

    With ``overwrite=True`` an existing file is replaced (``os.replace``). With
    ``overwrite=False`` the file is published with ``os.link``, which fails rather than
    clobber a file that appeared meanwhile; where hard links are unsupported this falls
    back to check-then-replace. On any exception, ``KeyboardInterrupt`` included, the
    temporary file is removed and ``path`` is left as it was.

    Raises:
        InputError: the directory is missing or not writable, ``path`` is a directory,
            or ``path`` exists and ``overwrite`` is False.
    """
    target = os.fspath(path)
    try:
        fd, temp = _create_temp(target)
    except OSError as exc:
        raise InputError(_describe(target, exc)) from exc
    try:
        try:
            _write_all(fd, data)
            _publish(temp, target, overwrite)
        except OSError as exc:
            raise InputError(_describe(target, exc)) from exc
    except BaseException:
        _remove_quietly(temp)
        raise


def write_output(path: str, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path``, or to standard output (flushed) when ``path`` is ``"-"``.

    Files go through :func:`atomic_write`; ``overwrite`` does not apply to standard output.

    Raises:
        InputError: the output cannot be written.
    """
    if path != STDOUT:
        atomic_write(path, data, overwrite=overwrite)
        return
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except OSError as exc:
        raise InputError(f"cannot write to standard output: {exc.strerror or exc}") from exc


def _create_temp(target: str) -> tuple[int, str]:
    """Create and open (write-only, exclusive) a fresh temporary file next to ``target``.

    Created with mode 0o666 so the process umask decides the final permissions, as for
    an ordinary ``open(target, "wb")``. Returns ``(file descriptor, temporary path)``.
    """
    directory, name = os.path.split(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_TEMP_ATTEMPTS):
        temp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.part")
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not create a unique temporary file", directory)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, fsync it, and close it."""
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def _publish(temp: str, target: str, overwrite: bool) -> None:
    """Move the finished temporary file onto ``target`` in one step."""
    if overwrite:
        os.replace(temp, target)
        return
    try:
        os.link(temp, target)
    except FileExistsError:
        raise InputError(f"{target} exists (--no-overwrite)") from None
    except OSError as exc:
        if exc.errno not in _LINK_UNSUPPORTED:
            raise
        _check_then_replace(temp, target)
        return
    os.unlink(temp)


def _check_then_replace(temp: str, target: str) -> None:
    """Fallback of ``overwrite=False`` for file systems without hard links (not race-free)."""
    if os.path.lexists(target):
        raise InputError(f"{target} exists (--no-overwrite)")
    os.replace(temp, target)


def _remove_quietly(path: str) -> None:
    """Delete ``path`` if it still exists, ignoring errors (used while already failing)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _describe(target: str, exc: OSError) -> str:
    """One-line, user-facing reason why ``target`` could not be written."""
    if isinstance(exc, FileNotFoundError):
        directory = os.path.dirname(target) or "."
        return f"cannot write {target}: directory {directory} does not exist"
    if isinstance(exc, PermissionError):
        return f"cannot write {target}: permission denied"
    if isinstance(exc, IsADirectoryError) or os.path.isdir(target):
        return f"cannot write {target}: it is a directory"
    return f"cannot write {target}: {exc.strerror or exc}"


def read_file(path: str | os.PathLike, what: str = "a file") -> bytes:
    """The bytes of `path`; a missing, unreadable or directory path is a one-line InputError
    (`what` names what was expected, e.g. "an image")."""
    label = os.fspath(path)
    try:
        return Path(label).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{label} not found") from None
    except IsADirectoryError:
        raise InputError(f"{label} is a directory, not {what}") from None
    except PermissionError:
        raise InputError(f"{label}: permission denied") from None
    except OSError as exc:
        raise InputError(f"cannot read {label}: {exc.strerror or exc}") from None


def read_input(path: str) -> bytes:
    """The content of ``path``, or all of standard input for ``"-"`` (InputError when unreadable)."""
    if path == STDIN:
        return sys.stdin.buffer.read()
    return read_file(path)
