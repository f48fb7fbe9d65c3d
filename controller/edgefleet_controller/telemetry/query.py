"""QueryTelemetry: stored metric windows grouped by device, site or bundle over [since, until), and split by
the precision variant that served them when asked (``by_precision``).

Pure over rows (``summarise``); the service fetches the rows. Decisions:

- Percentiles come from MERGED latency sketches of every window in the group (DDSketch, 1 % relative
  accuracy) — never an average of per-window percentiles, which is meaningless for tails.
- ``fps`` is the group's throughput: the sum over its devices of (frames / seconds of windows).
- ``sensors`` are those of the newest window in the group; ``throttling`` is true when the newest window of
  any device in the group was flagged.
- ``drift_psi``: for every device in the group with a complete baseline, the windows of its baseline's
  bundle are summed into the current histogram and its baseline into the expected one; PSI of the two
  (NaN when no device has a baseline, or too few frames).
- Frames the devices declared lost (``KIND_FRAME_GAP`` events, ``gaps``) are grouped the same way and
  counted beside the stored ``frames``: ``frames_lost`` (exact counts), ``gaps``, ``gaps_unknown`` (intervals
  whose count the device could not know; ``frames_lost_at_least`` sums their lower bounds). A group with
  gaps and no window still gets a row: a device that only ever lost frames must not look idle.
- Precision: every row names the distinct non-empty variants its windows were served with (``precisions``,
  sorted), so a row whose latency mixes variants (a device that moved from ``fp32`` to ``int8-u8s8`` within
  the range) says so. ``by_precision`` splits each group into one row per (key, variant), the variant in
  ``precision`` ('' for windows of devices that predate ``MetricWindow.precision``): percentiles, fps, drift
  and throttling are then those of that variant's windows alone. Frame gaps carry no variant: split, they
  are counted in the group's row with an empty precision (a row of its own when no window lacks one).
- A stored window breaking the bounds windows are now stored with (``window_bounds.row_problem``: written by
  an older controller) is skipped, never merged, and counted in ``skipped_records``; the first few are
  logged (``telemetry.query_skipped_record``). So every merged sketch has at most the bounded bins.
- Every count in the answer is summed in Python integers and clamped to its proto field's range (``_fit``):
  windows are bounded per window (``MAX_WINDOW_FRAMES``) but gaps, sketch counts and rows an older version
  stored are not, and no sum may make the query fail. A clamped count is flagged in the log
  (``telemetry.query_count_clamped``, with the group and field) and reads as the field's maximum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from edgefleet.contract.request_bounds import MAX_UINT32
from edgefleet.contract.shown import shown
from edgefleet.contract.sketch import merge_sketches
from edgefleet.v1.common_pb2 import Percentiles
from edgefleet.v1.fleet_pb2 import QueryTelemetryResponse, TelemetryRow
from edgefleet.v1.telemetry_pb2 import LatencySketch
from edgefleet_controller.store.telemetry import GapRow, WindowRow, sensors_from_json
from edgefleet_controller.telemetry.drift import Baseline, add_counts, evaluate_drift
from edgefleet_controller.telemetry.window_bounds import row_problem

log = structlog.get_logger(__name__)

#: Skipped records logged per query (all are counted).
SKIPPED_LOGGED = 5
MAX_UINT64 = 2**64 - 1

GROUPS = ("device", "site", "bundle")


class QueryError(ValueError):
    """A query the controller cannot answer as asked."""


class Scoped(Protocol):
    """What grouping reads of a stored window or gap."""

    @property
    def device_id(self) -> str: ...
    @property
    def site(self) -> str: ...
    @property
    def bundle_digest(self) -> str: ...


def group_key(row: Scoped, group_by: str) -> str:
    if group_by == "device":
        return row.device_id
    if group_by == "site":
        return row.site
    if group_by == "bundle":
        return row.bundle_digest
    raise QueryError(f"QueryTelemetry: 'group_by' must be one of {', '.join(GROUPS)}, got {shown(group_by)}")


def _fit(total: float, limit: int, key: str, field: str) -> int:
    """``total`` (a Python int or a finite float count) as an integer within ``0..limit``; flagged when clamped."""
    value = int(total) if math.isfinite(total) else limit
    if 0 <= value <= limit:
        return value
    log.warning("telemetry.query_count_clamped", key=shown(key), field=field, total=shown(total), limit=limit)
    return min(max(value, 0), limit)


def percentiles(sketches: Sequence[bytes], key: str = "", field: str = "latency") -> Percentiles:
    merged = merge_sketches(LatencySketch.FromString(b) for b in sketches)
    if merged.count <= 0:
        return Percentiles()
    return Percentiles(
        p50_ms=float(merged.get_quantile_value(0.50) or 0.0),
        p95_ms=float(merged.get_quantile_value(0.95) or 0.0),
        p99_ms=float(merged.get_quantile_value(0.99) or 0.0),
        count=_fit(merged.count, MAX_UINT64, key, f"{field}.count"),
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
    gaps: Sequence[GapRow] = (),
    *,
    by_precision: bool = False,
) -> QueryTelemetryResponse:
    sound, skipped = sound_rows(rows)
    groups: dict[tuple[str, str], list[WindowRow]] = {}
    for row in sound:
        variant = row.precision if by_precision else ""
        groups.setdefault((group_key(row, group_by or "device"), variant), []).append(row)
    lost: dict[tuple[str, str], list[GapRow]] = {}
    for gap in gaps:
        lost.setdefault((group_key(gap, group_by or "device"), ""), []).append(gap)
    out = QueryTelemetryResponse(skipped_records=skipped)
    for key, variant in sorted(groups.keys() | lost.keys()):
        members = groups.get((key, variant), [])
        counted = _lost_counts(key, lost.get((key, variant), []))
        counted.precision = variant
        if not members:
            counted.drift_psi = math.nan
            out.rows.append(counted)
            continue
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
                latency_e2e=percentiles([r.latency_e2e for r in members], key, "latency_e2e"),
                latency_model=percentiles([r.latency_model for r in members], key, "latency_model"),
                frames=_fit(sum(r.frames for r in members), MAX_UINT64, key, "frames"),
                errors=_fit(sum(r.errors for r in members), MAX_UINT64, key, "errors"),
                drift_psi=drift,
                sensors=sensors_from_json(newest.sensors_json),
                throttling=any(r.throttling for r in latest_per_device),
                fps=fps,
                precisions=sorted({r.precision for r in members if r.precision}),
            )
        )
        out.rows[-1].MergeFrom(counted)
    return out


def sound_rows(rows: Sequence[WindowRow]) -> tuple[list[WindowRow], int]:
    """The rows that keep the window bounds, and how many did not (each of the first few logged)."""
    sound: list[WindowRow] = []
    skipped = 0
    for row in rows:
        problem = row_problem(row.window_s, row.frames, row.errors, row.latency_e2e, row.latency_model, row.confidence)
        if problem is None:
            sound.append(row)
            continue
        skipped += 1
        if skipped <= SKIPPED_LOGGED:
            log.warning(
                "telemetry.query_skipped_record",
                device_id=row.device_id,
                window_start=row.window_start.isoformat(),
                problem=problem[:200],
            )
    return sound, skipped


def _lost_counts(key: str, gaps: Sequence[GapRow]) -> TelemetryRow:
    """A row holding only the group's key and its declared-lost counts (merged into the full row)."""
    unknown = [g for g in gaps if not g.frames_known]
    return TelemetryRow(
        key=key,
        frames_lost=_fit(sum(g.frames for g in gaps if g.frames_known), MAX_UINT64, key, "frames_lost"),
        gaps=_fit(len(gaps), MAX_UINT32, key, "gaps"),
        gaps_unknown=_fit(len(unknown), MAX_UINT32, key, "gaps_unknown"),
        frames_lost_at_least=_fit(sum(g.frames for g in unknown), MAX_UINT64, key, "frames_lost_at_least"),
    )
