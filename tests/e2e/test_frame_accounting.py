"""Every frame accounted for (issue 12), with a real controller process and a real ``edge-runtime`` process:
nine stops mixing SIGTERM and SIGKILL of the device (3 + 3) and SIGKILL of the controller (3, one of them
while the device stops cleanly with the controller down), then

    frames processed (the device's --frame-log) == frames stored at the controller + frames declared lost

exactly, from ``QueryTelemetry`` (what ``fleetctl telemetry query`` shows). A SIGTERM flushes its open
windows (no gap is ever declared by the start after one); each SIGKILL leaves a gap that the next start
declares with its exact count (``KIND_FRAME_GAP``, read back from the controller's database and matched to
the life that declared it). Kills land 2 s away from any window close (windows of 4 s), so every killed
life has frames in its open window; one kill comes 1.5 s into a life, before its first window closed,
right after the kill before it.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgefleet.v1 import fleet_pb2
from edgefleet.v1.telemetry_pb2 import DeviceEvent
from edgefleet_testing.bundles import make_bundle
from edgefleet_testing.controller import free_port
from edgefleet_testing.fleet import Controller, EdgeProcess, start_controller, start_edge
from edgefleet_testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WINDOW_S = 4
CONFIG = f"""apiVersion: edgefleet.io/v1
kind: FleetConfig
metadata: {{name: default}}
spec:
  config:
    canary: {{watch_window_s: 0.5, min_frames: 60, min_seconds: 0.5}}
    telemetry: {{window_s: {WINDOW_S}, batch_max_delay_s: 0.2}}
"""


@dataclass
class Life:
    """One run of the device: when it started, how the run before it ended, how it ended."""

    started: float
    after: str
    ended: float = 0.0
    how: str = ""


class ControllerSeat:
    """The controller process on one fixed port and data dir, SIGKILLed and restarted in place."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self._cm: contextlib.AbstractContextManager[Controller] | None = None
        self.ctl: Controller | None = None
        self.kills = 0

    def start(self) -> Controller:
        self._cm = start_controller(self.data_dir, port=self.port)
        self.ctl = self._cm.__enter__()
        return self.ctl

    def sigkill(self) -> None:
        assert self.ctl is not None and self._cm is not None
        self.ctl.proc.kill()
        self.ctl.proc.wait(10)
        self._cm.__exit__(None, None, None)
        self.ctl, self._cm = None, None
        self.kills += 1

    def stop(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self.ctl, self._cm = None, None


@contextlib.contextmanager
def seat(data_dir: Path) -> Iterator[ControllerSeat]:
    s = ControllerSeat(data_dir)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def frame_count(dev_frames: Path) -> int:
    if not dev_frames.exists():
        return 0
    return sum(1 for line in dev_frames.read_text().splitlines() if len(line.split()) == 2)


def buffered_records(data_dir: Path) -> int:
    db = sqlite3.connect(f"file:{data_dir / 'telemetry' / 'buffer.db'}?mode=ro", uri=True, timeout=5)
    try:
        return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])
    finally:
        db.close()


def declared_gaps(ctl_dir: Path) -> list[DeviceEvent]:
    db = sqlite3.connect(f"file:{ctl_dir / 'controller.db'}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT payload FROM telemetry_events WHERE kind = 'frame_gap' ORDER BY at").fetchall()
    finally:
        db.close()
    return [DeviceEvent.FromString(bytes(r[0])) for r in rows]


def test_frames_processed_equal_frames_stored_plus_declared_lost_over_nine_stops(tmp_path: Path) -> None:
    begun = time.monotonic()
    data = tmp_path / "cam"
    frames_file = tmp_path / "cam.frames"  # start_edge's --frame-log, appended across lives
    lives: list[Life] = []
    with seat(tmp_path / "ctl") as controller:
        ctl = controller.ctl
        assert ctl is not None
        key = ctl.trust_new_key(tmp_path / "keys")
        v1 = make_bundle(tmp_path / "b1", key, version="1.0.0", seed=1)
        ctl.push(v1)
        ctl.apply("fleet.yaml", CONFIG, timeout=10)
        token = ctl.enrollment_token("lab")
        address = f"127.0.0.1:{controller.port}"
        dev: EdgeProcess | None = None

        def start(after: str) -> EdgeProcess:
            lives.append(Life(time.time(), after))
            return start_edge(address, data, token, name="cam", source="synthetic:30")

        def serving_frames(edge: EdgeProcess) -> float:
            """Wait for this life's first inferred frame (the frame log grows): its first window opens then."""
            before = frame_count(frames_file)
            wait_until(lambda: frame_count(frames_file) > before, 30, "frames of this life")
            return time.time()

        def mid_window(t0: float) -> None:
            """Sleep to the next instant half a window away from this life's window closes (t0 + k * 4 s)."""
            k = max(0, math.ceil((time.time() - t0 - WINDOW_S / 2) / WINDOW_S))
            time.sleep(max(0.0, t0 + k * WINDOW_S + WINDOW_S / 2 - time.time()))

        def end(edge: EdgeProcess, how: str) -> None:
            if how == "sigterm":
                assert edge.terminate(20) == 0, edge.log.read_text()[-3000:]
            else:
                edge.proc.kill()
                edge.wait_exit(10)
            lives[-1].ended, lives[-1].how = time.time(), how

        # Life 1: install v1, serve, clean stop.
        dev = start("first")
        ctl.set_desired("cam", v1.digest)
        dev.committed(v1.digest, timeout=60)
        time.sleep(2.0)
        end(dev, "sigterm")  # stop 1
        # Life 2: the controller is SIGKILLed under a serving device, then the device.
        dev = start("sigterm")
        t0 = serving_frames(dev)
        time.sleep(1.0)
        controller.sigkill()  # stop 2
        time.sleep(1.0)
        ctl = controller.start()
        mid_window(t0)
        end(dev, "sigkill")  # stop 3
        # Life 3: a window closes mid-life (at ~4 s); the kill lands ~2 s after it.
        dev = start("sigkill")
        t0 = serving_frames(dev)
        time.sleep(WINDOW_S)
        mid_window(t0)
        end(dev, "sigkill")  # stop 4
        # Life 4: killed again 1.5 s in, before any window of its own closed.
        dev = start("sigkill")
        serving_frames(dev)
        time.sleep(1.5)
        end(dev, "sigkill")  # stop 5
        # Life 5: the controller dies and stays down while the device stops cleanly (flush is durable only).
        dev = start("sigkill")
        serving_frames(dev)
        time.sleep(2.0)
        controller.sigkill()  # stop 6
        time.sleep(1.0)
        end(dev, "sigterm")  # stop 7
        ctl = controller.start()
        # Life 6: sends what life 5 flushed; the controller is SIGKILLed once more; a final clean stop.
        dev = start("sigterm")
        serving_frames(dev)
        time.sleep(1.5)
        controller.sigkill()  # stop 8
        ctl = controller.start()
        time.sleep(2.0)
        end(dev, "sigterm")  # stop 9
        # A clean stop uploads for up to 2 s; should that not have been enough, one more clean life sends it.
        for _ in range(3):
            if buffered_records(data) == 0:
                break
            dev = start("sigterm")
            serving_frames(dev)
            end(dev, "sigterm")
        assert buffered_records(data) == 0

        processed = frame_count(frames_file)
        request = fleet_pb2.QueryTelemetryRequest(group_by="device", device="cam")
        request.since.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
        (row,) = ctl.fleet.QueryTelemetry(request, metadata=ctl.md, timeout=10).rows
        gaps = declared_gaps(ctl.data_dir)

    device_stops = [life.how for life in lives]
    print(
        f"\nframe accounting: processed={processed} stored={row.frames} declared_lost={row.frames_lost} "
        f"gaps={row.gaps} (unknown {row.gaps_unknown}) device stops={device_stops} "
        f"controller kills={controller.kills} per-gap={[g.frame_gap.frames for g in gaps]} "
        f"{time.monotonic() - begun:.1f} s"
    )
    assert device_stops.count("sigterm") >= 3 and device_stops.count("sigkill") == 3 and controller.kills == 3
    assert processed > 0 and row.frames > 0
    # The oracle: every processed frame is stored in a window or declared lost, exactly.
    assert processed == row.frames + row.frames_lost, (processed, row.frames, row.frames_lost)
    assert row.gaps_unknown == 0 and row.errors == 0

    # Each gap was declared by the start right after a SIGKILL, with an exact count; none after a SIGTERM.
    assert len(gaps) == row.gaps == 3
    declared_by = []
    for gap in gaps:
        at = gap.at.ToDatetime(tzinfo=UTC).timestamp()
        (life,) = [life for life in lives if life.started <= at <= life.ended]
        declared_by.append(life.after)
        assert gap.frame_gap.frames_known and gap.frame_gap.frames > 0 and gap.frame_gap.cause == "process_killed"
    assert declared_by == ["sigkill"] * 3
