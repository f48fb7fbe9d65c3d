"""Frame gaps are checked at ingest (``telemetry.ingest.validate_batch``, pure): an ordered interval, a storable
count and a short cause; a gap breaking one refuses its batch with the field, the value and the bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.v1.telemetry_pb2 import DeviceEvent, FrameGap, TelemetryBatch, TelemetryRecord
from edgefleet_controller.telemetry.ingest import BatchError, validate_batch

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def batch(start: datetime, end: datetime, frames: int = 83, cause: str = "process_killed") -> TelemetryBatch:
    gap = FrameGap(frames=frames, frames_known=True, cause=cause)
    gap.start.FromDatetime(start)
    gap.end.FromDatetime(end)
    alert = TelemetryRecord(seq=1, event=DeviceEvent(event_id="a", kind=DeviceEvent.KIND_ALERT))
    record = TelemetryRecord(seq=2, event=DeviceEvent(event_id="g", kind=DeviceEvent.KIND_FRAME_GAP, frame_gap=gap))
    return TelemetryBatch(epoch="e1", first_seq=1, last_seq=2, records=[alert, record])


def test_ordered_and_empty_intervals_are_accepted() -> None:
    validate_batch(batch(T0, T0 + timedelta(seconds=30)))
    validate_batch(batch(T0, T0))  # a killed run that counted nothing after its last report
    validate_batch(batch(T0, T0, frames=2**63 - 1, cause="c" * 32))


def test_an_interval_ending_before_it_starts_refuses_the_batch() -> None:
    with pytest.raises(BatchError, match=r"records\[1\] \(seq 2\)\.event\.frame_gap must have start <= end") as err:
        validate_batch(batch(T0, T0 - timedelta(microseconds=1)))
    assert "2025-01-01T00:00:00Z after end 2024-12-31T23:59:59.999999Z" in str(err.value)


def test_unstorable_counts_and_long_causes_are_refused() -> None:
    with pytest.raises(
        BatchError, match=r"frame_gap\.frames must be within 0\.\.9223372036854775807, got 18446744073709551615"
    ):
        validate_batch(batch(T0, T0, frames=2**64 - 1))
    with pytest.raises(BatchError, match=r"frame_gap\.cause must be at most 32 characters, got 'xxx.*… \(5000 chars\)"):
        validate_batch(batch(T0, T0, cause="x" * 5000))
