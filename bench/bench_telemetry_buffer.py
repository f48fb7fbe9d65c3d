"""Benchmarks of the device telemetry buffer: durable append throughput and bytes per window on the wire.

``run(quick=False) -> list[dict]`` returns one row per measurement:
``{"benchmark", "measured", "baseline", "ratio", "goal", "ok"}``. ``python bench/bench_telemetry_buffer.py``
prints them.

(a) ``TelemetryBuffer.append_many`` of realistic ``MetricWindow`` records (300 frames of a ~30 FPS detector:
    two latency sketches, a 20-bin confidence histogram, sensors), 100 per commit, against raw ``sqlite3``
    batch inserts of the same serialized bytes into a bare table with the same pragmas (WAL,
    ``synchronous=FULL``, exclusive locking, incremental auto-vacuum), 100 rows per transaction. The two
    alternate round by round in the same run, on the same disk, so fsync cost and noise hit both; the
    median records/s of each is compared. Ours also serializes the protos, assigns sequence numbers,
    accounts bytes and maintains the class index; the goal bounds what that costs.
(b) Bytes per window on the wire: one serialized ``TelemetryRecord`` (vs the same window as compact
    proto-JSON), and gzip-compressed inside a ``TelemetryBatch`` of 50 windows (gRPC gzip call
    compression does the same on the stream) vs the uncompressed record.
"""

from __future__ import annotations

import gzip
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchlib import row, run_alone
from google.protobuf import json_format
from telemetry_workload import MISSING_SENSOR, PRESENT_SENSORS, TEGRA_THERMALS, detector_window

from edge_runtime.telemetry import TelemetryBuffer
from edge_runtime.telemetry.records import encode_record
from edgefleet.v1.telemetry_pb2 import MetricWindow, TelemetryBatch, TelemetryRecord

T0 = datetime(2025, 3, 1, tzinfo=UTC)
BATCH = 100
SENSORS = [*PRESENT_SENSORS, *TEGRA_THERMALS, MISSING_SENSOR]


def realistic_window(seed: int) -> MetricWindow:
    return detector_window(
        seed,
        started_at=T0,
        bundle_digest="sha256:" + "5e" * 32,
        provider="TensorrtExecutionProvider",
        sensors=SENSORS,
        dropped={"metrics": 0},
    )


def _raw_store(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t(seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    return conn


def bench_append(work: Path, quick: bool) -> dict[str, Any]:
    windows = [realistic_window(i) for i in range(BATCH)]
    payloads = [encode_record(1000 + i, "metrics", w.SerializeToString()) for i, w in enumerate(windows)]
    rounds = 6 if quick else 20
    batches_per_round = 3 if quick else 10
    big = 1 << 40  # never full: this measures the append path, not eviction
    buf = TelemetryBuffer(work / "ours.db", max_bytes=big, review_quota_bytes=0)
    raw = _raw_store(work / "raw.db")
    ours_rates: list[float] = []
    raw_rates: list[float] = []
    seq = 0
    for r in range(rounds):
        for which in ("ours", "raw") if r % 2 == 0 else ("raw", "ours"):
            t0 = time.perf_counter()
            for _ in range(batches_per_round):
                if which == "ours":
                    buf.append_many(windows)
                else:
                    raw.execute("BEGIN IMMEDIATE")
                    raw.executemany(
                        "INSERT INTO t(seq, payload) VALUES (?, ?)",
                        [(seq + i, p) for i, p in enumerate(payloads, start=1)],
                    )
                    raw.execute("COMMIT")
                    seq += BATCH
            rate = batches_per_round * BATCH / (time.perf_counter() - t0)
            (ours_rates if which == "ours" else raw_rates).append(rate)
    buf.close()
    raw.close()
    ours, theirs = statistics.median(ours_rates), statistics.median(raw_rates)
    ratio = ours / theirs
    return row(
        "telemetry.append_throughput (100 windows/commit, synchronous=FULL)",
        f"{ours:,.0f} records/s",
        f"{theirs:,.0f} records/s raw sqlite3",
        ratio,
        ">= 0.5x raw sqlite3",
        ratio >= 0.5,
    )


def bench_wire_bytes() -> list[dict[str, Any]]:
    windows = [realistic_window(i) for i in range(50)]
    records = [TelemetryRecord(seq=10_000 + i, metrics=w) for i, w in enumerate(windows)]
    per_record = statistics.mean(len(r.SerializeToString()) for r in records)
    as_json = statistics.mean(len(json_format.MessageToJson(r, indent=None).encode()) for r in records)
    batch = TelemetryBatch(epoch="e" * 32, first_seq=10_000, last_seq=10_049, records=records)
    raw = batch.SerializeToString()
    gzipped = len(gzip.compress(raw, compresslevel=6)) / len(records)
    return [
        row(
            "telemetry.window_record_bytes",
            f"{per_record:,.0f} B/window",
            f"{as_json:,.0f} B/window as JSON",
            per_record / as_json,
            "<= 2048 B/window",
            per_record <= 2048,
        ),
        row(
            "telemetry.window_bytes_gzip_batch50",
            f"{gzipped:,.0f} B/window",
            f"{per_record:,.0f} B/window uncompressed",
            gzipped / per_record,
            "<= 1024 B/window (~8.6 MB/day at one window per 10 s)",
            gzipped <= 1024,
        ),
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp:
        return [bench_append(Path(tmp), quick), *bench_wire_bytes()]


if __name__ == "__main__":
    sys.exit(run_alone(run))
