"""The files the ``xdrop`` command reads and writes, handled as ``cp`` and ``tee`` would.

A path is followed through symbolic links to its target. A regular file (or a new one) is
written whole or not at all: a temporary file beside the target, renamed over it, which keeps
the replaced file's permissions and owner, and gives a new file the permissions the umask allows.
A FIFO or a character device (``/dev/stdout``, a shell's ``>(jq .)``) is written straight into,
as a stream. Anything else (a folder, a block device, a socket) is refused. Every failure is a
:class:`FileError` whose message is one line naming the path: the command prints it and exits
with status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


class FileError(Exception):
    """A file named on the command line that cannot be read or written; the message is one line
    that names the path and says why."""


def check_output(text: str) -> Path:
    """The path ``text`` if the command can write there, checked before anything runs: a regular
    file or a new one in an existing folder it may write in, or a FIFO or character device it may
    write into (through symbolic links alike). Raises :class:`FileError` otherwise."""
    if not text:  # Path("") is the current folder
        raise FileError("'': an empty name names no file")
    path = Path(text)
    try:
        status = _stat(path)
        if status is not None and not _writable_kind(status.st_mode):
            raise FileError(_wrong_kind(text, status.st_mode))
        if status is not None and _is_stream(status.st_mode):
            writable = os.access(path, os.W_OK)
        else:  # replaced through a temporary file beside it: its folder must take one
            target = Path(os.path.realpath(path))
            folder = target.parent
            if _stat(folder) is None:
                shown = path.parent if not os.path.islink(path) else folder
                raise FileError(f"{text!r}: the folder {str(shown)!r} does not exist")
            writable = os.access(folder, os.W_OK | os.X_OK) and (
                status is None or os.access(target, os.W_OK)
            )
        if not writable:
            raise FileError(f"{text!r}: no permission to write there")
    except NotADirectoryError:
        raise FileError(_not_a_folder(text, path)) from None
    except (OSError, ValueError) as error:  # a name too long, a loop of links, a NUL byte
        raise FileError(f"{text!r}: {_reason(error)}") from None
    return path


def write_file(path: Path, write: Callable[[IO[Any]], object], binary: bool = False) -> None:
    """Write ``path`` through ``write`` (given a text file in UTF-8, or a ``binary`` one),
    following symbolic links: a regular file (or a new one) is replaced whole, so that a reader
    never sees half of it and a failed write leaves what was there; a FIFO or character device is
    written into. Raises :class:`FileError`."""
    text = str(path)
    mode, encoding = ("wb", None) if binary else ("w", "utf-8")
    try:
        # The kind is asked of the path itself, which the system follows through every link: a
        # shell's >(...) names /dev/fd/63, a link to a pipe that has no path realpath could give.
        status = _stat(path)
        if status is not None and _is_stream(status.st_mode):
            with open(path, mode, encoding=encoding) as stream:
                write(stream)
        elif status is None or stat.S_ISREG(status.st_mode):
            target = Path(os.path.realpath(path))  # the file to replace, not the link to it
            _replace(target, _stat(target), write, mode, encoding)
        else:  # it changed since it was checked
            raise FileError(_wrong_kind(text, status.st_mode))
    except NotADirectoryError:
        raise FileError(_not_a_folder(text, path)) from None
    except OSError as error:  # a full disk, a folder gone since the check
        raise FileError(f"could not write {text!r}: {_reason(error)}") from None


def read_text(path: Path) -> str:
    """The text of ``path`` (UTF-8), a regular file or a FIFO or character device read to its end
    (``<(...)`` in a shell). Raises :class:`FileError` for a missing file, a folder, or bytes
    that are not UTF-8."""
    text = str(path)
    try:
        status = os.stat(path)
        if not _writable_kind(status.st_mode):  # the kinds that can be written can be read
            raise FileError(_wrong_kind(text, status.st_mode))
        with open(path, encoding="utf-8") as file:
            return file.read()
    except FileNotFoundError:
        raise FileError(f"{text!r}: no such file") from None
    except NotADirectoryError:
        raise FileError(_not_a_folder(text, path)) from None
    except UnicodeDecodeError as error:
        byte = error.object[error.start]
        raise FileError(
            f"{text!r} is not UTF-8 text (byte 0x{byte:02x} at offset {error.start})"
        ) from None
    except (OSError, ValueError) as error:
        raise FileError(f"{text!r}: {_reason(error)}") from None


def _replace(
    target: Path,
    status: os.stat_result | None,
    write: Callable[[IO[Any]], object],
    mode: str,
    encoding: str | None,
) -> None:
    """Write a temporary file beside ``target``, opened in ``mode``, and rename it over
    ``target`` (whose ``status`` is None when it does not exist yet)."""
    descriptor, temporary = _temporary_beside(target)
    try:
        with open(descriptor, mode, encoding=encoding) as file:
            if status is not None:  # the replaced file's owner and permissions, not ours
                _take_owner(file.fileno(), status)
                if hasattr(os, "fchmod"):
                    os.fchmod(file.fileno(), stat.S_IMODE(status.st_mode))
            write(file)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _temporary_beside(target: Path) -> tuple[int, str]:
    """A new file in ``target``'s folder, open for writing. It is created with mode 0o666 less the
    umask, as ``open(path, "w")`` creates a file (``mkstemp`` would make it 0o600); its name is
    short enough beside a target whose own name is as long as the system allows."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        name = target.with_name(f".{target.name[:32]}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(name, flags, 0o666), str(name)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free name for a temporary file", str(target.parent))


def _take_owner(descriptor: int, status: os.stat_result) -> None:
    """Give the file open as ``descriptor`` the owner and group in ``status`` where the system
    lets us (root may; others may only keep their own)."""
    if not hasattr(os, "fchown"):
        return
    mine = os.fstat(descriptor)
    if (mine.st_uid, mine.st_gid) != (status.st_uid, status.st_gid):
        with contextlib.suppress(PermissionError):
            os.fchown(descriptor, status.st_uid, status.st_gid)


def _stat(path: Path) -> os.stat_result | None:
    """``os.stat(path)``, or None where nothing is there."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _is_stream(mode: int) -> bool:
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _writable_kind(mode: int) -> bool:
    return stat.S_ISREG(mode) or _is_stream(mode)


KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _wrong_kind(text: str, mode: int) -> str:
    kind = next((name for test, name in KINDS if test(mode)), "not a regular file")
    through = f" (through a link to {os.path.realpath(text)!r})" if os.path.islink(text) else ""
    return f"{text!r} is {kind}{through}: name a file, a FIFO or a character device"


def _not_a_folder(text: str, path: Path) -> str:
    """Why ``path`` cannot be reached: a part of it that should be a folder is a file."""
    for part in reversed(path.parents):
        if part.exists() and not part.is_dir():
            return f"{text!r}: {str(part)!r} is a file, not a folder"
    return f"{text!r}: a part of it is not a folder"


def _reason(error: BaseException) -> str:
    """What went wrong, without the path the message already names."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
