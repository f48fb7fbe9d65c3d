"""Telemetry never stops silently (issue 12): a real controller process, real ``edge-runtime`` processes.

- The two configs from the issue that used to kill the telemetry task on the first review sample
  (``review_quota_bytes: 0``; a 64 KiB buffer with a 16 KiB review quota) keep windows flowing: the
  controller's acked-through mark and its stored windows keep advancing, the task never fails, and the
  oversized review samples (a 640x480 synthetic frame is ~78 KB of JPEG) come home as counted drops
  (``review_too_large`` in the stored windows' ``dropped``); a quota that can never hold a sample is refused
  at apply with the arithmetic and changes nothing.
- The telemetry task killed from inside the real process (``EDGEFLEET_TASK_FAILURES`` drill) is restarted;
  meanwhile the device is DEGRADED with the reason, in ``status.json`` and at the controller, then SERVING
  again, and telemetry flows again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgefleet.v1 import common_pb2
from edgefleet_testing.bundles import SignedBundle, make_bundle
from edgefleet_testing.fleet import Controller, EdgeProcess, running_edge, start_controller
from edgefleet_testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Review every ~20th frame (30 FPS: ~1.5 samples a second), windows of 1 s sent at once.
BASE = """apiVersion: edgefleet.io/v1
kind: FleetConfig
metadata: {{name: default}}
spec:
  config:
    canary: {{watch_window_s: 0.5, min_frames: 60, min_seconds: 0.5}}
    review: {{sample_rate: 0.05, low_confidence_below: 0.0, max_per_hour: 100000}}
    telemetry: {{window_s: 1, batch_max_delay_s: 0.2{telemetry}}}
"""


@dataclass
class Fleet:
    ctl: Controller
    v1: SignedBundle
    root: Path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("supervised")
    with start_controller(root / "ctl") as ctl:
        key = ctl.trust_new_key(root / "keys")
        v1 = make_bundle(root / "b1", key, version="1.0.0", seed=1)
        ctl.push(v1)
        ctl.apply("fleet.yaml", BASE.format(telemetry=""), timeout=10)
        yield Fleet(ctl, v1, root)


def controller_telemetry(ctl: Controller, device_id: str) -> tuple[int, int, dict[str, int]]:
    """(acked-through mark, stored windows, summed ``dropped`` of the stored windows) of one device, read
    from the controller's database."""
    db = sqlite3.connect(f"file:{ctl.data_dir / 'controller.db'}?mode=ro", uri=True, timeout=5)
    try:
        marks = db.execute("SELECT acked_through FROM telemetry_marks WHERE device_id = ?", (device_id,)).fetchall()
        rows = db.execute("SELECT dropped_json FROM telemetry_windows WHERE device_id = ?", (device_id,)).fetchall()
    finally:
        db.close()
    dropped: dict[str, int] = {}
    for (text,) in rows:
        for key, n in json.loads(text).items():
            dropped[key] = dropped.get(key, 0) + int(n)
    return max((int(m) for (m,) in marks), default=0), len(rows), dropped


def keeps_flowing(
    ctl: Controller, device_id: str, windows: int, timeout: float = 30
) -> tuple[int, int, dict[str, int]]:
    """Wait until the controller stored ``windows`` more windows and its acked-through mark moved."""
    acked, stored, _ = controller_telemetry(ctl, device_id)

    def advanced() -> tuple[int, int, dict[str, int]] | None:
        now = controller_telemetry(ctl, device_id)
        return now if now[0] > acked and now[1] >= stored + windows else None

    result: tuple[int, int, dict[str, int]] = wait_until(advanced, timeout, f"{windows} more windows stored")
    return result


def reported_when(ctl: Controller, name: str, health: common_pb2.Health.ValueType) -> common_pb2.ReportedState:
    """The device's reported state once the controller shows it with ``health``."""

    def seen() -> common_pb2.ReportedState | None:
        device = ctl.device(name)
        return device.reported if device.health == health else None

    reported: common_pb2.ReportedState = wait_until(seen, 15, f"controller sees {common_pb2.Health.Name(health)}")
    return reported


def fleetctl(ctl: Controller, *args: str) -> str:
    """``fleetctl ARGS`` as an operator runs it against the controller; its stdout."""
    env = {**os.environ, "EDGEFLEET_CONTROLLER": ctl.address, "EDGEFLEET_TOKEN": ctl.admin_token, "COLUMNS": "200"}
    exe = Path(sys.executable).with_name("fleetctl")
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=60, check=True)
    return proc.stdout


def config_in_force(ctl: Controller, dev: EdgeProcess) -> dict[str, Any]:
    desired = ctl.device(dev.name).desired.config_digest
    return dev.wait_for(lambda s: s["update"]["committed_config"] == desired, 30, f"config {desired[:19]} in force")


def telemetry_task(status: dict[str, Any]) -> dict[str, Any]:
    task: dict[str, Any] = status["tasks"]["telemetry"]
    return task


def test_the_review_quota_configs_of_the_issue_keep_telemetry_flowing_with_counted_drops(
    fleet: Fleet, tmp_path: Path
) -> None:
    ctl = fleet.ctl
    with running_edge(ctl.address, tmp_path / "quota", ctl.enrollment_token("lab"), name="quota") as dev:
        ctl.set_desired("quota", fleet.v1.digest)
        dev.committed(fleet.v1.digest)
        device_id = ctl.device("quota").id
        keeps_flowing(ctl, device_id, 2)

        # 1. review_quota_bytes: 0 -> review sampling off; nothing fails, windows keep coming.
        ctl.apply("fleet.yaml", BASE.format(telemetry=", review_quota_bytes: 0"), timeout=10)
        config_in_force(ctl, dev)
        _, _, dropped_before = controller_telemetry(ctl, device_id)
        keeps_flowing(ctl, device_id, 3)
        status = dev.status()
        assert telemetry_task(status)["total_failures"] == 0
        assert status["health"] == "HEALTH_SERVING", status.get("health_reason")
        _, _, dropped = controller_telemetry(ctl, device_id)
        assert dropped.get("review_too_large", 0) == dropped_before.get("review_too_large", 0), "sampling is off"

        # 2. A quota that can never hold a sample is refused with the arithmetic; the desired config stays.
        desired = ctl.device("quota").desired.config_digest
        with pytest.raises(grpc.RpcError) as refused:
            ctl.apply("fleet.yaml", BASE.format(telemetry=", review_quota_bytes: 500"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = refused.value.details() or ""
        assert "review_quota_bytes 500 is smaller than one review sample" in details
        assert "raise it to >= 844" in details and "set 0 to turn review sampling off" in details
        assert ctl.device("quota").desired.config_digest == desired

        # 3. The schema's minimum buffer (64 KiB; batches must fit it too) with a 16 KiB review quota: every
        #    ~78 KB review sample is dropped and counted, and the count comes home in the windows.
        small = ", buffer_max_bytes: 65536, review_quota_bytes: 16384, batch_max_bytes: 65536"
        ctl.apply("fleet.yaml", BASE.format(telemetry=small), timeout=10)
        config_in_force(ctl, dev)
        keeps_flowing(ctl, device_id, 3)
        wait_until(
            lambda: controller_telemetry(ctl, device_id)[2].get("review_too_large", 0) >= 2,
            20,
            "review_too_large drops reported in stored windows",
        )
        keeps_flowing(ctl, device_id, 2)
        status = dev.status()
        assert telemetry_task(status)["total_failures"] == 0
        assert status["health"] == "HEALTH_SERVING", status.get("health_reason")
        assert status["telemetry_too_large"]["review_too_large"] >= 2
        # The reported state goes home on the next Sync, so the controller's copy may trail status.json.
        reported = wait_until(
            lambda: (r := ctl.device("quota").reported).details["telemetry_too_large"] >= 2 and r,
            20,
            "the reported details count the review drops",
        )
        assert reported.health == common_pb2.HEALTH_SERVING
    log = dev.log.read_text(errors="replace")
    assert '"telemetry.record_too_large"' in log
    assert '"agent.task_failed"' not in log


def test_a_telemetry_task_killed_inside_the_process_is_restarted_and_health_is_degraded_meanwhile(
    fleet: Fleet, tmp_path: Path
) -> None:
    ctl = fleet.ctl
    data = tmp_path / "drill"
    token = ctl.enrollment_token("lab")
    with running_edge(ctl.address, data, token, name="drill") as dev:
        ctl.set_desired("drill", fleet.v1.digest)
        dev.committed(fleet.v1.digest)
    device_id = ctl.device("drill").id
    # Restart with the drill: the bundle serves from its slot at once; the first two telemetry runs die 3 s
    # after they start.
    with running_edge(ctl.address, data, token, name="drill", env={"EDGEFLEET_TASK_FAILURES": "telemetry:2@3"}) as dev:
        degraded = dev.wait_for(
            lambda s: s["health"] == "HEALTH_DEGRADED" and "telemetry task failed" in (s["health_reason"] or ""),
            30,
            "degraded by the telemetry task",
        )
        assert "TaskDrillError" in degraded["health_reason"]
        reported = reported_when(ctl, "drill", common_pb2.HEALTH_DEGRADED)
        assert "telemetry task failed" in str(reported.details["health_reason"])
        described = fleetctl(ctl, "describe", "device", "drill")
        assert "health:      degraded" in described and "why: telemetry task failed" in described
        # Both drilled runs fail, the third one stays up: SERVING again, at the device and the controller.
        dev.wait_for(lambda s: telemetry_task(s)["total_failures"] == 2, 30, "second failure")
        back = dev.wait_for(lambda s: s["health"] == "HEALTH_SERVING", 30, "SERVING again")
        assert back["health_reason"] is None
        task = telemetry_task(back)
        assert (task["state"], task["failures"], task["restarts"]) == ("running", 0, 2)
        reported = reported_when(ctl, "drill", common_pb2.HEALTH_SERVING)
        assert reported.details["health_reason"] == ""
        keeps_flowing(ctl, device_id, 2)
    failures = [
        entry
        for entry in (
            json.loads(line) for line in dev.log.read_text(errors="replace").splitlines() if line.startswith("{")
        )
        if entry.get("event") == "agent.task_failed"
    ]
    assert [f["task"] for f in failures] == ["telemetry", "telemetry"]
    assert all("Traceback" in f["exception"] and "TaskDrillError" in f["exception"] for f in failures)
