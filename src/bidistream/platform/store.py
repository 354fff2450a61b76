"""The control plane's memory: one SQLite file in the data dir.

SQLite because it is embedded (nothing to start), transactional and survives a
gateway restart.  Every control-plane write is one transaction, so a crash in
the middle of CreateEndpoint leaves either no endpoint or a whole one, never a
half-written row.  Records are stored as a few indexed columns plus one JSON
document; the JSON holds exactly the request fields SageMaker echoes back in
Describe*, so the store never needs a migration to carry a new field.

The ``instances`` table is the live view of what runs, read by
``DescribeEndpoint``, ``bidistream endpoints`` (which may run in another
process) and checked against the router.  :meth:`Store.commit` writes an
endpoint's status transition and the instance rows it moves in one
transaction, at the moment they happen, so no reader ever sees an endpoint
``InService`` beside instances still ``starting``.  Only the hot per-session
counter (``live_sessions``) is coalesced, by :meth:`Store.set_live_sessions`.
The table is emptied at start (nothing runs yet) and is not durable state.

The ``instance_processes`` table is durable on purpose: the process id and
kernel start time of every instance process the gateway started, written when
it starts and removed when it exits, so a gateway that was SIGKILLed finds
(and stops) its orphans on the next start.  The start time makes the match
safe against a recycled PID.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidistream.errors import ConflictError, NotFoundError
from bidistream.platform.sqlite import Database
from bidistream.platform.states import EndpointEvent, next_status

__all__ = ["EndpointRecord", "InstanceRow", "ProcessRow", "Record", "Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    arn TEXT NOT NULL,
    created REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoint_configs (
    name TEXT PRIMARY KEY,
    arn TEXT NOT NULL,
    created REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY,
    arn TEXT NOT NULL,
    config_name TEXT NOT NULL,
    status TEXT NOT NULL,
    failure_reason TEXT,
    created REAL NOT NULL,
    modified REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    variant TEXT NOT NULL,
    state TEXT NOT NULL,
    base_url TEXT NOT NULL,
    live_sessions INTEGER NOT NULL,
    restarts INTEGER NOT NULL,
    log_path TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instance_processes (
    instance_id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    start_ticks INTEGER NOT NULL,
    owner_pid INTEGER NOT NULL,
    owner_start_ticks INTEGER NOT NULL,
    container TEXT,
    recorded REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Tables holding named documents (model and endpoint-config records share a shape).
_DOC_TABLES = ("models", "endpoint_configs")


@dataclass(slots=True)
class Record:
    """A model or endpoint config: name, ARN, creation time and the request document."""

    name: str
    arn: str
    created: float
    doc: dict[str, Any]


@dataclass(slots=True)
class EndpointRecord:
    """An endpoint.  ``doc`` holds the resolved deployment (variants with image,
    environment, counts and weights), so an endpoint can be restarted even after
    its endpoint config or model was deleted, as SageMaker allows."""

    name: str
    arn: str
    config_name: str
    status: str
    failure_reason: str | None
    created: float
    modified: float
    doc: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InstanceRow:
    instance_id: str
    endpoint: str
    variant: str
    state: str
    base_url: str
    live_sessions: int
    restarts: int
    log_path: str
    updated: float


@dataclass(frozen=True, slots=True)
class ProcessRow:
    """One instance process: its PID and start time in clock ticks since boot
    (``/proc/<pid>/stat`` field 22), the same for the gateway that started it
    (a live owner keeps its instances), and its Docker container name if any."""

    instance_id: str
    pid: int
    start_ticks: int
    owner_pid: int
    owner_start_ticks: int
    container: str | None
    recorded: float


class Store:
    """Thread-safe access to the SQLite file; each public method is one transaction."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Database(path, _SCHEMA)
        self._conn = self._db.conn
        self._lock = self._db.lock

    def close(self) -> None:
        self._db.close()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception."""
        return self._db.transaction()

    # ------------------------------------------------------------ models/configs
    def insert_doc(self, table: str, record: Record, *, kind: str) -> None:
        assert table in _DOC_TABLES
        with self.transaction() as conn:
            if conn.execute(f"SELECT 1 FROM {table} WHERE name = ?", (record.name,)).fetchone():
                raise ConflictError(f'Cannot create already existing {kind} "{record.arn}".')
            conn.execute(
                f"INSERT INTO {table} (name, arn, created, doc) VALUES (?, ?, ?, ?)",
                (record.name, record.arn, record.created, json.dumps(record.doc)),
            )

    def get_doc(self, table: str, name: str) -> Record | None:
        assert table in _DOC_TABLES
        with self._lock:
            row = self._conn.execute(f"SELECT * FROM {table} WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return Record(row["name"], row["arn"], row["created"], json.loads(row["doc"]))

    def delete_doc(self, table: str, name: str) -> bool:
        assert table in _DOC_TABLES
        with self.transaction() as conn:
            cur = conn.execute(f"DELETE FROM {table} WHERE name = ?", (name,))
            return cur.rowcount > 0

    def list_docs(self, table: str) -> list[Record]:
        assert table in _DOC_TABLES
        with self._lock:
            rows = self._conn.execute(f"SELECT * FROM {table} ORDER BY created, name").fetchall()
        return [Record(r["name"], r["arn"], r["created"], json.loads(r["doc"])) for r in rows]

    # ----------------------------------------------------------------- endpoints
    def insert_endpoint(self, record: EndpointRecord) -> None:
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM endpoints WHERE name = ?", (record.name,)).fetchone():
                raise ConflictError(f'Cannot create already existing endpoint "{record.arn}".')
            conn.execute(
                "INSERT INTO endpoints (name, arn, config_name, status, failure_reason, created, "
                "modified, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.name,
                    record.arn,
                    record.config_name,
                    record.status,
                    record.failure_reason,
                    record.created,
                    record.modified,
                    json.dumps(record.doc),
                ),
            )

    def get_endpoint(self, name: str) -> EndpointRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM endpoints WHERE name = ?", (name,)).fetchone()
        return None if row is None else _endpoint(row)

    def list_endpoints(self) -> list[EndpointRecord]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM endpoints ORDER BY created, name").fetchall()
        return [_endpoint(r) for r in rows]

    def update_endpoint(
        self,
        name: str,
        *,
        failure_reason: str | None = None,
        clear_failure: bool = False,
        config_name: str | None = None,
        doc: dict[str, Any] | None = None,
        modified: float | None = None,
    ) -> EndpointRecord:
        """Change some columns of one endpoint in one transaction (never its status:
        a status moves only through :meth:`commit` and the transition table)."""
        record = self.commit(
            name,
            failure_reason=failure_reason,
            clear_failure=clear_failure,
            config_name=config_name,
            doc=doc,
            modified=modified,
        )
        assert record is not None
        return record

    def commit(
        self,
        name: str,
        *,
        event: EndpointEvent | None = None,
        upsert: Sequence[InstanceRow] = (),
        remove: Sequence[str] = (),
        failure_reason: str | None = None,
        clear_failure: bool = False,
        config_name: str | None = None,
        doc: dict[str, Any] | None = None,
        modified: float | None = None,
        applied: Callable[[], None] | None = None,
    ) -> EndpointRecord | None:
        """One state change of endpoint ``name``, with every row it affects, in one transaction.

        ``event`` moves the status through the endpoint table, read and written
        inside the transaction (so two racing UpdateEndpoint calls cannot both
        win: the loser's pair is missing and raises TransitionError).
        ``upsert`` writes instance rows (their new state), ``remove`` drops rows
        of instances that stopped.  ``failure_reason`` is only written when
        given; ``clear_failure`` erases it.  Endpoint columns are only touched
        (and LastModifiedTime only moves) when one of them changes.

        ``applied`` runs after COMMIT while the store lock is still held: the
        manager mirrors the change in memory there, so a reader holding the
        lock never sees the store and the in-memory router disagree.  Returns
        the endpoint record as written, or None when only instance rows were
        written for an endpoint that no longer exists.
        """
        touches_endpoint = event is not None or any(
            (failure_reason is not None, clear_failure, config_name is not None, doc is not None)
        )
        with self._lock:
            with self.transaction() as conn:
                row = conn.execute("SELECT * FROM endpoints WHERE name = ?", (name,)).fetchone()
                current = None if row is None else _endpoint(row)
                if current is None and touches_endpoint:
                    raise NotFoundError(f"Could not find endpoint {name!r}.")
                if current is not None and touches_endpoint:
                    if event is not None:
                        current.status = str(next_status(current.status, event))
                    if clear_failure:
                        current.failure_reason = None
                    if failure_reason is not None:
                        current.failure_reason = failure_reason
                    if config_name is not None:
                        current.config_name = config_name
                    if doc is not None:
                        current.doc = doc
                    current.modified = modified if modified is not None else time.time()
                    conn.execute(
                        "UPDATE endpoints SET status = ?, failure_reason = ?, config_name = ?, doc = ?, "
                        "modified = ? WHERE name = ?",
                        (
                            current.status,
                            current.failure_reason,
                            current.config_name,
                            json.dumps(current.doc),
                            current.modified,
                            name,
                        ),
                    )
                if remove:
                    conn.executemany("DELETE FROM instances WHERE instance_id = ?", [(i,) for i in remove])
                if upsert:
                    conn.executemany(
                        "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [_instance_values(r) for r in upsert],
                    )
            if applied is not None:
                applied()
            return current

    def delete_endpoint(self, name: str) -> bool:
        with self.transaction() as conn:
            conn.execute("DELETE FROM instances WHERE endpoint = ?", (name,))
            return conn.execute("DELETE FROM endpoints WHERE name = ?", (name,)).rowcount > 0

    # ------------------------------------------------------- live instance view
    def replace_instances(self, rows: list[InstanceRow]) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM instances")
            conn.executemany(
                "INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_instance_values(r) for r in rows],
            )

    def set_live_sessions(self, counts: Mapping[str, int], heartbeat: float) -> None:
        """The coalesced hot counters: live sessions per instance, plus the gateway's heartbeat.

        Only rows that exist are touched, so a late count never resurrects a
        stopped instance."""
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE instances SET live_sessions = ? WHERE instance_id = ?",
                [(n, instance_id) for instance_id, n in counts.items()],
            )
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('heartbeat', ?)", (f"{heartbeat}",)
            )

    def list_instances(self, endpoint: str | None = None) -> list[InstanceRow]:
        with self._lock:
            if endpoint is None:
                rows = self._conn.execute("SELECT * FROM instances ORDER BY endpoint, variant, instance_id")
            else:
                rows = self._conn.execute(
                    "SELECT * FROM instances WHERE endpoint = ? ORDER BY variant, instance_id", (endpoint,)
                )
            return [InstanceRow(**dict(r)) for r in rows.fetchall()]

    def snapshot(self, name: str) -> tuple[EndpointRecord | None, list[InstanceRow]]:
        """One endpoint and its instance rows, read in one transaction (one instant)."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                return self.get_endpoint(name), self.list_instances(name)
            finally:
                self._conn.execute("COMMIT")

    def snapshot_all(self) -> tuple[list[EndpointRecord], list[InstanceRow]]:
        """Every endpoint and every instance row, read in one transaction, even from
        another process while a gateway writes (WAL gives the reader one instant)."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                return self.list_endpoints(), self.list_instances()
            finally:
                self._conn.execute("COMMIT")

    # ------------------------------------------------------- instance processes
    def record_process(self, row: ProcessRow) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO instance_processes (instance_id, pid, start_ticks, owner_pid, "
                "owner_start_ticks, container, recorded) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    row.instance_id,
                    row.pid,
                    row.start_ticks,
                    row.owner_pid,
                    row.owner_start_ticks,
                    row.container,
                    row.recorded,
                ),
            )

    def forget_process(self, instance_id: str, pid: int) -> None:
        """Drop the record of ``pid`` (a restarted instance keeps its id under a new PID)."""
        with self.transaction() as conn:
            conn.execute(
                "DELETE FROM instance_processes WHERE instance_id = ? AND pid = ?", (instance_id, pid)
            )

    def list_processes(self) -> list[ProcessRow]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM instance_processes ORDER BY recorded, instance_id")
            return [ProcessRow(**dict(r)) for r in rows.fetchall()]

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])


def _instance_values(r: InstanceRow) -> tuple[object, ...]:
    return (
        r.instance_id,
        r.endpoint,
        r.variant,
        r.state,
        r.base_url,
        r.live_sessions,
        r.restarts,
        r.log_path,
        r.updated,
    )


def _endpoint(row: sqlite3.Row) -> EndpointRecord:
    return EndpointRecord(
        name=row["name"],
        arn=row["arn"],
        config_name=row["config_name"],
        status=row["status"],
        failure_reason=row["failure_reason"],
        created=row["created"],
        modified=row["modified"],
        doc=json.loads(row["doc"]),
    )
