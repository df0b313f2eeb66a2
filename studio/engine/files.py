"""Files the engine reads and writes when the user names a path: only regular files in, never a half file out.

Reading: a path the user gives may be a FIFO (opening it blocks until someone writes), a character device such as
/dev/zero (reads never end) or a directory. `open_regular` opens without blocking and checks the opened file
itself (fstat, so a path swapped after a check cannot slip through), then reads normally.

Writing: `atomic_write` writes into a temporary file in the destination's folder and renames it over the
destination (os.replace, atomic within one filesystem), so a reader sees the old file or the new one, never a part.
Each writer's temporary name is unique (`.NAME.PID.RANDOM.partial`), so two processes writing the same output
never share one; a temporary file whose writer process is gone (killed mid-write) is removed by the next write
to the same destination.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import UserError

PARTIAL_SUFFIX = ".partial"
LEGACY_STALE_SECONDS = 3600  # a `NAME.partial` (the old fixed temporary name) this old belongs to no live writer


class FileProblem(UserError, OSError):
    """A path that cannot be read or written as asked; the message names it. Also an OSError, so code that
    already handles a failed write as one (the app's save actions, autosave) handles this too."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular(path: str | Path, what: str = "file") -> os.stat_result:
    """The stat of `path` (symlinks followed) when it is a regular file; otherwise a FileProblem naming it."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileProblem(f"{what} not found: {path}") from None
    except OSError as exc:
        raise FileProblem(f"cannot open {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise FileProblem(f"cannot open {what} {path}: it is {_kind(info.st_mode)}, not a regular file")
    return info


def open_regular(path: str | Path, what: str = "file") -> BinaryIO:
    """Open `path` for reading in binary mode, refusing anything but a regular file without ever blocking."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileProblem(f"{what} not found: {path}") from None
    except OSError as exc:
        raise FileProblem(f"cannot open {what} {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem(f"cannot open {what} {path}: it is {_kind(info.st_mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def signature(info: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies one version of a file: device, inode, size, modification time (ns)."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def file_signature(path: str | Path) -> tuple[int, int, int, int] | None:
    try:
        return signature(os.stat(path))
    except OSError:
        return None


# -- writing ------------------------------------------------------------------------------------------------------

def check_writable(path: str | Path, what: str = "output") -> Path:
    """Refuse, before any work, an output that could not be written: a missing or read-only folder, a folder
    where a file should go. The file itself may exist (it is replaced)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise FileProblem(f"cannot write {what} {path}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise FileProblem(f"cannot write {what} {path}: {parent} is not a folder")
    if path.is_dir():
        raise FileProblem(f"cannot write {what} {path}: it is an existing folder")
    if path.exists() and not path.is_file():
        raise FileProblem(f"cannot write {what} {path}: it exists and is not a regular file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FileProblem(f"cannot write {what} {path}: the folder {parent} is not writable")
    return path


def _partial_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[0-9a-f]+{re.escape(PARTIAL_SUFFIX)}$")


def partial_path(path: Path) -> Path:
    """A temporary name beside `path` that no other writer uses: `.NAME.PID.RANDOM.partial` (hidden)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def clean_stale_partials(path: Path) -> list[Path]:
    """Remove temporary files left beside `path` by writers that were killed: ours whose process is gone, and the
    old fixed `NAME.partial` once it is an hour old. A live writer's temporary file is never touched."""
    removed = []
    pattern = _partial_pattern(path.name)
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for sibling in siblings:
        match = pattern.match(sibling.name)
        stale = match is not None and not _alive(int(match.group(1)))
        if sibling.name == path.name + PARTIAL_SUFFIX:
            try:
                stale = time.time() - sibling.stat().st_mtime > LEGACY_STALE_SECONDS
            except OSError:
                stale = False
        if stale:
            try:
                sibling.unlink()
                removed.append(sibling)
            except OSError:
                pass
    return removed


def atomic_write(path: str | Path, write: Callable[[Path], None], what: str = "file") -> None:
    """Call `write(tmp)` to fill a unique temporary file beside `path`, then rename it onto `path`. On any failure
    the temporary file is removed and `path` is as it was; an OSError becomes a FileProblem naming `path`."""
    path = Path(path)
    clean_stale_partials(path)
    tmp = partial_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise FileProblem(f"cannot write {what} {path}: {reason}") from None
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass
