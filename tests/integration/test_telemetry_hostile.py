"""Hostile telemetry over real gRPC and SQLite: a device's worst metric windows (Hypothesis-generated: missing
sketch, other gamma or mapping, bins beyond the fleet's keys, too many bins, NaN/inf/negative counts, bad
window_s, seq >= 2^63...) are refused whole with INVALID_ARGUMENT, store nothing, and change no other
device's, site's or the fleet's QueryTelemetry; bad windows an older controller stored are skipped and counted."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.contract.sketch import BIN_KEY_MAX, BIN_KEY_MIN, FLEET_GAMMA
from edgefleet.v1 import device_pb2_grpc, fleet_pb2
from edgefleet.v1.telemetry_pb2 import (
    LatencySketch,
    MetricWindow,
    TelemetryBatch,
    TelemetryRecord,
)
from edgefleet_controller.store import schema as t
from edgefleet_testing.controller import Fleet, bearer, connected, running_controller
from tests.integration.store_cases import metric_window

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = datetime(2025, 1, 1, tzinfo=UTC)
BUNDLE = "sha256:" + "a" * 64
TABLES = (t.telemetry_windows, t.telemetry_events, t.telemetry_marks, t.telemetry_pending, t.telemetry_baselines)
MAX_BINS = BIN_KEY_MAX - BIN_KEY_MIN + 1


def good_window(latency_ms: float, start: datetime) -> MetricWindow:
    return metric_window([latency_ms * (1 + i / 100) for i in range(20)], start, BUNDLE)


def _bins(s: LatencySketch, offset: int, counts: list[float]) -> None:
    del s.contiguous_bin_counts[:]
    s.contiguous_bin_counts.extend(counts)
    s.contiguous_bin_index_offset = offset
    s.count = math.fsum(c for c in counts if math.isfinite(c)) + s.zero_count


@st.composite
def hostile_batch(draw: st.DrawFn) -> TelemetryBatch:
    """A batch of one sound window and one window breaking one bound (or a seq beyond the store's integer)."""
    w = good_window(draw(st.floats(1.0, 500.0)), T0 + timedelta(seconds=draw(st.integers(0, 3600))))
    sk = w.latency_e2e if draw(st.booleans()) else w.latency_model
    first = draw(st.integers(1, 1000))
    last = first + 1
    kind = draw(
        st.sampled_from(
            [
                "missing",
                "gamma",
                "mapping",
                "low",
                "high",
                "many",
                "count",
                "window_s",
                "seq",
                "frames",
                "conf",
                "min",
                "sensor",
            ]
        )
    )
    n = len(sk.contiguous_bin_counts)
    match kind:
        case "missing":
            w.ClearField(draw(st.sampled_from(["latency_e2e", "latency_model"])))
        case "gamma":
            sk.gamma = draw(st.floats(allow_nan=True, allow_infinity=True).filter(lambda g: g != FLEET_GAMMA))
        case "mapping":
            sk.index_offset = draw(st.floats().filter(lambda o: o != 0.0))
        case "low":
            _bins(sk, draw(st.integers(-(2**31), BIN_KEY_MIN - 1)), list(sk.contiguous_bin_counts))
        case "high":
            _bins(sk, draw(st.integers(BIN_KEY_MAX - n + 2, 2**31 - 1)), list(sk.contiguous_bin_counts))
        case "many":
            _bins(sk, BIN_KEY_MIN, [1.0] * draw(st.integers(MAX_BINS + 1, MAX_BINS + 2000)))
        case "count":
            counts = list(sk.contiguous_bin_counts)
            counts[draw(st.integers(0, n - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -1e-9]))
            _bins(sk, sk.contiguous_bin_index_offset, counts)
        case "window_s":
            w.window_s = draw(st.sampled_from([math.nan, math.inf, -math.inf, -1e-9, -1.0, 1e12]))
        case "seq":
            last = draw(st.integers(2**63, 2**64 - 1))
            first = last - 1
        case "frames":
            setattr(w, draw(st.sampled_from(["frames", "errors"])), draw(st.integers(2**63, 2**64 - 1)))
        case "conf":
            w.confidence.counts.extend([1] * draw(st.integers(1001, 3000)))
        case "min":
            setattr(sk, draw(st.sampled_from(["sum", "min", "max"])), draw(st.sampled_from([math.nan, -1.0, math.inf])))
        case "sensor":
            w.sensors.add(name="cpu_thermal", kind="temp_c", value=draw(st.sampled_from([math.nan, math.inf])))
        case _:
            raise AssertionError(kind)
    sound = good_window(50.0, T0)
    return TelemetryBatch(
        epoch="hostile",
        first_seq=first,
        last_seq=last,
        records=[TelemetryRecord(seq=first, metrics=sound), TelemetryRecord(seq=last, metrics=w)],
    )


def snapshot(engine: sa.Engine) -> list[list[Any]]:
    with engine.connect() as conn:
        return [sorted(map(repr, conn.execute(sa.select(table)).all())) for table in TABLES]


async def upload(address: str, cred: str, batches: list[TelemetryBatch]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = device_pb2_grpc.DeviceServiceStub(channel)
        async for _ack in stub.UploadTelemetry(iter(batches), metadata=bearer(cred)):
            pass


async def answers(c: Fleet) -> list[bytes]:
    """What other devices', sites' and the fleet's queries return (bytes: NaN PSI compares equal)."""
    requests = [
        fleet_pb2.QueryTelemetryRequest(group_by="device"),
        fleet_pb2.QueryTelemetryRequest(group_by="site"),
        fleet_pb2.QueryTelemetryRequest(group_by="bundle"),
        fleet_pb2.QueryTelemetryRequest(device="cam-good"),
        fleet_pb2.QueryTelemetryRequest(site="yard", group_by="site"),
    ]
    out = []
    for r in requests:
        reply = await c.fleet.QueryTelemetry(r, metadata=c.admin)
        out.append(reply.SerializeToString(deterministic=True))
    return out


async def seeded(c: Fleet, address: str) -> dict[str, str]:
    """Three devices with five sound windows each; returns name -> credential (and ``id:<name>`` -> id)."""
    creds = {}
    for site, name, latency in (("lab", "cam-good", 20.0), ("yard", "cam-other", 80.0), ("lab", "cam-bad", 40.0)):
        creds[f"id:{name}"], creds[name] = await c.enroll(site, name)
        await c.report_running(creds[name], BUNDLE)
        windows = [good_window(latency, T0 + timedelta(seconds=10 * i)) for i in range(5)]
        await upload(
            address,
            creds[name],
            [
                TelemetryBatch(
                    epoch="ep",
                    first_seq=1,
                    last_seq=5,
                    records=[TelemetryRecord(seq=i + 1, metrics=w) for i, w in enumerate(windows)],
                )
            ],
        )
    return creds


async def test_hostile_windows_are_refused_whole_and_change_no_query(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as c:
        creds = await seeded(c, ctrl.address)
        engine = ctrl.app.store.db.engine
        before, stored = await answers(c), snapshot(engine)
        seen: set[str] = set()

        def probe() -> None:
            with grpc.insecure_channel(ctrl.address) as channel:
                stub = device_pb2_grpc.DeviceServiceStub(channel)

                @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
                @given(hostile_batch())
                def refused(batch: TelemetryBatch) -> None:
                    with pytest.raises(grpc.RpcError) as info:
                        list(stub.UploadTelemetry(iter([batch]), metadata=bearer(creds["cam-bad"])))
                    err: Any = info.value
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
                    details = err.details() or ""
                    assert "TelemetryBatch" in details and len(details) < 1000, details
                    seen.add(details.split(" must ")[0][:60])
                    assert snapshot(engine) == stored

                refused()

        await asyncio.to_thread(probe)
        assert len(seen) >= 5, seen
        assert await answers(c) == before
        # the device is not wedged: its next sound batch is stored and counted in its own rows
        await upload(
            ctrl.address,
            creds["cam-bad"],
            [
                TelemetryBatch(
                    epoch="ep", first_seq=6, last_seq=6, records=[TelemetryRecord(seq=6, metrics=good_window(40.0, T0))]
                )
            ],
        )
        mine = await c.fleet.QueryTelemetry(fleet_pb2.QueryTelemetryRequest(device="cam-bad"), metadata=c.admin)
        assert mine.rows[0].frames == 6 * 20
        assert (await answers(c))[3:] == before[3:]  # cam-good's and yard's answers did not move


async def test_bad_windows_stored_by_older_versions_are_skipped_and_counted(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as c:
        ids = await seeded(c, ctrl.address)
        engine = ctrl.app.store.db.engine
        w = t.telemetry_windows
        before = await answers(c)
        sound_fleet = await c.fleet.QueryTelemetry(fleet_pb2.QueryTelemetryRequest(group_by="site"), metadata=c.admin)
        with engine.begin() as conn:
            template = dict(
                conn.execute(sa.select(w).where(w.c.device_id == ids["id:cam-bad"]).limit(1)).mappings().one()
            )
            del template["id"]
            far = LatencySketch(gamma=FLEET_GAMMA, contiguous_bin_counts=[1.0], count=1.0, sum=1.0, min=1.0, max=1.0)
            far.contiguous_bin_index_offset = -30_000_000
            far_end = LatencySketch.FromString(far.SerializeToString())
            far_end.contiguous_bin_index_offset = 30_000_000
            bad = {
                "gamma 0 (no sketch)": {"latency_e2e": b""},
                "offset -30000000": {"latency_model": far.SerializeToString()},
                "offset +30000000": {"latency_e2e": far_end.SerializeToString()},
                "not a sketch": {"latency_e2e": b"\xff\xff\xff"},
                "window_s -1": {"window_s": -1.0},
            }
            for i, change in enumerate(bad.values()):
                conn.execute(w.insert(), [template | {"epoch": "old", "seq": 100 + i} | change])
        started = time.perf_counter()
        fleet = await c.fleet.QueryTelemetry(fleet_pb2.QueryTelemetryRequest(group_by="site"), metadata=c.admin)
        elapsed = time.perf_counter() - started
        assert fleet.skipped_records == len(bad)
        metered = ctrl.app.metrics.registry.get_sample_value("edgefleet_telemetry_skipped_records_total")
        assert metered == len(bad)
        assert list(fleet.rows) == list(sound_fleet.rows)
        assert elapsed < 2.0, elapsed
        after = await answers(c)
        # the same rows as before the bad records were stored; only the skipped count differs
        for a, b in zip(before, after, strict=True):
            old, new = fleet_pb2.QueryTelemetryResponse.FromString(a), fleet_pb2.QueryTelemetryResponse.FromString(b)
            assert [r.SerializeToString(deterministic=True) for r in new.rows] == [
                r.SerializeToString(deterministic=True) for r in old.rows
            ]
        other = await c.fleet.QueryTelemetry(fleet_pb2.QueryTelemetryRequest(site="yard"), metadata=c.admin)
        assert other.skipped_records == 0 and other.rows[0].frames == 100
