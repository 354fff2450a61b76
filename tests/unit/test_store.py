"""The SQLite store: transactional writes, durable across reopen, conditional updates."""

from __future__ import annotations

from pathlib import Path

import pytest

from bidistream.errors import ConflictError, NotFoundError
from bidistream.platform.states import EndpointEvent, TransitionError
from bidistream.platform.store import EndpointRecord, InstanceRow, Record, Store


def _endpoint(name: str = "ep", status: str = "Creating") -> EndpointRecord:
    return EndpointRecord(name, f"arn:{name}", "cfg", status, None, 1.0, 1.0, {"deployment": [{"x": 1}]})


def test_records_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = Store(path)
    store.insert_doc("models", Record("m", "arn:m", 5.0, {"PrimaryContainer": {"Image": "x"}}), kind="model")
    store.insert_endpoint(_endpoint())
    store.close()
    again = Store(path)
    model = again.get_doc("models", "m")
    assert model is not None and model.doc == {"PrimaryContainer": {"Image": "x"}} and model.created == 5.0
    endpoint = again.get_endpoint("ep")
    assert endpoint is not None and endpoint.doc["deployment"] == [{"x": 1}]
    assert [r.name for r in again.list_docs("models")] == ["m"]


def test_duplicate_insert_is_a_conflict_and_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    store.insert_endpoint(_endpoint())
    with pytest.raises(ConflictError, match="already existing endpoint"):
        store.insert_endpoint(_endpoint())
    assert len(store.list_endpoints()) == 1
    store.insert_doc("endpoint_configs", Record("c", "arn:c", 1.0, {}), kind="endpoint configuration")
    with pytest.raises(ConflictError):
        store.insert_doc("endpoint_configs", Record("c", "arn:c2", 2.0, {}), kind="endpoint configuration")
    assert store.get_doc("endpoint_configs", "c").arn == "arn:c"  # type: ignore[union-attr]


def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("INSERT INTO endpoints VALUES ('half', 'arn', 'cfg', 'Creating', NULL, 1, 1, '{}')")
        raise RuntimeError("crash mid-CreateEndpoint")
    assert store.get_endpoint("half") is None


def test_status_moves_only_through_the_table_and_is_compare_and_set(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    store.insert_endpoint(_endpoint(status="InService"))
    updated = store.commit("ep", event=EndpointEvent.UPDATE, failure_reason="x")
    assert updated is not None and updated.status == "Updating" and updated.failure_reason == "x"
    # The second of two racing updates finds (Updating, update) missing from the table.
    with pytest.raises(TransitionError, match=r"\(Updating, update\)"):
        store.commit("ep", event=EndpointEvent.UPDATE)
    assert store.get_endpoint("ep").status == "Updating"  # type: ignore[union-attr]
    cleared = store.commit("ep", event=EndpointEvent.DEPLOYED, clear_failure=True)
    assert cleared is not None and cleared.status == "InService" and cleared.failure_reason is None
    with pytest.raises(NotFoundError):
        store.commit("nope", event=EndpointEvent.DEPLOYED)


def test_a_transition_and_its_instance_rows_are_one_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    store.insert_endpoint(_endpoint())
    starting = InstanceRow("i1", "ep", "v", "starting", "", 0, 0, "/l", 1.0)
    store.commit("ep", upsert=[starting])
    assert store.snapshot("ep")[1] == [starting]
    healthy = InstanceRow("i1", "ep", "v", "healthy", "http://x", 0, 0, "/l", 2.0)
    seen: list[tuple[str, list[str]]] = []

    def applied() -> None:  # runs after COMMIT, still under the lock: readers see both or neither
        record, rows = store.snapshot("ep")
        assert record is not None
        seen.append((record.status, [r.state for r in rows]))

    store.commit("ep", event=EndpointEvent.DEPLOYED, upsert=[healthy], applied=applied)
    assert seen == [("InService", ["healthy"])]
    # A pair missing from the table writes nothing, rows included.
    with pytest.raises(TransitionError):
        store.commit("ep", event=EndpointEvent.DEPLOYED, remove=["i1"])
    assert store.snapshot("ep")[1] == [healthy]
    # Only live sessions are coalesced, and a late count never resurrects a stopped row.
    store.set_live_sessions({"i1": 3, "gone": 1}, heartbeat=5.0)
    assert [r.live_sessions for r in store.list_instances()] == [3]
    assert store.get_meta("heartbeat") == "5.0"
    store.commit("ep", remove=["i1"])
    assert store.list_instances() == []


def test_delete_and_live_view(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    store.insert_endpoint(_endpoint())
    row = InstanceRow("i1", "ep", "v", "healthy", "http://x", 2, 0, "/l", 1.0)
    store.replace_instances([row])
    assert store.list_instances() == [row]
    assert store.delete_endpoint("ep") is True
    assert store.delete_endpoint("ep") is False
    assert store.list_instances() == []
    store.set_meta("heartbeat", "12")
    assert store.get_meta("heartbeat") == "12"


def test_instance_processes_survive_reopen_and_forget_by_pid(tmp_path: Path) -> None:
    from bidistream.platform.store import ProcessRow

    path = tmp_path / "s.sqlite3"
    store = Store(path)
    store.record_process(ProcessRow("ep-v-1", 100, 5000, 7, 10, None, 1.0))
    store.record_process(ProcessRow("ep-v-2", 101, 5001, 7, 10, "bidistream-ep-v-2", 2.0))
    store.close()
    store = Store(path)  # a restarted gateway reads what the dead one wrote
    assert [r.pid for r in store.list_processes()] == [100, 101]
    store.record_process(ProcessRow("ep-v-1", 102, 5100, 7, 10, None, 3.0))  # restarted under a new PID
    store.forget_process("ep-v-1", 100)  # the old PID's exit must not drop the new record
    assert [(r.instance_id, r.pid) for r in store.list_processes()] == [("ep-v-2", 101), ("ep-v-1", 102)]
    store.forget_process("ep-v-1", 102)
    assert [r.container for r in store.list_processes()] == ["bidistream-ep-v-2"]
    store.close()
