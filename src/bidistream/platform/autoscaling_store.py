"""Application Auto Scaling's memory: three tables in the platform's SQLite file.

Scalable targets, scaling policies and scaling activities survive a gateway
restart like endpoints do.  Kept in a module of their own (their own
connection to the same WAL-mode file) so the endpoint store's schema and
transactions stay untouched; each public method is one transaction.

A target's key is (namespace, resource id, dimension), as in the API; rows
hold the few columns queries filter on plus the JSON document the Describe
calls echo back.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidistream.platform.sqlite import Database

__all__ = ["ActivityRow", "AutoscalingStore", "PolicyRow", "TargetKey", "TargetRow"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scalable_targets (
    namespace TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    dimension TEXT NOT NULL,
    created REAL NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (namespace, resource_id, dimension)
);
CREATE TABLE IF NOT EXISTS scaling_policies (
    namespace TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    dimension TEXT NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (namespace, resource_id, dimension, name)
);
CREATE TABLE IF NOT EXISTS scaling_activities (
    activity_id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    dimension TEXT NOT NULL,
    started REAL NOT NULL,
    status TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS scaling_activities_by_target
    ON scaling_activities (namespace, resource_id, dimension, started);
"""


@dataclass(frozen=True, slots=True)
class TargetKey:
    namespace: str
    resource_id: str
    dimension: str


@dataclass(slots=True)
class TargetRow:
    key: TargetKey
    created: float
    doc: dict[str, Any]


@dataclass(slots=True)
class PolicyRow:
    key: TargetKey
    name: str
    created: float
    doc: dict[str, Any]


@dataclass(slots=True)
class ActivityRow:
    activity_id: str
    key: TargetKey
    started: float
    status: str
    doc: dict[str, Any]


class AutoscalingStore:
    def __init__(self, path: Path | str) -> None:
        self._db = Database(path, _SCHEMA)
        self._conn = self._db.conn
        self._lock = self._db.lock

    def close(self) -> None:
        self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.transaction()

    # ------------------------------------------------------------- targets
    def put_target(self, key: TargetKey, created: float, doc: dict[str, Any]) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO scalable_targets VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (namespace, resource_id, dimension) DO UPDATE SET doc = excluded.doc",
                (key.namespace, key.resource_id, key.dimension, created, json.dumps(doc)),
            )

    def get_target(self, key: TargetKey) -> TargetRow | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM scalable_targets WHERE namespace = ? AND resource_id = ? AND dimension = ?",
                (key.namespace, key.resource_id, key.dimension),
            ).fetchone()
        return None if row is None else _target(row)

    def list_targets(self, namespace: str) -> list[TargetRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM scalable_targets WHERE namespace = ? ORDER BY created, resource_id",
                (namespace,),
            ).fetchall()
        return [_target(r) for r in rows]

    def delete_target(self, key: TargetKey) -> bool:
        """Drop a target and its policies in one transaction (as Deregister does)."""
        args = (key.namespace, key.resource_id, key.dimension)
        with self._tx() as c:
            cur = c.execute(
                "DELETE FROM scalable_targets WHERE namespace = ? AND resource_id = ? AND dimension = ?",
                args,
            )
            c.execute(
                "DELETE FROM scaling_policies WHERE namespace = ? AND resource_id = ? AND dimension = ?",
                args,
            )
            return cur.rowcount > 0

    # ------------------------------------------------------------ policies
    def put_policy(self, key: TargetKey, name: str, created: float, doc: dict[str, Any]) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO scaling_policies VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (namespace, resource_id, dimension, name) DO UPDATE SET doc = excluded.doc",
                (key.namespace, key.resource_id, key.dimension, name, created, json.dumps(doc)),
            )

    def get_policy(self, key: TargetKey, name: str) -> PolicyRow | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM scaling_policies WHERE namespace = ? AND resource_id = ? AND dimension = ? "
                "AND name = ?",
                (key.namespace, key.resource_id, key.dimension, name),
            ).fetchone()
        return None if row is None else _policy(row)

    def list_policies(self, namespace: str) -> list[PolicyRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM scaling_policies WHERE namespace = ? ORDER BY created, name", (namespace,)
            ).fetchall()
        return [_policy(r) for r in rows]

    def delete_policy(self, key: TargetKey, name: str) -> bool:
        with self._tx() as c:
            cur = c.execute(
                "DELETE FROM scaling_policies WHERE namespace = ? AND resource_id = ? AND dimension = ? "
                "AND name = ?",
                (key.namespace, key.resource_id, key.dimension, name),
            )
            return cur.rowcount > 0

    # ---------------------------------------------------------- activities
    def put_activity(self, row: ActivityRow) -> None:
        k = row.key
        with self._tx() as c:
            c.execute(
                "INSERT INTO scaling_activities VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (activity_id) DO UPDATE SET status = excluded.status, doc = excluded.doc",
                (
                    row.activity_id,
                    k.namespace,
                    k.resource_id,
                    k.dimension,
                    row.started,
                    row.status,
                    json.dumps(row.doc),
                ),
            )

    def list_activities(self, namespace: str) -> list[ActivityRow]:
        """Newest first, as DescribeScalingActivities lists them."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM scaling_activities WHERE namespace = ? ORDER BY started DESC, activity_id",
                (namespace,),
            ).fetchall()
        return [
            ActivityRow(
                r["activity_id"],
                TargetKey(r["namespace"], r["resource_id"], r["dimension"]),
                r["started"],
                r["status"],
                json.loads(r["doc"]),
            )
            for r in rows
        ]


def _target(row: sqlite3.Row) -> TargetRow:
    return TargetRow(
        TargetKey(row["namespace"], row["resource_id"], row["dimension"]),
        row["created"],
        json.loads(row["doc"]),
    )


def _policy(row: sqlite3.Row) -> PolicyRow:
    return PolicyRow(
        TargetKey(row["namespace"], row["resource_id"], row["dimension"]),
        row["name"],
        row["created"],
        json.loads(row["doc"]),
    )
