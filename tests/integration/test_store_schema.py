"""The controller store's schema and lifecycle: migrations to head, SQLite pragmas, state across reopening."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgefleet_controller.store import Store, head_revision
from edgefleet_controller.store.schema import metadata
from tests.integration.store_cases import T0, enroll, publish, sha

pytestmark = pytest.mark.integration


def test_open_migrates_to_head_and_reopening_is_a_no_op(store_url: str) -> None:
    with Store.open(store_url) as first:
        assert first.db.schema_revision() == head_revision()
        tables = set(sa.inspect(first.db.engine).get_table_names())
    assert set(metadata.tables) | {"alembic_version"} <= tables
    with Store.open(store_url) as second:
        assert second.db.schema_revision() == head_revision()
        assert second.desired.change_counter() == 0


def test_migrations_create_exactly_the_declared_schema(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with store.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    with Store.open_data_dir(tmp_path / "data") as store:
        assert (tmp_path / "data" / "controller.db").exists()
        with store.db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000


def test_state_survives_close_and_reopen(store_url: str) -> None:
    with Store.open(store_url) as store:
        device_id, credential = enroll(store, tags={"line": "3"})
        digest = publish(store)
        store.desired.assign([device_id], bundle_digest=digest, reason="pin", now=T0)
        store.configs.apply([("fleet", "default", None, '{"a":1}', sha("a1"))], "ops", T0)
        _, op_secret = store.operator_tokens.create("alice", "operator", None, T0)
        store.events.record(device_id, "update", {"to": digest}, T0, T0, seq=1)
    with Store.open(store_url) as store:
        access = store.device_access.check(credential)
        assert access is not None and access.device_id == device_id
        assert store.devices.get(device_id).tags == {"line": "3"}
        assert store.desired.get(device_id).bundle_digest == digest
        assert store.bundles.get("detector@1.0.0").digest == digest
        assert [d.name for d in store.configs.current()] == ["default"]
        assert store.operator_tokens.authenticate(op_secret, T0).name == "alice"
        assert [e.payload for e in store.events.query(device_id=device_id)] == [{"to": digest}]
        assert store.desired.change_counter() == 1


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="aware UTC"):
        store.enrollment_tokens.create("berlin", 60, datetime(2025, 1, 1))
