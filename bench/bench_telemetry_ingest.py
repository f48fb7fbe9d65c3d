"""Benchmarks of telemetry ingest at the controller: records/s through real gRPC, draining an hour-long
backlog of many devices at once, and bytes per window on the wire.

``run(quick=False) -> list[dict]`` returns one row per measurement:
``{"benchmark", "measured", "baseline", "ratio", "goal", "ok"}``; ``python bench/bench_telemetry_ingest.py
[--quick]`` prints them. The controller is a real ``edgefleet-controller serve`` process on a fresh data dir
(its own event loop and SQLite, ``synchronous=FULL``); the devices are real ``TelemetryUploader`` s in this
process, each draining its own prefilled ``TelemetryBuffer`` with the fleet's default upload settings
(batches of 500, 2 in flight, gzip).

(1) Ingest records/s of one device's backlog of metric windows, unpaced (the device's backlog pacing would
    measure the device, not the controller; every record validated, deduplicated,
    stored, acknowledged, and the thermal and drift checks run per batch), against raw ``sqlite3``
    inserts of the same rows (the ``telemetry_windows`` columns, the same unique and time indexes, WAL,
    ``synchronous=FULL``, one transaction per 500 rows) in the same run on the same disk. The ratio
    shows what the wire, the protobufs, SQLAlchemy and the checks cost; the goal is absolute: headroom
    over a fleet's steady state (1,000 devices send ~270 records/s) so backlogs drain.
(2) One hour of backlog (1 window per 10 s + 10 events per minute = 960 records) on each of N devices
    (100; 20 with ``--quick``), all draining at once into one controller with the fleet's default pacing
    (20 batches/s per device): seconds until every buffer is empty and the records/s; the baseline is
    (1)'s single-stream rate, so the ratio is how well concurrent streams share the controller.
(3) Bytes per window on the wire: a batch of 50 windows as the uploader builds it from the buffer,
    gzip-compressed as gRPC's gzip call compression does, against the same batch uncompressed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from benchlib import row, run_alone  # noqa: E402
from telemetry_workload import MISSING_SENSOR, PRESENT_SENSORS, detector_window  # noqa: E402

from edge_runtime.agent.telemetry.uploader import TelemetryUploader, UploadSettings  # noqa: E402
from edge_runtime.telemetry import TelemetryBuffer  # noqa: E402
from edge_runtime.telemetry.records import Body  # noqa: E402
from edgefleet.v1 import device_pb2_grpc  # noqa: E402
from edgefleet.v1.telemetry_pb2 import DeviceEvent, MetricWindow  # noqa: E402

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
BUNDLE = "sha256:" + "5e" * 32
#: The fleet defaults (``protos/edgefleet/contract/layering.py``, ``telemetry``).
SETTINGS = UploadSettings(
    batch_max_records=500, batch_max_bytes=1 << 20, batch_max_delay_s=5.0, max_in_flight=2, backlog_rate_per_s=20.0
)
#: For (1): the controller's capacity, so the device-side backlog pacing is lifted.
UNPACED = UploadSettings(
    batch_max_records=500, batch_max_bytes=1 << 20, batch_max_delay_s=5.0, max_in_flight=2, backlog_rate_per_s=1e6
)
HOUR_WINDOWS = 360
HOUR_EVENTS = 600
SENSORS = [*PRESENT_SENSORS, MISSING_SENSOR]


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ workload


def _templates(count: int) -> list[MetricWindow]:
    """Realistic windows (300 frames of a ~30 FPS detector each); reused with new start times, since
    aggregating 300 frames per window for a whole fleet-hour would dominate the run."""
    return [
        detector_window(seed, started_at=T0, bundle_digest=BUNDLE, provider="CPUExecutionProvider", sensors=SENSORS)
        for seed in range(count)
    ]


def _windows(templates: Sequence[MetricWindow], count: int, start: datetime) -> list[MetricWindow]:
    out = []
    for i in range(count):
        w = MetricWindow()
        w.CopyFrom(templates[i % len(templates)])
        w.window_start.FromDatetime(start + timedelta(seconds=10 * i))
        out.append(w)
    return out


def _hour(templates: Sequence[MetricWindow], device: int) -> list[Body]:
    """One hour of one device, in the order it was appended: a window every 10 s, an event every 6 s."""
    windows = _windows(templates, HOUR_WINDOWS, T0)
    bodies: list[Body] = []
    for i in range(HOUR_EVENTS):
        ev = DeviceEvent(
            event_id=f"d{device}-e{i}",
            kind=DeviceEvent.KIND_ALERT,
            bundle_digest=BUNDLE,
            reason="provider fallback probe",
            numbers={"cpu_temp_c": 61.5, "clock_mhz": 1420.0},
        )
        ev.at.FromDatetime(T0 + timedelta(seconds=6 * i))
        bodies.append(ev)
        if i % 5 == 4:
            bodies.append(windows[i // 5 * 3])
            bodies.append(windows[i // 5 * 3 + 1])
            bodies.append(windows[i // 5 * 3 + 2])
    return bodies


# ------------------------------------------------------------------ baseline: raw SQLite


def _raw_rows(windows: Sequence[MetricWindow]) -> list[tuple[Any, ...]]:
    rows = []
    for seq, w in enumerate(windows, start=1):
        rows.append(
            (
                "dev-raw",
                "epoch-raw",
                seq,
                "site-raw",
                w.bundle_digest,
                w.window_start.ToDatetime(tzinfo=UTC).isoformat(),
                w.window_s,
                w.frames,
                w.errors,
                w.latency_e2e.SerializeToString(),
                w.latency_model.SerializeToString(),
                25.0,
                json.dumps(list(w.confidence.counts)),
                json.dumps([[s.name, s.kind, s.value, s.missing, s.max_value] for s in w.sensors]),
                json.dumps(dict(w.dropped)),
                w.provider,
                0,
                w.ByteSize(),
                datetime.now(UTC).isoformat(),
            )
        )
    return rows


def raw_sqlite_rate(path: Path, windows: Sequence[MetricWindow], batch: int) -> float:
    """Records/s of plain inserts of the same rows, ``batch`` per transaction (row building included)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE telemetry_windows (id INTEGER PRIMARY KEY, device_id TEXT, epoch TEXT, seq INTEGER, "
        "site TEXT, bundle_digest TEXT, window_start TEXT, window_s REAL, frames INTEGER, errors INTEGER, "
        "latency_e2e BLOB, latency_model BLOB, p95_e2e_ms REAL, confidence_json TEXT, sensors_json TEXT, "
        "dropped_json TEXT, provider TEXT, throttling INTEGER, size_bytes INTEGER, received_at TEXT, "
        "UNIQUE (device_id, epoch, seq))"
    )
    conn.execute("CREATE INDEX ix_start ON telemetry_windows (window_start)")
    conn.execute("CREATE INDEX ix_received ON telemetry_windows (received_at)")
    conn.execute("CREATE INDEX ix_dev_start ON telemetry_windows (device_id, window_start)")
    started = time.perf_counter()
    rows = _raw_rows(windows)
    for i in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(f"INSERT INTO telemetry_windows VALUES (NULL{', ?' * 19})", rows[i : i + batch])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


# ------------------------------------------------------------------ through the controller


async def drain(
    address: str,
    buffers: Sequence[TelemetryBuffer],
    creds: Sequence[str],
    timeout_s: float,
    settings: UploadSettings = SETTINGS,
) -> float:
    """Run one real uploader per buffer until every buffer is empty; returns the seconds it took."""
    channels = [grpc.aio.insecure_channel(address) for _ in buffers]
    uploaders = [
        TelemetryUploader(
            buf,
            functools.partial(device_pb2_grpc.DeviceServiceStub, ch),
            functools.partial(lambda c: (("authorization", f"Bearer {c}"),), cred),
            functools.partial(lambda s: s, settings),
        )
        for buf, ch, cred in zip(buffers, channels, creds, strict=True)
    ]
    started = time.perf_counter()
    tasks = [asyncio.create_task(u.run()) for u in uploaders]
    try:
        while any(b.count() for b in buffers):
            if time.perf_counter() - started > timeout_s:
                left = sum(b.count() for b in buffers)
                raise TimeoutError(f"telemetry drain: {left} records still buffered after {timeout_s:g} s")
            await asyncio.sleep(0.02)
        return time.perf_counter() - started
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for ch in channels:
            await ch.close()


def _buffer(path: Path, bodies: Sequence[Body]) -> TelemetryBuffer:
    buf = TelemetryBuffer(path, max_bytes=256 << 20, review_quota_bytes=0)
    for i in range(0, len(bodies), 1000):
        buf.append_many(bodies[i : i + 1000])
    return buf


async def _bench(quick: bool, work: Path) -> list[dict[str, Any]]:
    from edgefleet_testing.controller import ControllerProcess, connected

    rows: list[dict[str, Any]] = []
    templates = _templates(50)
    single = 5000 if quick else 20_000
    devices = 20 if quick else 100

    # (3) bytes per window: the batch as the uploader builds it from a real buffer
    probe = _buffer(work / "probe.db", _windows(templates, 50, T0))
    batch = probe.peek_batch(50, 1 << 20).to_proto()
    probe.close()
    raw_bytes = len(batch.SerializeToString())
    gz = len(gzip.compress(batch.SerializeToString(), compresslevel=6)) / 50
    rows.append(
        row(
            "telemetry.ingest_wire_bytes_per_window (gzip, batch of 50)",
            f"{gz:,.0f} B/window",
            f"{raw_bytes / 50:,.0f} B/window uncompressed",
            gz / (raw_bytes / 50),
            "<= 1024 B/window (~8.8 MB/device/day at 1 window per 10 s)",
            gz <= 1024,
        )
    )

    ctrl = ControllerProcess(work / "data", log_level="warning")
    ctrl.start()
    try:
        async with connected(ctrl) as c:
            # (1) one stream vs raw SQLite
            windows = _windows(templates, single, T0)
            raw_rate = await asyncio.to_thread(raw_sqlite_rate, work / "raw.db", windows, SETTINGS.batch_max_records)
            one = _buffer(work / "single.db", windows)
            (cred,) = await c.enroll_many("bench-site", ["single"])
            await c.report_running(cred, BUNDLE)  # windows of a bundle the device runs (the controller checks)
            _say(f"draining {single} windows of one device")
            seconds = await drain(ctrl.address, [one], [cred], timeout_s=300, settings=UNPACED)
            one.close()
            rate = single / seconds
            rows.append(
                row(
                    "telemetry.ingest_records_per_s (1 device, batches of 500, gzip)",
                    f"{rate:,.0f} records/s",
                    f"{raw_rate:,.0f} records/s raw sqlite3 inserts",
                    rate / raw_rate,
                    ">= 1,000 records/s (steady state of 1,000 devices is ~270/s)",
                    rate >= 1000,
                )
            )

            # (2) one hour of backlog on every device, all at once
            creds = await c.enroll_many("bench-site", [f"cam-{d}" for d in range(devices)])
            await asyncio.gather(*(c.report_running(cr, BUNDLE) for cr in creds))
            hour = [_hour(templates, d) for d in range(devices)]
            records = sum(len(h) for h in hour)
            buffers = [_buffer(work / f"dev-{d}.db", h) for d, h in enumerate(hour)]
            _say(f"draining one hour of backlog on {devices} devices ({records} records)")
            drained = await drain(ctrl.address, buffers, creds, timeout_s=600)
            for b in buffers:
                b.close()
            fleet_rate = records / drained
            rows.append(
                row(
                    f"telemetry.backlog_drain_1h ({devices} devices x {len(hour[0])} records, concurrent)",
                    f"{drained:.1f} s ({fleet_rate:,.0f} records/s)",
                    f"{rate:,.0f} records/s one stream",
                    fleet_rate / rate,
                    "<= 120 s for 100 devices (a site's hour offline drains in 2 min)",
                    drained <= 120 * devices / 100,
                )
            )
    finally:
        with contextlib.suppress(Exception):
            ctrl.terminate()
        ctrl.kill()
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-ingest-") as tmp:
        return asyncio.run(_bench(quick, Path(tmp)))


if __name__ == "__main__":
    sys.exit(run_alone(run))
