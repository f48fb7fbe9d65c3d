"""Benchmark of the per-request bounds check the controller's interceptor runs before every handler.

``run(quick=False) -> list[dict]`` returns one row per measurement:
``{"benchmark", "measured", "baseline", "ratio", "goal", "ok"}``. ``python bench/bench_request_bounds.py``
prints them.

``request_bounds.check`` (the compiled plans of ``request_plans``, the walk only for a refusal) per message,
against ``ParseFromString`` of the same bytes (what gRPC already spends on the message before the check),
both the best of several rounds in the same run; the full walk (``request_specs.check_with``) is shown for
reference. (a) the SyncRequest ``bench_controller`` sends (a device's steady-state poll); (b) a
TelemetryBatch of 500 realistic detector windows (the uploader's default ``batch_max_records``).
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from typing import Any

from bench_telemetry_buffer import realistic_window
from benchlib import row, run_alone
from google.protobuf.message import Message

from edgefleet.contract.request_bounds import BOUNDS, check
from edgefleet.contract.request_specs import check_with
from edgefleet.v1 import common_pb2, device_pb2, telemetry_pb2


def _best_us(fn: Callable[[], object], number: int, rounds: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=rounds)) / number * 1e6


def _measure(name: str, message: Message, number: int, rounds: int, goal: float) -> dict[str, Any]:
    data = message.SerializeToString()
    parsed = type(message).FromString(data)
    check(parsed)  # compiles the plans; in bounds, so the fast path is what is timed
    ours = _best_us(lambda: check(parsed), number, rounds)
    parse = _best_us(lambda: type(message).FromString(data), number, rounds)
    walk = _best_us(lambda: check_with(BOUNDS, parsed), max(1, number // 4), rounds)
    ratio = ours / parse
    return row(
        f"request_bounds.check per {name} ({len(data)} B)",
        f"{ours:,.1f} µs (the full walk: {walk:,.1f} µs)",
        f"{parse:,.1f} µs ParseFromString of the same bytes",
        ratio,
        f"<= {goal:.0f}x ParseFromString",
        ratio <= goal,
    )


def run(quick: bool = False) -> list[dict[str, Any]]:
    sync = device_pb2.SyncRequest(
        known_revision=0, wait_s=1, reported=common_pb2.ReportedState(health=common_pb2.HEALTH_SERVING)
    )
    records = [telemetry_pb2.TelemetryRecord(seq=i + 1, metrics=realistic_window(i)) for i in range(500)]
    batch = telemetry_pb2.TelemetryBatch(epoch="e-1", first_seq=1, last_seq=500, records=records)
    rounds = 3 if quick else 7
    return [
        _measure("SyncRequest", sync, 2_000 if quick else 20_000, rounds, goal=15),
        _measure("TelemetryBatch of 500 windows", batch, 2 if quick else 10, rounds, goal=100),
    ]


if __name__ == "__main__":
    sys.exit(run_alone(run))
