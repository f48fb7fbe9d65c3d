"""The device learns which windows the controller acknowledged without storing, over real gRPC: the ack of
a batch says how many (``TelemetryAck.refused_windows``) and why (``refused_reason``); the edge-runtime's
real uploader logs it once per batch (``telemetry.windows_refused_by_controller``), counts it
(``windows_refused``, reported in ``details.telemetry_windows_refused``) and its buffer moves on."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

from edge_runtime.agent.telemetry.uploader import TelemetryUploader, UploadSettings
from edge_runtime.telemetry.buffer import TelemetryBuffer
from edgefleet.v1 import device_pb2_grpc
from edgefleet.v1.telemetry_pb2 import TelemetryAck, TelemetryBatch
from edgefleet_testing.controller import bearer, connected, running_controller
from tests.integration.test_telemetry_bundle_digest import FORGED, batch, frames_by_device, metrics
from tests.integration.test_telemetry_ingest import rec, window

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNNING = "sha256:" + "a" * 64


async def acks(address: str, cred: str, batches: list[TelemetryBatch]) -> list[TelemetryAck]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = device_pb2_grpc.DeviceServiceStub(channel)
        call = stub.UploadTelemetry(iter(batches), metadata=bearer(cred), compression=grpc.Compression.Gzip)
        return [ack async for ack in call]


async def test_the_ack_counts_the_windows_it_did_not_store_and_says_why(tmp_path: Path) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as fleet:
        cam, cred = await fleet.enroll("lab", "cam-1")
        await fleet.report_running(cred, RUNNING)
        t1 = t0 + timedelta(seconds=10)
        got = await acks(
            ctrl.address,
            cred,
            [
                # two forged windows, the running bundle's window and an alert: one ack, 2 refused
                batch(1, metrics(1, 7, FORGED, t0), metrics(2, 3, RUNNING, t0), metrics(3, 9, FORGED, t1), rec(4)),
                # the next batch is clean: nothing refused, no reason
                batch(5, metrics(5, 4, RUNNING, t1)),
                # the refused windows re-sent (a lost ack): duplicates, not refused again
                batch(1, metrics(1, 7, FORGED, t0), metrics(3, 9, FORGED, t1)),
            ],
        )
        assert [(a.acked_through, a.duplicates, a.refused_windows) for a in got] == [(4, 0, 2), (5, 0, 0), (5, 2, 0)]
        assert got[0].refused_reason.startswith("seq 1: bundle 'sha256:eeee")
        assert "neither the device's desired bundle nor one it reports holding" in got[0].refused_reason
        assert got[1].refused_reason == got[2].refused_reason == ""
        assert await frames_by_device(fleet, t0) == {cam: 3 + 4}


async def test_the_uploader_logs_each_batch_with_refusals_once_and_counts_them(tmp_path: Path) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as fleet:
        cam, cred = await fleet.enroll("lab", "cam-1")
        await fleet.report_running(cred, RUNNING)
        buf = TelemetryBuffer(tmp_path / "dev" / "buffer.db", max_bytes=8 << 20, review_quota_bytes=1 << 20)
        # batches of 2 records: [forged, forged] [running, forged] [running]
        for i, bundle in enumerate([FORGED, FORGED, RUNNING, FORGED, RUNNING]):
            buf.append(window([5.0] * (i + 1), start=t0 + timedelta(seconds=10 * i), bundle=bundle))
        channel = grpc.aio.insecure_channel(ctrl.address)
        up = TelemetryUploader(
            buf,
            functools.partial(device_pb2_grpc.DeviceServiceStub, channel),
            functools.partial(bearer, cred),
            functools.partial(UploadSettings, batch_max_records=2, batch_max_delay_s=0.05, max_in_flight=1),
        )
        with capture_logs() as logs:
            task = asyncio.create_task(up.run())
            try:
                deadline = asyncio.get_running_loop().time() + 20
                while buf.count():
                    assert asyncio.get_running_loop().time() < deadline, buf.count()
                    await asyncio.sleep(0.05)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await channel.close()
        lines = [e for e in logs if e["event"] == "telemetry.windows_refused_by_controller"]
        assert [(e["refused"], e["total"], e["acked_through"]) for e in lines] == [(2, 2, 2), (1, 3, 4)]
        assert all(e["log_level"] == "warning" and "sha256:eeee" in e["reason"] for e in lines)
        assert up.windows_refused == 3 and buf.acked_through == 5
        # the running bundle's windows (3 and 5 frames) are stored; the forged ones are not
        assert await frames_by_device(fleet, t0) == {cam: 3 + 5}
