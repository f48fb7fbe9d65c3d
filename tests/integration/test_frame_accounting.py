"""Every frame accounted for, at the pipeline's depth with real processes killed by SIGKILL: the final flush
of a clean stop, the gap a start declares after a kill (exact, and once), two kills in a row before any
window closed, a kill while the flush waits on its sensors, a corrupt checkpoint (moved aside, an
unknown-count gap, never fatal), a checkpoint from another boot (a lower bound unless that stop was clean),
and a gap's round trip buffer → uploader → real controller → query counts."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from structlog.testing import capture_logs

from edge_runtime.agent.telemetry.pipeline import CHECKPOINT_NAME, REQUEUE_REVIEWS_MAX, TelemetryPipeline
from edge_runtime.inference.results import FrameResult, Timings
from edge_runtime.sources import Frame
from edge_runtime.telemetry.buffer import TelemetryBuffer
from edge_runtime.telemetry.frame_progress import FrameCheckpoint
from edge_runtime.telemetry.records import RecordClass
from edge_runtime.telemetry.sensors import SensorReader
from edgefleet.v1 import device_pb2_grpc, fleet_pb2
from edgefleet.v1.telemetry_pb2 import DeviceEvent, TelemetryRecord
from edgefleet_testing.controller import bearer, connected, running_controller

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "c" * 64
CONFIG: dict[str, Any] = {"review": {"sample_rate": 0.0, "low_confidence_below": 0.0}}

# Drives a real pipeline in its own process so the test can SIGKILL it at a chosen step:
# ``observe:N`` (N frames), ``flush`` (close every window into the buffer), ``stall-flush`` (a flush whose
# sensor read never returns), ``hang``. Prints each step's name once it is done.
DRIVER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    import numpy as np
    from edge_runtime.agent.telemetry.pipeline import TelemetryPipeline
    from edge_runtime.inference.results import FrameResult, Timings
    from edge_runtime.sources import Frame
    from edge_runtime.telemetry.sensors import SensorReader

    data, smi, steps = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    config = {"review": {"sample_rate": 0.0, "low_confidence_below": 0.0}}
    sensors = SensorReader(data_dir=data, root=data / "no-sysfs", nvidia_smi=None, timeout_s=60.0)
    pipeline = TelemetryPipeline(
        data, stub=lambda: None, metadata=lambda: (), config=lambda: config, sensors=sensors
    )
    image = np.zeros((2, 2, 3), np.uint8)
    result = FrameResult(0, (), 0.5, Timings(1.0, 2.0, 1.0, 4.0), "CPUExecutionProvider", "DIGEST")

    async def main() -> None:
        for step in steps:
            name, _, arg = step.partition(":")
            if name == "observe":
                for i in range(int(arg)):
                    pipeline.observe(Frame(i, image, time.time()), "DIGEST", result)
            elif name == "flush":
                await pipeline.flush(force=True)
            elif name == "stall-flush":
                sensors.nvidia_smi = smi  # the flush's sensor read now hangs
                print("stall-flush", flush=True)
                await pipeline.flush(force=True)
            elif name == "hang":
                print("hang", flush=True)
                await asyncio.sleep(3600)
            print(step, flush=True)

    asyncio.run(main())
    """
).replace("DIGEST", DIGEST)


def run_then_kill(tmp_path: Path, *steps: str) -> None:
    """Run the driver through ``steps``; SIGKILL it once it reports the last one (``hang``/``stall-flush``)."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    smi = tmp_path / "slow-smi"
    smi.write_text("#!/bin/sh\nsleep 3600\n")
    smi.chmod(0o755)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "data"), str(smi), *steps],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill takes the hung nvidia-smi with it
    )
    try:
        assert proc.stdout is not None
        last = steps[-1]
        for line in proc.stdout:
            if line.strip() == last:
                break
        else:
            raise AssertionError(f"driver ended before {last!r}: rc={proc.wait()} {proc.stderr.read()[-2000:]}")  # type: ignore[union-attr]
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def pipeline_at(
    data: Path, stub: Any = None, metadata: Any = (), config: dict[str, Any] = CONFIG
) -> Iterator[TelemetryPipeline]:
    p = TelemetryPipeline(
        data,
        stub=stub or (lambda: None),
        metadata=lambda: metadata,
        config=lambda: config,
        sensors=SensorReader(data_dir=data, root=data / "no-sysfs", nvidia_smi=None),
    )
    try:
        yield p
    finally:
        p.close()


def held(buffer: TelemetryBuffer) -> list[TelemetryRecord]:
    return [r.to_proto() for r in buffer.records(buffer.seqs())]


def window_frames(buffer: TelemetryBuffer) -> int:
    return sum(r.metrics.frames for r in held(buffer) if r.WhichOneof("body") == "metrics")


def gaps(buffer: TelemetryBuffer) -> list[DeviceEvent]:
    return [
        r.event for r in held(buffer) if r.WhichOneof("body") == "event" and r.event.kind == DeviceEvent.KIND_FRAME_GAP
    ]


def observe(pipeline: TelemetryPipeline, n: int, digest: str = DIGEST) -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    result = FrameResult(0, (), 0.5, Timings(1.0, 2.0, 1.0, 4.0), "CPUExecutionProvider", digest)
    for i in range(n):
        pipeline.observe(Frame(i, image, 0.0), digest, result)


# ---------------------------------------------------------------------- clean stop


async def test_finish_flushes_every_open_window_and_the_next_start_declares_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with pipeline_at(data) as p:
        observe(p, 30)
        observe(p, 12, digest="sha256:" + "d" * 64)  # a second bundle's window is open too
        assert window_frames(p.buffer) == 0
        await p.finish(upload_s=0)
        assert window_frames(p.buffer) == 42
    with capture_logs() as logs, pipeline_at(data) as again:
        assert again.declared_gap is None and again.frames_observed == 42
        assert gaps(again.buffer) == []
    assert not [e for e in logs if e["event"] == "telemetry.frame_gap_declared"]


async def test_a_window_due_closes_every_open_window_with_one_count(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with pipeline_at(data) as p:
        observe(p, 5)
        observe(p, 3, digest="sha256:" + "d" * 64)
        assert await p.flush(force=True) == 2
        observe(p, 4)
        p.close()  # as a kill leaves it: the open window (4 frames) only in memory
    with pipeline_at(data) as again:
        assert again.declared_gap is not None and again.declared_gap.frame_gap.frames == 4


def fail_appends(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """The next ``times`` appends to any buffer fail as a full disk makes them fail (nothing stored)."""
    real = TelemetryBuffer.append_many
    left = [times]

    def append_many(self: TelemetryBuffer, *args: Any, **kwargs: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TelemetryBuffer, "append_many", append_many)


async def test_a_failed_append_loses_nothing_and_the_next_flush_stores_it_with_its_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The flush's append fails: the closed window and the queued event go back to the queue with their mark,
    # and the next flush (nothing due) stores them; the frames after it are the only gap a kill declares.
    data = tmp_path / "data"
    with pipeline_at(data) as p:
        observe(p, 30)
        p.record_event(DeviceEvent(event_id="ev-1", kind=DeviceEvent.KIND_ROLLBACK))
        fail_appends(monkeypatch, 1)
        with pytest.raises(sqlite3.OperationalError, match="full"):
            await p.flush(force=True)
        assert window_frames(p.buffer) == 0
        assert await p.flush() == 2  # nothing is due: only what the failed append put back
        assert window_frames(p.buffer) == 30
        assert [r.event.event_id for r in held(p.buffer) if r.WhichOneof("body") == "event"] == ["ev-1"]
        observe(p, 4)
        p.close()  # as a kill leaves it: the open window (4 frames) only in memory
    with pipeline_at(data) as again:
        assert again.declared_gap is not None
        assert (again.declared_gap.frame_gap.frames, again.declared_gap.frame_gap.frames_known) == (4, True)
        assert window_frames(again.buffer) == 30 and again.frames_observed == 34


# ---------------------------------------------------------------------- kills


def test_kill_with_a_window_open_declares_the_exact_count_once(tmp_path: Path) -> None:
    run_then_kill(tmp_path, "observe:40", "flush", "observe:17", "hang")
    data = tmp_path / "data"
    with pipeline_at(data) as p:
        assert window_frames(p.buffer) == 40
        (gap,) = gaps(p.buffer)
        assert (gap.frame_gap.frames, gap.frame_gap.frames_known, gap.frame_gap.cause) == (17, True, "process_killed")
        assert gap.bundle_digest == DIGEST
        start, end = gap.frame_gap.start.ToDatetime(tzinfo=UTC), gap.frame_gap.end.ToDatetime(tzinfo=UTC)
        assert start <= end <= datetime.now(UTC)
        assert p.frames_observed == 57
    with pipeline_at(data) as p:  # declared once: a second start finds the mark moved with the gap
        assert p.declared_gap is None and len(gaps(p.buffer)) == 1


async def test_a_failed_append_keeps_only_the_newest_review_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    every_frame = {"review": {"sample_rate": 1.0, "low_confidence_below": 0.0, "max_per_hour": 1000}}
    with pipeline_at(tmp_path / "data", config=every_frame) as p:
        observe(p, REQUEUE_REVIEWS_MAX + 4)  # one review sample per frame
        fail_appends(monkeypatch, 1)
        with capture_logs() as logs, pytest.raises(sqlite3.OperationalError):
            await p.flush(force=True)
        assert [e["count"] for e in logs if e["event"] == "telemetry.review_samples_dropped"] == [4]
        assert await p.flush() == REQUEUE_REVIEWS_MAX + 1  # the window (every frame) and the newest samples
        assert window_frames(p.buffer) == REQUEUE_REVIEWS_MAX + 4
        assert p.buffer.count(RecordClass.REVIEW) == REQUEUE_REVIEWS_MAX


async def test_a_gap_whose_append_failed_at_start_is_stored_by_the_next_flush_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_then_kill(tmp_path, "observe:20", "flush", "observe:5", "hang")
    data = tmp_path / "data"
    fail_appends(monkeypatch, 1)  # the declaring start's append (the gap and its mark) fails
    with pipeline_at(data) as p:
        assert p.declared_gap is not None and gaps(p.buffer) == []
        observe(p, 3)
        await p.flush(force=True)  # the gap with its mark first, then the window on top
        assert [g.frame_gap.frames for g in gaps(p.buffer)] == [5]
        assert window_frames(p.buffer) == 23
    with pipeline_at(data) as again:  # every frame stored or declared: nothing more to declare
        assert again.declared_gap is None and again.frames_observed == 28


def test_two_kills_in_a_row_before_any_window_closed(tmp_path: Path) -> None:
    run_then_kill(tmp_path, "observe:25", "hang")
    run_then_kill(tmp_path, "observe:9", "hang")  # this start declared the 25; then 9 more, killed again
    with pipeline_at(tmp_path / "data") as p:
        assert [g.frame_gap.frames for g in gaps(p.buffer)] == [25, 9]
        assert all(g.frame_gap.frames_known for g in gaps(p.buffer))
        assert window_frames(p.buffer) == 0 and p.frames_observed == 34


def test_kill_during_the_flush(tmp_path: Path) -> None:
    # The flush waits on its sensor read (a hung nvidia-smi) when the kill lands: nothing was committed,
    # so every frame since the last committed window is declared.
    run_then_kill(tmp_path, "observe:10", "flush", "observe:6", "stall-flush")
    with pipeline_at(tmp_path / "data") as p:
        assert window_frames(p.buffer) == 10
        assert [g.frame_gap.frames for g in gaps(p.buffer)] == [6]


# ---------------------------------------------------------------------- corrupt checkpoint


async def test_a_corrupt_checkpoint_is_moved_aside_and_declared_as_unknown_count(tmp_path: Path) -> None:
    run_then_kill(tmp_path, "observe:20", "flush", "observe:5", "hang")
    data = tmp_path / "data"
    checkpoint = data / "telemetry" / CHECKPOINT_NAME
    checkpoint.write_bytes(b"\x00garbage" * 5)
    with capture_logs() as logs, pipeline_at(data) as p:
        (gap,) = gaps(p.buffer)
        assert (gap.frame_gap.frames_known, gap.frame_gap.cause) == (False, "checkpoint_corrupt")
        assert (checkpoint.parent / (CHECKPOINT_NAME + ".corrupt")).read_bytes() == b"\x00garbage" * 5
        observe(p, 3)  # serving goes on, counting from the buffer's mark
        await p.finish(upload_s=0)
        assert window_frames(p.buffer) == 23
    assert any(e["event"] == "telemetry.frame_checkpoint_unreadable" for e in logs)
    with pipeline_at(data) as p:
        assert p.declared_gap is None


# ---------------------------------------------------------------------- reboots


async def test_after_a_reboot_the_count_is_a_lower_bound_unless_the_stop_was_clean(tmp_path: Path) -> None:
    """The checkpoint lives in the page cache: written under another boot, an unclean one may be stale."""
    run_then_kill(tmp_path, "observe:20", "flush", "observe:5", "hang")
    data = tmp_path / "data"
    path = data / "telemetry" / CHECKPOINT_NAME
    # What the file would say had the machine lost power (the kill's state, written under the last boot).
    FrameCheckpoint(path, frames=25, now=datetime.now(UTC), boot_id="a-previous-boot").close()
    with pipeline_at(data) as p:
        (gap,) = gaps(p.buffer)
        assert (gap.frame_gap.frames, gap.frame_gap.frames_known, gap.frame_gap.cause) == (5, False, "rebooted")
        assert p.frames_observed == 25
        observe(p, 4)
        await p.finish(upload_s=0)
        assert window_frames(p.buffer) == 24
    # A clean stop, then a reboot: nothing to declare.
    clean = FrameCheckpoint(path, frames=29, now=datetime.now(UTC), boot_id="a-previous-boot")
    clean.mark_clean()
    clean.close()
    with pipeline_at(data) as p:
        assert p.declared_gap is None


# ---------------------------------------------------------------------- to the controller and back


async def test_gap_round_trip_to_the_controller_counts(tmp_path: Path) -> None:
    run_then_kill(tmp_path, "observe:40", "flush", "observe:17", "hang")
    data = tmp_path / "data"
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as c:
        device_id, cred = await c.enroll("lab", "cam-gap")
        await c.report_running(cred, DIGEST)  # the controller stores windows of bundles the device runs
        channel = grpc.aio.insecure_channel(ctrl.address)
        stub = device_pb2_grpc.DeviceServiceStub(channel)
        try:
            with pipeline_at(data, stub=lambda: stub, metadata=bearer(cred)) as p:
                assert [g.frame_gap.frames for g in gaps(p.buffer)] == [17]
                observe(p, 8)
                await p.finish(upload_s=5.0)  # a clean stop sends what it flushed when the link allows
                assert p.buffer.count() == 0
            (data / "telemetry" / CHECKPOINT_NAME).write_bytes(b"")  # the next start finds it unreadable
            with pipeline_at(data, stub=lambda: stub, metadata=bearer(cred)) as p:
                assert [g.frame_gap.cause for g in gaps(p.buffer)] == ["checkpoint_corrupt"]
                await p.finish(upload_s=5.0)
                assert p.buffer.count() == 0
            service = ctrl.app.telemetry
            (row,) = (await service.query(fleet_pb2.QueryTelemetryRequest(group_by="device"))).rows
            assert row.key == device_id
            assert (row.frames, row.frames_lost, row.gaps, row.gaps_unknown) == (48, 17, 2, 1)
            (site,) = (await service.query(fleet_pb2.QueryTelemetryRequest(group_by="site"))).rows
            assert (site.key, site.frames, site.frames_lost) == ("lab", 48, 17)
            later = fleet_pb2.QueryTelemetryRequest(group_by="device")
            later.since.FromDatetime(datetime.now(UTC))
            assert list((await service.query(later)).rows) == []
        finally:
            await channel.close()
