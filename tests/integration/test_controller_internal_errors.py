"""The controller's own bugs are not bad input: an exception that is not a typed contract, store or controller
error ends the call INTERNAL with a request id and nothing of its text (SQL, parameters), and the
``rpc.internal_error`` log line carries the same id and the traceback. Typed refusals keep their status."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
import sqlalchemy.exc
from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.logging import configure_logging
from edgefleet.v1 import common_pb2, device_pb2, fleet_pb2, telemetry_pb2
from edgefleet_controller.fleet_feed import QUEUE_BOUND
from edgefleet_controller.store import schema as t
from edgefleet_controller.telemetry.ingest import BatchError, validate_batch
from edgefleet_testing.controller import bearer, connected, running_controller

pytestmark = pytest.mark.integration

INTERNAL_DETAILS = re.compile(r"^internal error; request id (req_[0-9a-f]{16}); see the controller log$")
SECRET_SQL = "SELECT secret FROM operator_tokens WHERE name = ?"
SECRET_PARAM = "hunter2-param"
UNKNOWN_KIND = telemetry_pb2.DeviceEvent.Kind.ValueType(99)


def internal_log_lines(err: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "rpc.internal_error"]


async def internal(call: Any) -> str:
    """The request id of a call that must fail INTERNAL without showing any of the exception."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    details = info.value.details() or ""
    assert info.value.code() == grpc.StatusCode.INTERNAL, (info.value.code(), details)
    match = INTERNAL_DETAILS.match(details)
    assert match is not None, details
    for leaked in ("SELECT", SECRET_PARAM, "Error", "store"):
        assert leaked not in details, (leaked, details)
    return match.group(1)


async def test_unexpected_errors_are_internal_with_a_logged_request_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", json=True)

    def broken_listing(name: str | None) -> list[Any]:
        raise ValueError(f"{SECRET_SQL} [{SECRET_PARAM}]")

    def broken_summary() -> list[Any]:
        raise sqlalchemy.exc.ProgrammingError(SECRET_SQL, (SECRET_PARAM,), Exception("no such column"))

    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        monkeypatch.setattr(ctrl.app.store.bundles, "all", broken_listing)
        monkeypatch.setattr(ctrl.app.store.devices, "site_summary", broken_summary)
        value_error_id = await internal(c.fleet.ListBundles(fleet_pb2.ListBundlesRequest(), metadata=c.admin))
        sql_error_id = await internal(c.fleet.ListSites(fleet_pb2.ListSitesRequest(), metadata=c.admin))
        assert value_error_id != sql_error_id
        # The controller still serves what is not broken.
        await c.fleet.ListDevices(fleet_pb2.ListDevicesRequest(), metadata=c.admin)

    logged = {line["request_id"]: line for line in internal_log_lines(capsys.readouterr().err)}
    assert set(logged) == {value_error_id, sql_error_id}
    listing, summary = logged[value_error_id], logged[sql_error_id]
    assert listing["method"] == "/edgefleet.v1.FleetService/ListBundles"
    assert listing["level"] == "error"
    assert "Traceback" in listing["exception"]
    assert "in broken_listing" in listing["exception"]
    assert f"ValueError: {SECRET_SQL} [{SECRET_PARAM}]" in listing["exception"]
    assert summary["method"] == "/edgefleet.v1.FleetService/ListSites"
    assert "in broken_summary" in summary["exception"]
    assert "sqlalchemy.exc.ProgrammingError" in summary["exception"]


async def test_a_database_outage_is_unavailable_so_callers_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """OperationalError (connection lost, database locked, failover) is transient: UNAVAILABLE, which devices
    retry with backoff, with a request id and none of the SQL; the log line has the id and the traceback."""
    configure_logging("info", json=True)

    def locked(name: str | None) -> list[Any]:
        raise sqlalchemy.exc.OperationalError(SECRET_SQL, (SECRET_PARAM,), Exception("database is locked"))

    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        monkeypatch.setattr(ctrl.app.store.bundles, "all", locked)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.fleet.ListBundles(fleet_pb2.ListBundlesRequest(), metadata=c.admin)
    details = info.value.details() or ""
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, (info.value.code(), details)
    match = re.match(r"^database unavailable; request id (req_[0-9a-f]{16}); retry later", details)
    assert match is not None, details
    assert "SELECT" not in details and SECRET_PARAM not in details and "locked" not in details
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    (logged,) = [line for line in lines if line.get("event") == "rpc.database_unavailable"]
    assert logged["request_id"] == match.group(1) and "OperationalError" in logged["exception"]


async def test_out_of_range_client_values_are_invalid_argument_not_internal(tmp_path: Path) -> None:
    far = Timestamp(seconds=10**12)
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        _, cred = await c.enroll("site-1", "cam-1")
        cases: list[tuple[Any, tuple[str, ...]]] = [
            (
                c.fleet.ListDevices(fleet_pb2.ListDevicesRequest(seen_since=far), metadata=c.admin),
                ("seen_since", "1000000000000"),
            ),
            (
                c.fleet.ListDevices(
                    fleet_pb2.ListDevicesRequest(health=common_pb2.Health.ValueType(99)), metadata=c.admin
                ),
                ("health", "99"),
            ),
            (
                c.fleet.QueryTelemetry(fleet_pb2.QueryTelemetryRequest(since=far), metadata=c.admin),
                ("since", "1000000000000"),
            ),
            (
                c.device.ReportEvent(
                    device_pb2.ReportEventRequest(events=[telemetry_pb2.DeviceEvent(event_id="e1", kind=UNKNOWN_KIND)]),
                    metadata=bearer(cred),
                ),
                ("kind", "99"),
            ),
            (
                c.device.ReportEvent(
                    device_pb2.ReportEventRequest(events=[telemetry_pb2.DeviceEvent(event_id="e2", at=far)]),
                    metadata=bearer(cred),
                ),
                ("at", "1000000000000"),
            ),
        ]
        for call, fragments in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            details = info.value.details() or ""
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (fragments, info.value.code(), details)
            for fragment in fragments:
                assert fragment in details, (fragment, details)
        listed = await c.fleet.ListDeviceEvents(fleet_pb2.ListDeviceEventsRequest(device="cam-1"), metadata=c.admin)
        assert list(listed.events) == []


async def test_a_watcher_that_falls_behind_is_told_to_watch_again(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        call = c.fleet.WatchFleet(fleet_pb2.WatchFleetRequest(), metadata=c.admin)
        await call.initial_metadata()  # subscribed
        for i in range(QUEUE_BOUND + 1):
            ctrl.app.feed.publish_event("dev_x", telemetry_pb2.DeviceEvent(event_id=f"e{i}"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
        assert "watch again" in (info.value.details() or "")


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        (
            telemetry_pb2.TelemetryRecord(seq=1, event=telemetry_pb2.DeviceEvent(kind=UNKNOWN_KIND)),
            "records[0] (seq 1).event.kind must be one of",
        ),
        (
            telemetry_pb2.TelemetryRecord(seq=1, event=telemetry_pb2.DeviceEvent(at=Timestamp(seconds=-(10**12)))),
            "records[0] (seq 1).event.at must be a timestamp",
        ),
        (
            telemetry_pb2.TelemetryRecord(
                seq=1, metrics=telemetry_pb2.MetricWindow(window_start=Timestamp(seconds=10**12))
            ),
            "records[0] (seq 1).metrics.window_start must be a timestamp",
        ),
        (
            telemetry_pb2.TelemetryRecord(
                seq=1, review=telemetry_pb2.ReviewSample(captured_at=Timestamp(seconds=10**12))
            ),
            "records[0] (seq 1).review.captured_at must be a timestamp",
        ),
    ],
)
def test_batches_with_values_the_store_cannot_convert_are_refused(
    record: telemetry_pb2.TelemetryRecord, fragment: str
) -> None:
    batch = telemetry_pb2.TelemetryBatch(epoch="e", first_seq=1, last_seq=1, records=[record])
    with pytest.raises(BatchError) as info:
        validate_batch(batch)
    assert fragment in str(info.value)
    good = telemetry_pb2.TelemetryBatch(
        epoch="e", first_seq=1, last_seq=1, records=[telemetry_pb2.TelemetryRecord(seq=1, event=common_event())]
    )
    validate_batch(good)


def common_event() -> telemetry_pb2.DeviceEvent:
    return telemetry_pb2.DeviceEvent(kind=telemetry_pb2.DeviceEvent.KIND_ROLLBACK, at=Timestamp(seconds=1))


@pytest.mark.parametrize(
    ("breaks", "fragment"),
    [
        ("seq", "seq"),
        ("window_s_nan", "window_s"),
        ("window_s_inf", "window_s"),
        ("frames", "frames"),
    ],
)
async def test_telemetry_the_store_cannot_hold_is_invalid_argument_without_sql(
    tmp_path: Path, breaks: str, fragment: str
) -> None:
    """seq >= 2^63 and a NaN window_s once reached the database: INTERNAL, and for NaN the SQL statement and
    its parameters in the status. They are refused as input, name the field, and store nothing."""
    from tests.integration.test_telemetry_hostile import T0, good_window

    window = good_window(30.0, T0)
    seq = 1
    if breaks == "seq":
        seq = 2**63
    elif breaks == "frames":
        window.frames = 2**63
    else:
        window.window_s = math.nan if breaks == "window_s_nan" else math.inf
    batch = telemetry_pb2.TelemetryBatch(
        epoch="ep", first_seq=seq, last_seq=seq, records=[telemetry_pb2.TelemetryRecord(seq=seq, metrics=window)]
    )
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        _, cred = await c.enroll("site-1", "cam-1")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ack in c.device.UploadTelemetry(iter([batch]), metadata=bearer(cred), timeout=30):
                pass
        details = info.value.details() or ""
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (info.value.code(), details)
        assert fragment in details and len(details) < 1024, details
        for leaked in ("INSERT", "SELECT", "sqlite", "psycopg", "parameters", "Traceback", "request id"):
            assert leaked not in details, (leaked, details)
        with ctrl.app.store.db.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(t.telemetry_windows)).scalar_one() == 0
