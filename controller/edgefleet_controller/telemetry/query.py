"""QueryTelemetry: stored metric windows grouped by device, site or bundle over [since, until).

Pure over rows (``summarise``); the service fetches the rows. Decisions:

- Percentiles come from MERGED latency sketches of every window in the group (DDSketch, 1 % relative
  accuracy) — never an average of per-window percentiles, which is meaningless for tails.
- ``fps`` is the group's throughput: the sum over its devices of (frames / seconds of windows).
- ``sensors`` are those of the newest window in the group; ``throttling`` is true when the newest window of
  any device in the group was flagged.
- ``drift_psi``: for every device in the group with a complete baseline, the windows of its baseline's
  bundle are summed into the current histogram and its baseline into the expected one; PSI of the two
  (NaN when no device has a baseline, or too few frames).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgefleet.contract.sketch import merge_sketches
from edgefleet.v1.common_pb2 import Percentiles
from edgefleet.v1.fleet_pb2 import QueryTelemetryResponse, TelemetryRow
from edgefleet.v1.telemetry_pb2 import LatencySketch
from edgefleet_controller.store.telemetry import WindowRow, sensors_from_json
from edgefleet_controller.telemetry.drift import Baseline, add_counts, evaluate_drift

GROUPS = ("device", "site", "bundle")


class QueryError(ValueError):
    """A query the controller cannot answer as asked."""


def group_key(row: WindowRow, group_by: str) -> str:
    if group_by == "device":
        return row.device_id
    if group_by == "site":
        return row.site
    if group_by == "bundle":
        return row.bundle_digest
    raise QueryError(f"QueryTelemetry: 'group_by' must be one of {', '.join(GROUPS)}, got {group_by!r}")


def percentiles(sketches: Sequence[bytes]) -> Percentiles:
    merged = merge_sketches(LatencySketch.FromString(b) for b in sketches)
    if merged.count <= 0:
        return Percentiles()
    return Percentiles(
        p50_ms=float(merged.get_quantile_value(0.50) or 0.0),
        p95_ms=float(merged.get_quantile_value(0.95) or 0.0),
        p99_ms=float(merged.get_quantile_value(0.99) or 0.0),
        count=int(merged.count),
    )


@dataclass(frozen=True, slots=True)
class QueryPolicy:
    psi_bound: float = 0.25
    min_frames: int = 50


def summarise(
    rows: Sequence[WindowRow],
    group_by: str,
    baselines: Mapping[str, Baseline],
    policy: QueryPolicy = QueryPolicy(),
) -> QueryTelemetryResponse:
    groups: dict[str, list[WindowRow]] = {}
    for row in rows:
        groups.setdefault(group_key(row, group_by or "device"), []).append(row)
    out = QueryTelemetryResponse()
    for key in sorted(groups):
        members = groups[key]
        per_device: dict[str, list[WindowRow]] = {}
        for r in members:
            per_device.setdefault(r.device_id, []).append(r)
        fps = 0.0
        for dev_rows in per_device.values():
            seconds = sum(r.window_s for r in dev_rows)
            if seconds > 0:
                fps += sum(r.frames for r in dev_rows) / seconds
        expected: list[Sequence[int]] = []
        current: list[Sequence[int]] = []
        for device_id, dev_rows in per_device.items():
            b = baselines.get(device_id)
            if b is None or not b.complete:
                continue
            mine = [r.confidence for r in dev_rows if r.bundle_digest == b.bundle_digest]
            if mine:
                expected.append(b.counts)
                current.extend(mine)
        drift = math.nan
        if expected:
            try:
                drift = evaluate_drift(
                    group_by,
                    key,
                    add_counts(expected),
                    add_counts(current),
                    bound=policy.psi_bound,
                    min_frames=policy.min_frames,
                ).psi
            except ValueError:
                drift = math.nan
        newest = max(members, key=lambda r: r.window_start)
        latest_per_device = [max(v, key=lambda r: r.window_start) for v in per_device.values()]
        out.rows.append(
            TelemetryRow(
                key=key,
                latency_e2e=percentiles([r.latency_e2e for r in members]),
                latency_model=percentiles([r.latency_model for r in members]),
                frames=sum(r.frames for r in members),
                errors=sum(r.errors for r in members),
                drift_psi=drift,
                sensors=sensors_from_json(newest.sensors_json),
                throttling=any(r.throttling for r in latest_per_device),
                fps=fps,
            )
        )
    return out
