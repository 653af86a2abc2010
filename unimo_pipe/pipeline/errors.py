"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path


class UserError(Exception):
    """A mistake in the command, the config or the inputs; the message names the problem and the fix."""


class ConfigError(UserError):
    """Every problem found in a configuration, reported together."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__(self._summary())

    def _summary(self) -> str:
        if len(self.errors) == 1:
            return self.errors[0]
        return f"{len(self.errors)} config errors: " + "; ".join(self.errors)


class CorruptFileError(UserError, ValueError):
    """A file the pipeline wrote (or reads) is damaged; a ValueError too, for callers that rebuild on one."""


class RecordError(Exception):
    """One input record is bad; the runner counts it under `reason` and the run goes on."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
INTERRUPTED_MESSAGE = "unimo-pipe: interrupted; rerun the same command to resume"

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_ALLOWED = (errno.EACCES, errno.EPERM)


def describe_os_error(exc: OSError) -> str | None:
    """One line naming the path and the fix for an OSError the user's environment caused, else None (a bug)."""
    path = Path(exc.filename) if exc.filename is not None else None
    if exc.errno in _DISK_FULL:
        where = f"the device holding {_folder_of(path)}" if path else "the device being written"
        return (f"no space left on {where}: free some space (or choose another --out), then rerun the same "
                "command to resume (finished shards are kept)")
    if path is None:
        return None
    if exc.errno == errno.EIO:
        return (f"input/output error at {path}: the disk may be failing or full; check it, then rerun the same "
                "command to resume")
    if exc.errno == errno.EROFS:
        return f"{path} is on a read-only file system: choose a writable --out"
    if exc.errno in _NOT_ALLOWED:
        return f"permission denied: {path}: make it readable/writable for this user, or choose another path"
    if exc.errno == errno.EISDIR:
        return f"{path} is a folder, not a file: pass a file"
    if exc.errno == errno.ENOTDIR:
        return f"{_file_among_parents(path)} is a file, not a folder, so {path} cannot be used: choose another path"
    return None


@contextlib.contextmanager
def naming_folder(folder: Path) -> Iterator[None]:
    """OSErrors that name no path (a write on a full disk) name `folder`, the output being written."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno in (*_DISK_FULL, errno.EIO):
            exc.filename = str(folder)
        raise


def _folder_of(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def _file_among_parents(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path
