"""What a telemetry batch changes, decided before the store writes it (telemetry.ingest_plan): duplicates,
the mark, throttling of each fresh window and the baseline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edgefleet.contract.sketch import new_sketch, sketch_to_proto
from edgefleet.v1.telemetry_pb2 import (
    ConfidenceHistogram,
    DeviceEvent,
    MetricWindow,
    SensorReading,
    SeqRange,
    TelemetryBatch,
    TelemetryRecord,
)
from edgefleet_controller.telemetry.drift import Baseline
from edgefleet_controller.telemetry.ingest_plan import IngestFacts, RecentWindow, StoredMark, plan_batch

T0 = datetime(2025, 1, 1, tzinfo=UTC)
BUNDLE = "sha256:" + "a" * 64
COOL = [SensorReading(name="cpu_clock", value=2000, max_value=2000), SensorReading(name="cpu_temp", value=50)]
HOT = [SensorReading(name="cpu_clock", value=1000, max_value=2000), SensorReading(name="cpu_temp", value=80)]


def window(latency_ms: float, sensors: list[SensorReading], start: datetime, bundle: str = BUNDLE) -> MetricWindow:
    sketch = new_sketch()
    for _ in range(20):
        sketch.add(latency_ms)
    w = MetricWindow(
        window_s=10.0,
        bundle_digest=bundle,
        frames=20,
        latency_e2e=sketch_to_proto(sketch),
        confidence=ConfidenceHistogram(counts=[0, 20, 0]),
        sensors=sensors,
    )
    w.window_start.FromDatetime(start)
    return w


def event(seq: int) -> TelemetryRecord:
    return TelemetryRecord(seq=seq, event=DeviceEvent(event_id=f"e{seq}", kind=DeviceEvent.KIND_ALERT))


def facts(**kw: object) -> IngestFacts:
    values: dict[str, object] = {
        "site": "lab",
        "committed_bundle": BUNDLE,
        "mark": None,
        "pending": (),
        "baseline": None,
        "recent": (),
    }
    values.update(kw)
    return IngestFacts(**values)  # type: ignore[arg-type]


def test_duplicates_are_dropped_and_the_mark_passes_declared_drops() -> None:
    batch = TelemetryBatch(
        epoch="ep", first_seq=3, last_seq=9, records=[event(3), event(4), event(9)], dropped=[SeqRange(first=5, last=8)]
    )
    plan = plan_batch(batch, facts(mark=StoredMark(3, 3, 0, 0)), T0)
    assert [r.seq for r in plan.fresh] == [4, 9]
    assert plan.duplicates == 1
    assert (plan.moved.mark, plan.moved.pending) == (9, ())
    assert plan.declared_dropped == 4
    assert plan.outcome().acked_through == 9 and len(plan.outcome().events) == 2


def test_records_ahead_of_the_mark_stay_pending_and_count_as_held() -> None:
    ahead = plan_batch(TelemetryBatch(epoch="ep", first_seq=5, last_seq=5, records=[event(5)]), facts(), T0)
    assert (ahead.moved.mark, ahead.moved.pending) == (0, ((5, 5),))
    again = plan_batch(
        TelemetryBatch(epoch="ep", first_seq=5, last_seq=5, records=[event(5)]), facts(pending=((5, 5),)), T0
    )
    assert again.fresh == () and again.duplicates == 1


def test_a_fresh_window_is_judged_against_the_stored_recent_ones() -> None:
    recent = tuple(RecentWindow(COOL, 20.0) for _ in range(3))
    hot = TelemetryRecord(seq=1, metrics=window(30.0, HOT, T0))
    plan = plan_batch(TelemetryBatch(epoch="ep", first_seq=1, last_seq=1, records=[hot]), facts(recent=recent), T0)
    (planned,) = plan.windows
    assert planned.throttling.throttling
    assert planned.p95_ms is not None and abs(planned.p95_ms - 30.0) < 0.5
    alone = plan_batch(TelemetryBatch(epoch="ep", first_seq=1, last_seq=1, records=[hot]), facts(), T0)
    assert not alone.windows[0].throttling.throttling  # nothing earlier to compare with


def test_windows_of_the_committed_bundle_fill_the_baseline() -> None:
    records = [TelemetryRecord(seq=i, metrics=window(20.0, COOL, T0 + timedelta(seconds=10 * i))) for i in (1, 2)]
    batch = TelemetryBatch(epoch="ep", first_seq=1, last_seq=2, records=records)
    plan = plan_batch(batch, facts(), T0, baseline_windows=2)
    assert plan.baseline == Baseline(BUNDLE, 2, 2, (0, 40, 0), T0 + timedelta(seconds=10))
    assert plan.baseline_changed
    other = plan_batch(batch, facts(committed_bundle="sha256:" + "b" * 64), T0)
    assert other.baseline is None and not other.baseline_changed  # a candidate's windows never touch it


def test_windows_of_bundles_the_device_is_not_known_to_have_are_acked_but_not_stored() -> None:
    forged = "sha256:" + "f" * 64
    records = [
        TelemetryRecord(seq=1, metrics=window(10.0, COOL, T0)),
        TelemetryRecord(seq=2, metrics=window(10.0, COOL, T0, bundle=forged)),
        event(3),
        TelemetryRecord(seq=4, metrics=window(10.0, COOL, T0, bundle="")),  # nothing loaded yet
    ]
    batch = TelemetryBatch(epoch="ep", first_seq=1, last_seq=4, records=records)
    plan = plan_batch(batch, facts(bundles=frozenset({BUNDLE})), T0)
    assert [r.seq for r in plan.fresh] == [1, 3, 4] and [w.seq for w in plan.windows] == [1, 4]
    assert [(r.seq, r.bundle_digest) for r in plan.refused] == [(2, forged)]
    assert plan.moved.mark == 4 and plan.duplicates == 0  # acknowledged: the device's buffer moves on
    assert plan.outcome().refused == plan.refused and plan.outcome().stored == 3
    # no known bundles read (a batch without windows): nothing is judged
    assert plan_batch(batch, facts(), T0).refused == ()
    # a window re-sent after its ack is a duplicate, not refused again
    again = plan_batch(batch, facts(bundles=frozenset({BUNDLE}), mark=StoredMark(4, 3, 0, 0)), T0)
    assert again.refused == () and again.duplicates == 4
