"""What one telemetry batch changes, decided before anything is written. Pure: no I/O, no clock.

``plan_batch(batch, facts, now, ...)`` takes what the store holds for the device and the batch's epoch
(``IngestFacts``: its site and committed bundle, the stored mark and pending ranges, its confidence
baseline, the thermal summary of its newest stored windows, the bundles it is known to have) and returns
an ``IngestPlan``: the fresh records (duplicates dropped, ``ingest``; windows naming a bundle the device is
not known to have acknowledged but refused, ``bundle_rule``), the new mark and pending ranges, each fresh
window's p95 latency and throttling assessment (``thermal``), and the baseline after the batch's windows
(``drift``). The store
writes the plan in one transaction, refusing it (``Conflict``) when the mark row moved since the facts were
read; the telemetry service then reads again and re-plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.contract.sketch import sketch_from_proto
from edgefleet.v1.telemetry_pb2 import DeviceEvent, MetricWindow, SensorReading, TelemetryBatch, TelemetryRecord
from edgefleet_controller.telemetry.drift import DEFAULT_BASELINE_WINDOWS, Baseline, baseline_step
from edgefleet_controller.telemetry.ingest import MarkAdvance, Range, advance, is_duplicate
from edgefleet_controller.telemetry.thermal import (
    ThrottleAssessment,
    ThrottlePolicy,
    assess_throttling,
    thermal_point,
)

#: Stored digests are at most ``sha256:`` + 64 hex; longer device input is cut, as the store's column is.
DIGEST_MAX = 71


def timestamp_or(value: Timestamp, fallback: datetime) -> datetime:
    """The timestamp as an aware UTC datetime, or ``fallback`` when the device left it unset."""
    return value.ToDatetime(tzinfo=UTC) if value.seconds or value.nanos else fallback


@dataclass(frozen=True, slots=True)
class StoredMark:
    """The stored mark row of one (device, epoch) and its counters; any batch moves at least one counter."""

    acked_through: int
    records: int
    duplicates: int
    declared_dropped: int


@dataclass(frozen=True, slots=True)
class RecentWindow:
    """What a stored window says about heat: its sensor readings and p95 end-to-end latency."""

    sensors: Sequence[SensorReading]
    p95_ms: float | None


@dataclass(frozen=True, slots=True)
class IngestFacts:
    """What the store holds for a device and one epoch before a batch (``recent``: oldest first)."""

    site: str
    committed_bundle: str | None
    mark: StoredMark | None
    pending: tuple[Range, ...]
    baseline: Baseline | None
    recent: tuple[RecentWindow, ...] = ()
    #: Bundles the device's windows may name (``bundle_rule``); None: the batch has no window to check.
    bundles: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class PlannedWindow:
    """A fresh metric window as it is stored: its bundle, start, p95 and throttling flag (what the service
    alerts on, through ``IngestOutcome.windows``)."""

    seq: int
    window: MetricWindow
    bundle_digest: str
    window_start: datetime
    p95_ms: float | None
    throttling: ThrottleAssessment


@dataclass(frozen=True, slots=True)
class RefusedWindow:
    """A fresh window acknowledged but not stored, and why (``bundle_rule``)."""

    seq: int
    bundle_digest: str
    reason: str


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    epoch: str
    acked_through: int
    stored: int
    duplicates: int
    site: str
    windows: tuple[PlannedWindow, ...] = ()
    baseline: Baseline | None = None
    events: tuple[DeviceEvent, ...] = field(default=())
    refused: tuple[RefusedWindow, ...] = ()


@dataclass(frozen=True, slots=True)
class IngestPlan:
    """Everything the store writes for one batch, and what the service alerts on."""

    epoch: str
    facts: IngestFacts
    fresh: tuple[TelemetryRecord, ...]
    duplicates: int
    windows: tuple[PlannedWindow, ...]
    moved: MarkAdvance
    declared_dropped: int
    baseline: Baseline | None
    refused: tuple[RefusedWindow, ...] = ()

    @property
    def baseline_changed(self) -> bool:
        return self.baseline is not None and self.baseline != self.facts.baseline

    def outcome(self) -> IngestOutcome:
        return IngestOutcome(
            self.epoch,
            self.moved.mark,
            len(self.fresh),
            self.duplicates,
            self.facts.site,
            self.windows,
            self.baseline,
            tuple(r.event for r in self.fresh if r.WhichOneof("body") == "event"),
            self.refused,
        )


def window_p95(window: MetricWindow) -> float | None:
    """The window's p95 end-to-end latency from its sketch (None for an empty sketch)."""
    if window.latency_e2e.count <= 0:
        return None
    value = sketch_from_proto(window.latency_e2e).get_quantile_value(0.95)
    return float(value) if value is not None else None


def bundle_rule(record: TelemetryRecord, bundles: frozenset[str] | None) -> RefusedWindow | None:
    """A metric window must name a bundle the controller knows the device has: its desired bundle, one it
    reports running or holding in a slot, or one its newest stored windows named (``bundles``; no bundle
    named — nothing loaded yet — is fine). Anything else is refused: acknowledged, so the device's buffer
    moves on (a refused batch would be re-sent forever), but not stored, and counted by the caller."""
    if record.WhichOneof("body") != "metrics" or bundles is None:
        return None
    digest = record.metrics.bundle_digest
    if not digest or digest in bundles:
        return None
    return RefusedWindow(
        record.seq, digest, "bundle_digest is neither the device's desired bundle nor one it reports holding"
    )


def plan_batch(
    batch: TelemetryBatch,
    facts: IngestFacts,
    now: datetime,
    *,
    throttle: ThrottlePolicy = ThrottlePolicy(),
    baseline_windows: int = DEFAULT_BASELINE_WINDOWS,
) -> IngestPlan:
    """The plan of a validated batch against ``facts`` (module docstring)."""
    mark = facts.mark.acked_through if facts.mark is not None else 0
    new = tuple(r for r in batch.records if not is_duplicate(r.seq, mark, facts.pending))
    refused = tuple(x for r in new if (x := bundle_rule(r, facts.bundles)) is not None)
    refused_seqs = {x.seq for x in refused}
    fresh = tuple(r for r in new if r.seq not in refused_seqs)
    recent = [thermal_point(w.sensors, w.p95_ms) for w in facts.recent]
    baseline = facts.baseline
    windows: list[PlannedWindow] = []
    for record in fresh:
        if record.WhichOneof("body") != "metrics":
            continue
        w = record.metrics
        p95 = window_p95(w)
        recent.append(thermal_point(w.sensors, p95))
        bundle, start = w.bundle_digest[:DIGEST_MAX], timestamp_or(w.window_start, now)
        windows.append(PlannedWindow(record.seq, w, bundle, start, p95, assess_throttling(recent, throttle)))
        baseline = baseline_step(
            baseline,
            window_bundle=bundle,
            committed_bundle=facts.committed_bundle,
            counts=[int(c) for c in w.confidence.counts],
            window_start=start,
            windows_needed=baseline_windows,
        )
    ranges = [*facts.pending, *((r.seq, r.seq) for r in new), *((d.first, d.last) for d in batch.dropped)]
    return IngestPlan(
        epoch=batch.epoch,
        facts=facts,
        fresh=fresh,
        duplicates=len(batch.records) - len(new),
        windows=tuple(windows),
        moved=advance(mark, ranges),
        declared_dropped=sum(d.last - d.first + 1 for d in batch.dropped),
        baseline=baseline,
        refused=refused,
    )
