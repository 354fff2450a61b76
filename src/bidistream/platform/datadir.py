"""One gateway per data dir: an exclusive lock taken before anything touches the store.

A second `bidistream run` on the same data dir used to rewrite the running gateway's store (its
endpoints went `SystemUpdating`) before failing to bind the port. The lock is an ``flock`` on a file
in the data dir, so it dies with its process (no stale lock after a SIGKILL); the file also names
the owner's pid and URL so the refusal can say where the running gateway is.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from bidistream.errors import ConflictError

__all__ = ["LOCK_NAME", "DataDirLock", "acquire"]

LOCK_NAME = "gateway.lock"


class DataDirLock:
    """Held for the gateway's lifetime; ``announce`` records where it listens."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def announce(self, url: str) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n{url}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor drops the flock


def _owner(path: Path) -> tuple[str, str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    pid = lines[0] if lines else "unknown"
    url = lines[1] if len(lines) > 1 else "not listening yet"
    return pid, url


def acquire(data_dir: Path) -> DataDirLock:
    """Take the data dir's lock or raise ConflictError naming the gateway that holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid, url = _owner(path)
        raise ConflictError(
            f"a gateway already runs on this data dir (pid {pid}, {url}); stop it first, "
            f"or give this one another --data-dir"
        ) from None
    lock = DataDirLock(path, fd)
    lock.announce("not listening yet")
    return lock
