"""Telemetry ingest over real gRPC and SQLite: the contiguous ack (declared dropped ranges, out-of-order
events, duplicates), batch validation, the real device uploader draining a real buffer, merged-sketch
percentiles against exact ones, the review queue and retention."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
import sqlalchemy as sa

from edge_runtime.agent.telemetry.uploader import TelemetryUploader, UploadSettings
from edge_runtime.telemetry.buffer import TelemetryBuffer
from edgefleet.contract.sketch import new_sketch, sketch_to_proto
from edgefleet.v1 import device_pb2_grpc, fleet_pb2
from edgefleet.v1.telemetry_pb2 import (
    ConfidenceHistogram,
    DeviceEvent,
    MetricWindow,
    ReviewSample,
    SeqRange,
    TelemetryBatch,
    TelemetryRecord,
)
from edgefleet_controller.bootstrap import Controller
from edgefleet_controller.store import schema as t
from edgefleet_controller.telemetry.service import TelemetryService
from edgefleet_testing.controller import bearer, connected, running_controller

pytestmark = pytest.mark.integration

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def wired(app: Controller) -> TelemetryService:
    """The controller's telemetry service (``bootstrap.build_controller`` wires it)."""
    service = TelemetryService(app.store, app.clock, app.feed)

    async def ingest_telemetry(device_id: str, batches: AsyncIterator[TelemetryBatch]) -> AsyncIterator[object]:
        async for ack in service.ingest(device_id, batches):
            yield ack

    if not hasattr(app, "telemetry"):
        app.ingest_telemetry = ingest_telemetry  # type: ignore[assignment,method-assign]
        return service
    return app.telemetry  # type: ignore[no-any-return]


def window(latencies: list[float], *, start: datetime, bundle: str = "sha256:" + "a" * 64) -> MetricWindow:
    e2e = new_sketch()
    for v in latencies:
        e2e.add(v)
    w = MetricWindow(
        window_s=10.0,
        bundle_digest=bundle,
        frames=len(latencies),
        latency_e2e=sketch_to_proto(e2e),
        latency_model=sketch_to_proto(e2e),
        confidence=ConfidenceHistogram(counts=[0] * 15 + [len(latencies)] + [0] * 4),
    )
    w.window_start.FromDatetime(start)
    return w


def rec(seq: int) -> TelemetryRecord:
    return TelemetryRecord(seq=seq, event=DeviceEvent(event_id=f"e{seq}", kind=DeviceEvent.KIND_ALERT))


@contextlib.asynccontextmanager
async def controller(tmp_path: Path) -> AsyncIterator[tuple[object, TelemetryService]]:
    async with running_controller(tmp_path / "ctl") as ctrl:
        yield ctrl, wired(ctrl.app)


async def upload(address: str, cred: str, batches: list[TelemetryBatch]) -> list[tuple[int, int]]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = device_pb2_grpc.DeviceServiceStub(channel)
        call = stub.UploadTelemetry(iter(batches), metadata=bearer(cred), compression=grpc.Compression.Gzip)
        return [(ack.acked_through, ack.duplicates) async for ack in call]


async def test_ack_is_contiguous_and_passes_declared_drops_and_duplicates(tmp_path: Path) -> None:
    async with controller(tmp_path) as (ctrl, _), connected(ctrl) as c:  # type: ignore[arg-type]
        _, cred = await c.enroll("lab", "cam-1")
        acks = await upload(
            ctrl.address,  # type: ignore[attr-defined]
            cred,
            [
                TelemetryBatch(epoch="ep1", first_seq=1, last_seq=2, records=[rec(1), rec(2)]),
                # 3..5 dropped by the device's buffer policy: the mark passes them
                TelemetryBatch(
                    epoch="ep1", first_seq=3, last_seq=6, records=[rec(6)], dropped=[SeqRange(first=3, last=5)]
                ),
                # an event ahead of the mark (events first after a reconnect): stored, the mark waits
                TelemetryBatch(epoch="ep1", first_seq=9, last_seq=9, records=[rec(9)]),
                TelemetryBatch(epoch="ep1", first_seq=7, last_seq=8, records=[rec(7), rec(8)]),
                # re-sent after a lost ack: all duplicates
                TelemetryBatch(epoch="ep1", first_seq=6, last_seq=9, records=[rec(6), rec(7), rec(8), rec(9)]),
                # another epoch has its own mark
                TelemetryBatch(epoch="ep2", first_seq=1, last_seq=1, records=[rec(1)]),
            ],
        )
        assert acks == [(2, 0), (6, 0), (6, 0), (9, 0), (9, 4), (1, 0)]
        with ctrl.app.store.db.engine.connect() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(sa.select(t.telemetry_events.c.epoch, t.telemetry_events.c.seq)).all()
            pending = conn.execute(sa.select(t.telemetry_pending)).all()
        assert sorted(rows) == [("ep1", s) for s in (1, 2, 6, 7, 8, 9)] + [("ep2", 1)]
        assert pending == []


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (TelemetryBatch(epoch="e", first_seq=1, last_seq=2, records=[rec(2), rec(1)]), "strictly ascending"),
        (TelemetryBatch(epoch="e", first_seq=1, last_seq=2, records=[rec(3)]), "outside first_seq..last_seq"),
        (TelemetryBatch(epoch="", first_seq=1, last_seq=1, records=[rec(1)]), "field 'epoch'"),
        (TelemetryBatch(epoch="e", first_seq=5, last_seq=6, dropped=[SeqRange(first=4, last=6)]), "dropped[0]"),
    ],
)
async def test_malformed_batches_are_refused_with_the_reason(
    tmp_path: Path, batch: TelemetryBatch, message: str
) -> None:
    async with controller(tmp_path) as (ctrl, _), connected(ctrl) as c:  # type: ignore[arg-type]
        _, cred = await c.enroll("lab", "cam-1")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await upload(ctrl.address, cred, [batch])  # type: ignore[attr-defined]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (info.value.details() or "")


async def test_uploader_drains_buffer_and_merged_percentiles_match_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    all_latencies: list[float] = []
    async with controller(tmp_path) as (ctrl, service), connected(ctrl) as c:  # type: ignore[arg-type]
        tasks = []
        buffers = []
        for d in range(3):
            _, cred = await c.enroll("lab", f"cam-{d}")
            await c.report_running(cred, "sha256:" + "a" * 64)
            buf = TelemetryBuffer(tmp_path / f"dev{d}" / "buffer.db", max_bytes=32 << 20, review_quota_bytes=8 << 20)
            buffers.append(buf)
            for i in range(40):
                lat = [float(x) for x in rng.lognormal(mean=3.0 + d * 0.3, sigma=0.5, size=50)]
                all_latencies.extend(lat)
                buf.append(window(lat, start=T0 + timedelta(seconds=10 * i)))
            buf.append(DeviceEvent(event_id=f"ev-{d}", kind=DeviceEvent.KIND_UPDATE_STATE))
            sample = ReviewSample(
                sample_id=f"s-{d}", bundle_digest="sha256:" + "a" * 64, reason="sampled", jpeg=b"\xff\xd8x"
            )
            sample.captured_at.FromDatetime(T0)
            buf.append(sample)
            channel = grpc.aio.insecure_channel(ctrl.address)  # type: ignore[attr-defined]
            stub = device_pb2_grpc.DeviceServiceStub(channel)
            up = TelemetryUploader(
                buf,
                functools.partial(lambda s: s, stub),
                functools.partial(bearer, cred),
                functools.partial(
                    UploadSettings, batch_max_records=16, batch_max_delay_s=0.05, backlog_rate_per_s=200.0
                ),
            )
            tasks.append((asyncio.create_task(up.run()), channel))
        deadline = asyncio.get_running_loop().time() + 20
        while any(b.count() for b in buffers):
            assert asyncio.get_running_loop().time() < deadline, [b.count() for b in buffers]
            await asyncio.sleep(0.05)
        for task, channel in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await channel.close()

        request = fleet_pb2.QueryTelemetryRequest(group_by="site")
        request.since.FromDatetime(T0)
        reply = await service.query(request)
        assert [r.key for r in reply.rows] == ["lab"]
        row = reply.rows[0]
        assert row.frames == len(all_latencies) == 3 * 40 * 50
        exact = np.asarray(all_latencies)
        for q, got in ((0.50, row.latency_e2e.p50_ms), (0.95, row.latency_e2e.p95_ms), (0.99, row.latency_e2e.p99_ms)):
            truth = float(np.quantile(exact, q, method="lower"))
            assert abs(got - truth) / truth <= 0.0101, (q, got, truth)
        # per device rows: fps = frames / seconds of windows; baseline complete → PSI 0 on unchanged data
        per_device = await service.query(fleet_pb2.QueryTelemetryRequest(group_by="device"))
        assert len(per_device.rows) == 3
        assert all(math.isclose(r.fps, 5.0) for r in per_device.rows)
        assert all(abs(r.drift_psi) < 1e-9 for r in per_device.rows)

        listed = await service.list_review(fleet_pb2.ListReviewSamplesRequest(label="unlabeled"))
        assert sorted(s.sample_id for s in listed.samples) == ["s-0", "s-1", "s-2"]
        await service.label(fleet_pb2.LabelReviewSampleRequest(sample_id="s-0", label="fp"), "alice")
        await service.label(fleet_pb2.LabelReviewSampleRequest(sample_id="s-1", label="tp"), "alice")
        listed = await service.list_review(fleet_pb2.ListReviewSamplesRequest(label="fp"))
        assert [(s.sample_id, s.labeled_by) for s in listed.samples] == [("s-0", "alice")]
        assert listed.fp_rate == {"lab/sha256:" + "a" * 64: 0.5}

        # retention by age drops everything older than 30 days (all of it, at T0)
        deleted = await service.run_retention()
        assert deleted["telemetry_windows"] == 120 and deleted["review_samples"] == 3
