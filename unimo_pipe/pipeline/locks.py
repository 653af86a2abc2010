"""Exclusive advisory locks (flock) on files in an output folder, so a double-launched job cannot corrupt it.

The kernel releases a flock when its holder exits, however it exits, so a lock file left behind by a dead
process is simply taken over; the pid and host written into it only say who holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path


class LockBusy(Exception):
    """Another live process holds the lock; `holder` is what it wrote into the lock file."""

    def __init__(self, path: Path, holder: dict):
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is held by {describe_holder(holder)}")


def describe_holder(holder: dict) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"


@contextlib.contextmanager
def hold_lock(path: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if need be) for the enclosed block.

    Raises LockBusy when another process holds it and `wait` is false; otherwise waits for it.
    """
    fd, writable = _open_lock_file(path)
    if fd is None:  # a read-only folder with no lock file: no process can write there, so none is needed
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockBusy(path, _read_holder(fd)) from None
        if writable:
            _write_holder(fd)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, so every process locks the same inode


def _open_lock_file(path: Path) -> tuple[int | None, bool]:
    """(fd, writable); on a read-only mount the existing file is locked read-only (flock allows it)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644), True
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
    try:
        return os.open(path, os.O_RDONLY), False
    except FileNotFoundError:
        return None, False


def _write_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)


def _read_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:  # the holder is writing it right now
        return {}
    return holder if isinstance(holder, dict) else {}
