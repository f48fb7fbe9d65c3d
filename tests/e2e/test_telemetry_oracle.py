"""The telemetry oracle: what a device appended is EXACTLY what the controller holds — none lost, none
duplicated — while the link flaps (>= 50 resets through the fault proxy) and the device process and the
controller process are each SIGKILLed and restarted several times.

The device is a small driver process (source below) running the real ``TelemetryBuffer`` and the real
``TelemetryUploader``; the controller is a real controller process serving the real ``TelemetryService``.
The driver logs every append the buffer acknowledged (``epoch seq`` per line) and, after a restart,
first logs the seqs a SIGKILL may have caught between the buffer's commit and the log write (every seq
below the buffer's ``next_seq`` was appended). At the end the test reads the controller's database.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from edgefleet.v1 import common_pb2, device_pb2, device_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from edgefleet_testing.faultproxy import FaultProxy
from edgefleet_testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TARGET_RECORDS = 4000

CONTROLLER_SRC = r"""
import asyncio, sys
from pathlib import Path
from edgefleet.logging import configure_logging
from edgefleet_controller.bootstrap import build_controller, serve
from edgefleet_controller.telemetry.service import TelemetryService

configure_logging("warning", json=True)
app = build_controller(Path(sys.argv[1]))
if not hasattr(app, "telemetry"):
    # The wiring build_controller does (see bootstrap.py), for a controller without it.
    service = TelemetryService(app.store, app.clock, app.feed)

    async def ingest(device_id, batches):
        async for ack in service.ingest(device_id, batches):
            yield ack

    app.ingest_telemetry = ingest
asyncio.run(serve(app, f"127.0.0.1:{sys.argv[2]}", grace_s=0.5))
"""

DEVICE_SRC = r"""
import asyncio, faulthandler, json, os, signal, sys
from datetime import UTC, datetime
from pathlib import Path
import grpc
from edgefleet.logging import configure_logging
from edgefleet.contract.sketch import new_sketch, sketch_to_proto
from edgefleet.v1 import device_pb2_grpc
from edgefleet.v1.telemetry_pb2 import ConfidenceHistogram, DeviceEvent, MetricWindow, ReviewSample
from edge_runtime.agent.telemetry.uploader import TelemetryUploader, UploadSettings
from edge_runtime.telemetry.buffer import TelemetryBuffer

configure_logging("warning", json=True)
faulthandler.register(signal.SIGUSR1)
data, address, credential, target = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
buf = TelemetryBuffer(data / "buffer.db", max_bytes=256 << 20, review_quota_bytes=64 << 20)
log_path = data / "appended.log"
logged = {}
if log_path.exists():
    for line in log_path.read_text().splitlines():
        epoch, seq = line.split()
        logged[epoch] = max(logged.get(epoch, 0), int(seq))
out = log_path.open("a", buffering=1)
# Seqs the buffer committed that a SIGKILL kept out of the log: every seq below next_seq was appended.
for seq in range(logged.get(buf.epoch, 0) + 1, buf.next_seq):
    out.write(f"{buf.epoch} {seq}\n")
count = sum(1 for _ in log_path.open()) if log_path.exists() else 0

def body(i):
    now = datetime.now(UTC)
    if i % 10 == 0:
        s = ReviewSample(sample_id=os.urandom(8).hex(), reason="sampled", jpeg=os.urandom(200), results_json="[]")
        s.captured_at.FromDatetime(now)
        return s
    if i % 5 == 0:
        e = DeviceEvent(event_id=os.urandom(8).hex(), kind=DeviceEvent.KIND_UPDATE_STATE)
        e.at.FromDatetime(now)
        return e
    sk = new_sketch()
    sk.add(5.0 + i % 7)
    w = MetricWindow(window_s=0.2, bundle_digest="sha256:" + "b" * 64, frames=1, latency_e2e=sketch_to_proto(sk),
                     latency_model=sketch_to_proto(sk), confidence=ConfidenceHistogram(counts=[0] * 19 + [1]))
    w.window_start.FromDatetime(now)
    return w

async def main():
    global count
    channel = grpc.aio.insecure_channel(address, options=[("grpc.max_reconnect_backoff_ms", 300),
                                                          ("grpc.initial_reconnect_backoff_ms", 100),
                                                          ("grpc.min_reconnect_backoff_ms", 100)])
    stub = device_pb2_grpc.DeviceServiceStub(channel)
    md = (("authorization", f"Bearer {credential}"),)
    settings = UploadSettings(batch_max_records=40, batch_max_delay_s=0.05, max_in_flight=4,
                              backlog_rate_per_s=100.0, reconnect_max_s=0.5, ack_timeout_s=3.0)
    up = TelemetryUploader(buf, lambda: stub, lambda: md, lambda: settings)
    task = asyncio.create_task(up.run())
    i = count
    while True:
        if count < target:
            bodies = [body(i + k) for k in range(8)]
            i += 8
            seqs = await asyncio.to_thread(buf.append_many, bodies)
            out.write("".join(f"{buf.epoch} {s}\n" for s in seqs))
            count += len(seqs)
            up.notify()
        state = {"appended": count, "held": buf.count(), "acked_through": buf.acked_through, "epoch": buf.epoch}
        tmp = data / "state.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, data / "state.json")
        await asyncio.sleep(0.05)

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(self.args, stdout=err, stderr=err)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def controller_up(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_every_appended_record_is_stored_exactly_once_through_flaps_and_kills(tmp_path: Path) -> None:
    started = time.monotonic()
    ctl_dir, dev_dir = tmp_path / "ctl", tmp_path / "dev"
    ctl_dir.mkdir()
    dev_dir.mkdir()
    port = free_port()
    controller = Proc([sys.executable, "-c", CONTROLLER_SRC, str(ctl_dir), str(port)], tmp_path / "ctl.log")
    controller.start()
    wait_until(lambda: controller_up(port) and (ctl_dir / "admin.token").exists(), 60, "controller start")
    admin = (("authorization", f"Bearer {(ctl_dir / 'admin.token').read_text().strip()}"),)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        fleet = fleet_pb2_grpc.FleetServiceStub(channel)
        token = fleet.CreateEnrollmentToken(
            fleet_pb2.CreateEnrollmentTokenRequest(site="lab", ttl_s=3600), metadata=admin, timeout=10
        ).token
        enrolled = device_pb2_grpc.DeviceServiceStub(channel).Enroll(
            device_pb2.EnrollRequest(
                enrollment_token=token,
                name="oracle-1",
                hardware=common_pb2.HardwareProfile(hardware_class="x86-avx2", cpu_cores=2),
            ),
            timeout=10,
        )
        # the device runs the bundle its windows name (the controller refuses windows of other bundles)
        device_pb2_grpc.DeviceServiceStub(channel).Sync(
            device_pb2.SyncRequest(reported=common_pb2.ReportedState(running_bundle_digest="sha256:" + "b" * 64)),
            metadata=(("authorization", f"Bearer {enrolled.device_credential}"),),
            timeout=10,
        )
    flaps = device_kills = controller_kills = 0
    with FaultProxy(port) as proxy:
        device = Proc(
            [
                sys.executable,
                "-c",
                DEVICE_SRC,
                str(dev_dir),
                proxy.address,
                enrolled.device_credential,
                str(TARGET_RECORDS),
            ],
            tmp_path / "dev.log",
        )
        device.start()

        def state() -> dict[str, int | str]:
            try:
                return dict(json.loads((dev_dir / "state.json").read_text()))
            except (FileNotFoundError, json.JSONDecodeError):
                return {}

        # Chaos: a link reset every 0.25 s; the device and the controller each SIGKILLed 3 times, staggered.
        kill_device_at = {3.0, 9.0, 15.0}
        kill_controller_at = {6.0, 12.0, 18.0}
        chaos_start = time.monotonic()
        while time.monotonic() - chaos_start < 24.0:
            elapsed = time.monotonic() - chaos_start
            for at in sorted(kill_device_at):
                if elapsed >= at:
                    kill_device_at.discard(at)
                    device.kill()
                    device_kills += 1
                    device.start()
            for at in sorted(kill_controller_at):
                if elapsed >= at:
                    kill_controller_at.discard(at)
                    controller.kill()
                    controller_kills += 1
                    controller.start()
            proxy.reset_all()
            flaps += 1
            time.sleep(0.25)
        assert device.alive(), (tmp_path / "dev.log").read_text()[-2000:]
        wait_until(lambda: controller_up(port), 30, "controller back")
        # Calm link: the device must finish appending and drain its buffer completely.
        wait_until(
            lambda: int(state().get("appended", 0)) >= TARGET_RECORDS and state().get("held") == 0,
            max(10.0, 85.0 - (time.monotonic() - started)),
            f"device drained (last state {state()})",
        )
        device.kill()
    controller.kill()

    appended: set[tuple[str, int]] = set()
    lines = (dev_dir / "appended.log").read_text().splitlines()
    for line in lines:
        epoch, seq = line.split()
        appended.add((epoch, int(seq)))
    assert len(appended) == len(lines), "the device logged a seq twice"
    db = sqlite3.connect(ctl_dir / "controller.db")
    stored: list[tuple[str, int]] = []
    for table in ("telemetry_windows", "telemetry_events", "review_samples"):
        stored.extend((str(e), int(s)) for e, s in db.execute(f"SELECT epoch, seq FROM {table}"))
    marks = db.execute("SELECT epoch, acked_through, duplicates FROM telemetry_marks").fetchall()
    db.close()
    duplicates_dropped = sum(int(m[2]) for m in marks)
    print(
        f"\ntelemetry oracle: N={len(appended)} appended, {len(stored)} stored, {len(set(stored))} distinct, "
        f"{len(appended - set(stored))} lost, {len(stored) - len(set(stored))} duplicated in store, "
        f"{duplicates_dropped} duplicates dropped at ingest, {flaps} link resets, {device_kills} device kills, "
        f"{controller_kills} controller kills, epochs {len({e for e, _ in appended})}, "
        f"{time.monotonic() - started:.1f} s"
    )
    assert len(appended) >= TARGET_RECORDS
    assert flaps >= 50 and device_kills >= 3 and controller_kills >= 3
    assert len(stored) == len(set(stored)), "a record was stored twice"
    assert set(stored) == appended, (
        f"lost {sorted(appended - set(stored))[:10]}, extra {sorted(set(stored) - appended)[:10]}"
    )
    assert os.path.exists(ctl_dir / "controller.db")
