"""The device telemetry pipeline takes its buffer bounds from the effective config: at start, and by a safe
reopen (uploader stopped, file closed and reopened, nothing lost) when the config changes them; invalid
bounds are refused once in the log and the buffer keeps its current ones."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from edge_runtime.agent.telemetry.pipeline import BUFFER_MAX_BYTES, TelemetryPipeline
from edge_runtime.telemetry.sensors import SensorReader
from edgefleet.v1 import device_pb2_grpc
from edgefleet.v1.telemetry_pb2 import DeviceEvent
from edgefleet_testing.controller import free_port

pytestmark = pytest.mark.integration

MiB = 1 << 20


async def test_bounds_from_config_at_start_and_reopen_on_change(tmp_path: Path) -> None:
    config: dict[str, Any] = {"telemetry": {"buffer_max_bytes": 2 * MiB, "review_quota_bytes": 256 * 1024}}
    # No controller listens: the uploader keeps retrying and never deletes a record.
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}")
    pipeline = TelemetryPipeline(
        tmp_path,
        stub=lambda: device_pb2_grpc.DeviceServiceStub(channel),
        metadata=lambda: (),
        config=lambda: config,
        sensors=SensorReader(data_dir=tmp_path, root=tmp_path / "no-sysfs", nvidia_smi=None),
    )
    assert (pipeline.buffer.max_bytes, pipeline.buffer.review_quota_bytes) == (2 * MiB, 256 * 1024)
    first = pipeline.buffer
    for i in range(5):
        pipeline.record_event(DeviceEvent(event_id=f"e{i}", kind=DeviceEvent.KIND_ALERT))
    assert await pipeline.flush() == 5
    epoch = first.epoch

    task = asyncio.create_task(pipeline.run())
    try:
        config["telemetry"] = {"buffer_max_bytes": 4 * MiB, "review_quota_bytes": MiB}
        for _ in range(50):
            await asyncio.sleep(0.05)
            if pipeline.buffer is not first:
                break
        assert (pipeline.buffer.max_bytes, pipeline.buffer.review_quota_bytes) == (4 * MiB, MiB)
        assert pipeline.uploader.buffer is pipeline.buffer
        # same file, same epoch, every record still there
        assert pipeline.buffer.epoch == epoch and pipeline.buffer.count() == 5

        reopened = pipeline.buffer
        with capture_logs() as logs:
            config["telemetry"] = {"buffer_max_bytes": MiB, "review_quota_bytes": 2 * MiB}
            await asyncio.sleep(0.5)
        assert pipeline.buffer is reopened and pipeline.buffer.max_bytes == 4 * MiB
        rejected = [e for e in logs if e["event"] == "telemetry.buffer_bounds_rejected"]
        assert len(rejected) == 1 and rejected[0]["review_quota_bytes"] == 2 * MiB
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        pipeline.close()
        await channel.close()


def test_no_config_yet_opens_with_the_defaults(tmp_path: Path) -> None:
    pipeline = TelemetryPipeline(
        tmp_path,
        stub=lambda: None,
        metadata=lambda: (),
        config=lambda: {},
        sensors=SensorReader(data_dir=tmp_path, nvidia_smi=None),
    )
    try:
        assert pipeline.buffer.max_bytes == BUFFER_MAX_BYTES
    finally:
        pipeline.close()
