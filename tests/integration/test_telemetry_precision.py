"""The precision variant of each metric window (``MetricWindow.precision``) through a real gRPC controller, on
SQLite and PostgreSQL: stored per window and read back by QueryTelemetry (``precisions``, and one row per
variant with ``by_precision``); an old-style window without it is stored with an empty precision; a hostile
name (too long, characters no bundle variant has) refuses its whole batch with INVALID_ARGUMENT naming the
field and stores nothing, and the device's next sound batch is taken; migration 0008 upgrades a database at
0007 that holds windows, which then read as "variant not known" beside new ones (and down and up again)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from edgefleet.v1 import device_pb2_grpc, fleet_pb2
from edgefleet.v1.telemetry_pb2 import MetricWindow, TelemetryBatch, TelemetryRecord
from edgefleet_controller.store import Store, head_revision
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.db import MIGRATIONS_DIR
from edgefleet_controller.store.telemetry import TelemetryStore
from edgefleet_controller.telemetry.ingest_plan import plan_batch
from edgefleet_controller.telemetry.query import summarise
from edgefleet_testing.controller import bearer, connected, running_controller
from tests.integration.store_cases import metric_window, upgrade_to

pytestmark = pytest.mark.integration

T0 = datetime(2025, 1, 1, tzinfo=UTC)
BUNDLE = "sha256:" + "c" * 64
TABLES = (t.telemetry_windows, t.telemetry_events, t.telemetry_marks, t.telemetry_pending, t.telemetry_baselines)


def window(latency_ms: float, i: int, precision: str | None) -> MetricWindow:
    """A sound window of 20 frames around ``latency_ms``; ``precision`` None: a device that predates the field."""
    w = metric_window([latency_ms * (1 + k / 100) for k in range(20)], T0 + timedelta(seconds=10 * i), BUNDLE)
    if precision is not None:
        w.precision = precision
    return w


def batch(first_seq: int, windows: list[MetricWindow]) -> TelemetryBatch:
    records = [TelemetryRecord(seq=first_seq + i, metrics=w) for i, w in enumerate(windows)]
    return TelemetryBatch(epoch="ep", first_seq=first_seq, last_seq=first_seq + len(windows) - 1, records=records)


async def upload(address: str, cred: str, batches: list[TelemetryBatch]) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = device_pb2_grpc.DeviceServiceStub(channel)
        acked = 0
        async for ack in stub.UploadTelemetry(iter(batches), metadata=bearer(cred)):
            acked = ack.acked_through
        return acked


def snapshot(engine: sa.Engine) -> list[list[str]]:
    with engine.connect() as conn:
        return [sorted(map(repr, conn.execute(sa.select(table)).all())) for table in TABLES]


def stored_precisions(engine: sa.Engine) -> list[tuple[int, str]]:
    w = t.telemetry_windows
    with engine.connect() as conn:
        return [
            (int(r.seq), str(r.precision)) for r in conn.execute(sa.select(w.c.seq, w.c.precision).order_by(w.c.seq))
        ]


async def test_precision_is_stored_per_window_and_queried_back(store_url: str, tmp_path: Path) -> None:
    async with running_controller(tmp_path / "ctl", store_url=store_url) as ctrl, connected(ctrl) as c:
        device_id, cred = await c.enroll("lab", "cam-1")
        await c.report_running(cred, BUNDLE)
        old = [window(50.0, i, None) for i in range(2)]
        served = [window(30.0, 2 + i, "fp32") for i in range(2)] + [window(10.0, 4 + i, "int8-u8s8") for i in range(3)]
        assert await upload(ctrl.address, cred, [batch(1, old), batch(3, served)]) == 7
        engine = ctrl.app.store.db.engine
        assert stored_precisions(engine) == [(1, ""), (2, ""), (3, "fp32"), (4, "fp32")] + [
            (s, "int8-u8s8") for s in (5, 6, 7)
        ]

        whole = await c.fleet.QueryTelemetry(fleet_pb2.QueryTelemetryRequest(group_by="device"), metadata=c.admin)
        [row] = whole.rows
        assert (row.key, row.precision, list(row.precisions), row.frames) == (
            device_id,
            "",
            ["fp32", "int8-u8s8"],
            140,
        )
        split = await c.fleet.QueryTelemetry(
            fleet_pb2.QueryTelemetryRequest(group_by="bundle", by_precision=True), metadata=c.admin
        )
        assert [(r.key, r.precision, list(r.precisions), r.frames) for r in split.rows] == [
            (BUNDLE, "", [], 40),
            (BUNDLE, "fp32", ["fp32"], 40),
            (BUNDLE, "int8-u8s8", ["int8-u8s8"], 60),
        ]
        p50 = {r.precision: r.latency_e2e.p50_ms for r in split.rows}
        assert 53.0 < p50[""] < 56.0 and 31.5 < p50["fp32"] < 33.5 and 10.4 < p50["int8-u8s8"] < 11.3

        # the same windows sent again (the device never saw the ack) are duplicates, not a second variant row
        assert await upload(ctrl.address, cred, [batch(3, served)]) == 7
        again = await c.fleet.QueryTelemetry(
            fleet_pb2.QueryTelemetryRequest(group_by="bundle", by_precision=True), metadata=c.admin
        )
        assert again.SerializeToString(deterministic=True) == split.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    ("precision", "shown_as"),
    [
        ("i" * 101, "(101 chars)"),  # longer than any variant name a bundle may declare
        ("int8; DROP TABLE telemetry_windows", "int8; DROP"),
        ("fp32\n", "fp32"),
        ("INT8", "INT8"),
        ("int8\u202e", "int8"),  # a bidi override a terminal would render
        ("-int8", "-int8"),
    ],
)
async def test_a_hostile_precision_refuses_the_batch_and_stores_nothing(
    store_url: str, tmp_path: Path, precision: str, shown_as: str
) -> None:
    async with running_controller(tmp_path / "ctl", store_url=store_url) as ctrl, connected(ctrl) as c:
        _, cred = await c.enroll("lab", "cam-1")
        await c.report_running(cred, BUNDLE)
        assert await upload(ctrl.address, cred, [batch(1, [window(20.0, 0, "fp32")])]) == 1
        engine = ctrl.app.store.db.engine
        before = snapshot(engine)
        hostile = batch(2, [window(20.0, 1, "fp32"), window(20.0, 2, precision)])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await upload(ctrl.address, cred, [hostile])
        err: Any = refused.value
        details = err.details() or ""
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), details)
        assert "TelemetryBatch.records[1].metrics.precision" in details, details
        assert "a precision variant's name, e.g. int8-u8s8" in details and shown_as in details, details
        assert "\n" not in details and "\u202e" not in details and len(details) < 1000, details
        assert snapshot(engine) == before  # nothing of the batch, not even its sound first window
        # the device is not wedged: the same seqs with a sound name are taken next
        assert await upload(ctrl.address, cred, [batch(2, [window(20.0, 1, "fp32"), window(20.0, 2, "fp16")])]) == 3
        assert stored_precisions(engine) == [(1, "fp32"), (2, "fp32"), (3, "fp16")]


def _insert_at_0007(conn: sa.Connection) -> None:
    """A device and two windows as a controller at schema 0007 wrote them (no precision column)."""
    conn.execute(
        sa.text(
            "INSERT INTO devices (id, name, site, tags_json, hardware_class, facts_json, credential_sha256, "
            "enrolled_at, reported_json, health) VALUES ('dev_00000000000000d1', 'cam-old', 'lab', '{}', 'x86', "
            "'{}', '00', :t, '{}', 'unknown')"
        ),
        {"t": datetime(2024, 12, 1)},
    )
    columns = [c for c in t.telemetry_windows.c if c.name not in ("id", "precision")]
    old_windows = sa.table("telemetry_windows", *(sa.column(c.name, c.type) for c in columns))
    rows = []
    for seq in (1, 2):
        w = window(40.0, seq, None)
        rows.append(
            {
                "device_id": "dev_00000000000000d1",
                "epoch": "ep-old",
                "seq": seq,
                "site": "lab",
                "bundle_digest": BUNDLE,
                "window_start": T0 + timedelta(seconds=10 * seq),
                "window_s": 10.0,
                "frames": 20,
                "errors": 0,
                "latency_e2e": w.latency_e2e.SerializeToString(),
                "latency_model": w.latency_model.SerializeToString(),
                "p95_e2e_ms": 41.0,
                "confidence_json": "[" + ",".join(["0"] * 16 + ["20", "0", "0", "0"]) + "]",
                "sensors_json": "[]",
                "dropped_json": "{}",
                "provider": "CPUExecutionProvider",
                "throttling": False,
                "size_bytes": 300,
                "received_at": T0,
            }
        )
    conn.execute(old_windows.insert(), rows)


def test_0008_upgrades_a_database_holding_windows(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            upgrade_to(conn, "0007")
        with engine.begin() as conn:
            _insert_at_0007(conn)
            assert "precision" not in {c["name"] for c in sa.inspect(conn).get_columns("telemetry_windows")}
    finally:
        engine.dispose()
    with Store.open(store_url) as store:
        assert store.db.schema_revision() == head_revision() == "0008"
        tstore = TelemetryStore(store.db)
        old = tstore.windows(since=None, until=None)
        assert [(r.device_id, r.frames, r.precision) for r in old] == [("dev_00000000000000d1", 20, "")] * 2
        # a new window of the same device, now naming its variant, stores beside the old ones
        new = batch(1, [window(12.0, 5, "int8-u8s8")])
        tstore.commit_batch(
            "dev_00000000000000d1", plan_batch(new, tstore.ingest_facts("dev_00000000000000d1", "ep", 0), T0), T0
        )
        rows = tstore.windows(since=None, until=None)
        assert [r.precision for r in rows] == ["", "", "int8-u8s8"]
        summary = summarise(rows, "device", {}, by_precision=True)
        assert [(r.precision, r.frames) for r in summary.rows] == [("", 40), ("int8-u8s8", 20)]
        assert list(summarise(rows, "device", {}).rows[0].precisions) == ["int8-u8s8"]
    # reopening at head is a no-op and keeps what was stored
    with Store.open(store_url) as again:
        assert [r.precision for r in TelemetryStore(again.db).windows(since=None, until=None)] == ["", "", "int8-u8s8"]
    # downgraded to 0007 the windows stay (without their variant); upgraded again, every one reads as not known
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = conn
            command.downgrade(config, "0007")
        with engine.connect() as conn:
            assert "precision" not in {c["name"] for c in sa.inspect(conn).get_columns("telemetry_windows")}
            assert conn.execute(sa.text("SELECT count(*) FROM telemetry_windows")).scalar() == 3
    finally:
        engine.dispose()
    with Store.open(store_url) as upgraded:
        assert [r.precision for r in TelemetryStore(upgraded.db).windows(since=None, until=None)] == ["", "", ""]
