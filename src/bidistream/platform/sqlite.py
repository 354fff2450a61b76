"""The one way the platform opens SQLite and writes to it.

Every table lives in one file; each store holds one connection under a lock (calls are short and
the event loop is the only writer, so a pool would only add contention). WAL lets ``bidistream
endpoints`` read one instant from another process while the gateway writes; ``synchronous=FULL``
because a restart must find every committed transition.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["BUSY_TIMEOUT_MS", "Database"]

# How long a writer waits for another process's write lock before failing.
BUSY_TIMEOUT_MS = 5000


class Database:
    """A connection, its lock, and the schema applied on open."""

    def __init__(self, path: Path | str, schema: str) -> None:
        self.conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.lock = threading.RLock()
        with self.lock:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self.conn.executescript(schema)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
