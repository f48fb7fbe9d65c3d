"""The durable telemetry buffer on real SQLite: round trip, sequence numbers, epochs, corruption, drop policy.

The SIGKILL durability test is in ``test_telemetry_buffer_crash.py``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from edge_runtime.telemetry import (
    RecordClass,
    TelemetryBuffer,
    TelemetryBufferError,
    WindowAggregator,
    record_footprint,
)
from edgefleet.v1.telemetry_pb2 import DeviceEvent, MetricWindow, ReviewSample, TelemetryRecord

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, tzinfo=UTC)
MiB = 1024 * 1024


def realistic_window(i: int, frames: int = 300) -> MetricWindow:
    """A 10 s window of a ~30 FPS detector, built the way the runtime builds it."""
    rng = np.random.default_rng(i)
    agg = WindowAggregator(bundle_digest="sha256:" + "5e" * 32, provider="CUDAExecutionProvider", started_at=T0)
    for ms in rng.lognormal(3.2, 0.25, size=frames):
        agg.observe(float(ms), float(ms) * 0.7, float(rng.uniform(0.2, 1.0)), detections=int(rng.integers(0, 6)))
    return agg.close(T0 + timedelta(seconds=10), memory_free=3 << 30, disk_free=20 << 30)


def fixed_metrics(n_bytes: int = 300) -> MetricWindow:
    return MetricWindow(bundle_digest="d" * n_bytes)


def event(i: int) -> DeviceEvent:
    return DeviceEvent(event_id=f"ev-{i:06d}", kind=DeviceEvent.KIND_CANARY_VERDICT, reason="p95 ok")


def review(i: int, n_bytes: int = 2000) -> ReviewSample:
    return ReviewSample(sample_id=f"rv-{i}", jpeg=b"\xff" * n_bytes)


def stored_size(body: MetricWindow | DeviceEvent | ReviewSample, seq: int) -> int:
    field = {MetricWindow: "metrics", DeviceEvent: "event", ReviewSample: "review"}[type(body)]
    record = TelemetryRecord(seq=seq)
    getattr(record, field).CopyFrom(body)
    return record_footprint(len(record.SerializeToString()))


def open_buffer(path: Path, *, max_bytes: int = 8 * MiB, review_quota_bytes: int = 2 * MiB) -> TelemetryBuffer:
    return TelemetryBuffer(path, max_bytes=max_bytes, review_quota_bytes=review_quota_bytes)


def test_append_peek_ack_round_trip(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "buffer.db")
    bodies: list[MetricWindow | DeviceEvent | ReviewSample] = [
        realistic_window(0),
        event(1),
        review(2),
        realistic_window(3),
    ]
    seqs = buf.append_many(bodies)
    assert seqs == [1, 2, 3, 4]
    batch = buf.peek_batch(max_records=10, events_first=False)
    assert [r.seq for r in batch.records] == seqs
    assert [r.cls for r in batch.records] == [
        RecordClass.METRICS,
        RecordClass.EVENT,
        RecordClass.REVIEW,
        RecordClass.METRICS,
    ]
    proto = batch.to_proto()
    assert (proto.epoch, proto.first_seq, proto.last_seq, len(proto.dropped)) == (buf.epoch, 1, 4, 0)
    assert [r.seq for r in proto.records] == seqs
    assert proto.records[0].metrics == bodies[0]
    assert proto.records[1].event == bodies[1]
    assert proto.records[2].review == bodies[2]
    # Peeking does not consume.
    assert [r.seq for r in buf.peek_batch(10).records] == seqs
    assert buf.ack(buf.epoch, 2) == 2
    assert buf.seqs() == [3, 4]
    assert buf.ack("some-old-epoch", 4) == 0
    assert buf.ack(buf.epoch, 1) == 0  # below the mark
    assert buf.seqs() == [3, 4]
    # An ack beyond what was ever assigned is clamped, not trusted.
    assert buf.ack(buf.epoch, 99) == 2
    assert buf.count() == 0
    assert buf.stored_bytes() == 0
    assert buf.peek_batch(10).empty
    assert buf.append(event(5)) == 5
    buf.close()


def test_peek_respects_record_and_byte_limits(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "buffer.db")
    buf.append_many([fixed_metrics(1000) for _ in range(20)])
    assert len(buf.peek_batch(max_records=7).records) == 7
    assert len(buf.peek_batch(max_records=100, max_bytes=3500).records) == 3
    # A single record larger than max_bytes still goes, or the queue would be stuck forever.
    assert len(buf.peek_batch(max_records=100, max_bytes=10).records) == 1
    buf.close()


def test_events_first_takes_events_before_older_metrics(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "buffer.db")
    buf.append_many([fixed_metrics() for _ in range(50)])
    (ev,) = buf.append_many([event(1)])
    buf.append_many([fixed_metrics() for _ in range(10)])
    first = buf.peek_batch(max_records=5, events_first=True)
    assert [r.seq for r in first.records] == [1, 2, 3, 4, ev]
    plain = buf.peek_batch(max_records=5, events_first=False)
    assert [r.seq for r in plain.records] == [1, 2, 3, 4, 5]
    buf.close()


def test_sequence_is_monotonic_across_reopen_and_acks(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buf = open_buffer(path)
    epoch = buf.epoch
    assert buf.append_many([event(i) for i in range(10)]) == list(range(1, 11))
    buf.ack(epoch, 10)  # everything acknowledged: the table is empty, the counter must not restart
    buf.close()
    buf = open_buffer(path)
    assert buf.reset is None
    assert buf.epoch == epoch
    assert buf.acked_through == 10
    assert buf.append_many([event(i) for i in range(3)]) == [11, 12, 13]
    # Closing without acking and reopening keeps the records.
    buf.close()
    buf = open_buffer(path)
    assert buf.seqs() == [11, 12, 13]
    assert buf.append(event(99)) == 14
    buf.close()


def _corrupt_header(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(os.urandom(100))


def _truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _truncate_zero(path: Path) -> None:
    os.truncate(path, 0)


def _garbage_pages(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as f:
        # Leave the header intact; smash B-tree pages in the middle.
        f.seek(4096 * 2)
        f.write(os.urandom(min(size - 8192, 4096 * 8)))


@pytest.mark.parametrize("damage", [_corrupt_header, _truncate_half, _truncate_zero, _garbage_pages])
def test_corrupt_file_moves_aside_and_starts_a_new_epoch(tmp_path: Path, damage: object) -> None:
    path = tmp_path / "buffer.db"
    buf = open_buffer(path)
    old_epoch = buf.epoch
    buf.append_many([realistic_window(i) for i in range(200)])
    buf.close()
    damage(path)  # type: ignore[operator]
    with capture_logs() as logs:
        buf = open_buffer(path)
    assert buf.reset is not None
    assert buf.epoch != old_epoch
    assert buf.reset.seq == 1
    assert buf.reset.moved_to is not None and buf.reset.moved_to.exists()
    assert buf.reset.moved_to.name.startswith("buffer.db.corrupt-")
    (first,) = buf.peek_batch(10).records
    record = first.to_proto()
    assert record.seq == 1
    assert record.event.kind == DeviceEvent.KIND_BUFFER_RESET
    assert buf.epoch in record.event.reason
    assert record.event.event_id
    assert any(e["event"] == "telemetry.buffer_reset" and e["log_level"] == "warning" for e in logs)
    assert buf.append(event(1)) == 2
    buf.close()
    # The new store is healthy: it reopens without another reset.
    again = open_buffer(path)
    assert again.reset is None
    assert again.seqs() == [1, 2]
    again.close()


def test_repeated_corruption_keeps_only_the_newest_moved_aside_files(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    ticks = iter(T0 + timedelta(seconds=i) for i in range(100))
    for _ in range(4):
        buf = TelemetryBuffer(path, max_bytes=MiB, review_quota_bytes=0, clock=lambda: next(ticks))
        buf.close()
        _corrupt_header(path)
    buf = TelemetryBuffer(path, max_bytes=MiB, review_quota_bytes=0, clock=lambda: next(ticks))
    buf.close()
    assert len(list(tmp_path.glob("buffer.db.corrupt-*"))) == 2


def test_a_second_process_holding_the_store_is_an_error_not_corruption(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buf = open_buffer(path)
    buf.append(event(1))
    with pytest.raises(TelemetryBufferError, match="another edge-runtime"):
        open_buffer(path)
    assert list(tmp_path.glob("*.corrupt-*")) == []
    assert buf.seqs() == [1]
    buf.close()


def test_full_buffer_drops_oldest_metrics_with_exact_counts(tmp_path: Path) -> None:
    body = fixed_metrics(500)
    size = stored_size(body, 1000)  # every seq here has a 2-byte varint
    capacity = 40
    buf = open_buffer(tmp_path / "buffer.db", max_bytes=capacity * size, review_quota_bytes=0)
    # Seqs below 128 encode one byte shorter: start the measured part from 128.
    buf.append_many([body] * 127)
    buf.ack(buf.epoch, 127)
    before = buf.dropped_counts()["metrics"]
    buf.append_many([body] * 50)
    buf.append_many([body] * 30)
    for _ in range(25):
        buf.append(body)
    total = 50 + 30 + 25
    assert buf.count(RecordClass.METRICS) == capacity
    assert buf.dropped_counts()["metrics"] - before == total - capacity
    assert buf.dropped_counts()["event"] == buf.dropped_counts()["review"] == 0
    # The oldest went: the survivors are the newest ``capacity`` seqs.
    assert buf.seqs() == list(range(127 + total - capacity + 1, 127 + total + 1))
    assert buf.stored_bytes() <= buf.max_bytes
    buf.close()


def test_events_survive_while_metrics_exist_and_drops_are_declared(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buf = open_buffer(path, max_bytes=60_000, review_quota_bytes=10_000)
    events: list[int] = []
    for i in range(300):
        seqs = buf.append_many([fixed_metrics(400), fixed_metrics(400), event(i)])
        events.append(seqs[-1])
    held = set(buf.seqs())
    assert set(events) <= held  # no event dropped while there were metrics to drop
    counts = buf.dropped_counts()
    assert counts["event"] == 0
    assert counts["metrics"] == 600 - buf.count(RecordClass.METRICS)
    # Every seq ever assigned is either held or declared dropped in the batches, exactly once.
    declared: set[int] = set()
    sent: set[int] = set()
    while True:
        batch = buf.peek_batch(max_records=64, events_first=False)
        if batch.empty:
            break
        for first, last in batch.dropped:
            declared.update(range(first, last + 1))
        sent.update(r.seq for r in batch.records)
        proto = batch.to_proto()
        assert proto.first_seq <= min([r.seq for r in proto.records] + [d.first for d in proto.dropped])
        buf.ack(batch.epoch, batch.last_seq)
    assert sent == held
    assert declared == set(range(1, 901)) - held
    # Drop counts are persistent.
    buf.close()
    assert open_buffer(path, max_bytes=60_000, review_quota_bytes=10_000).dropped_counts() == counts


def test_review_quota_drops_oldest_reviews_only(tmp_path: Path) -> None:
    sample = review(0, 3000)
    size = stored_size(sample, 5)
    buf = open_buffer(tmp_path / "buffer.db", max_bytes=MiB, review_quota_bytes=5 * size)
    buf.append_many([event(0), fixed_metrics()])
    review_seqs = buf.append_many([review(i, 3000) for i in range(8)])
    assert buf.count(RecordClass.REVIEW) == 5
    assert buf.dropped_counts() == {"event": 0, "metrics": 0, "review": 3}
    assert [s for s in buf.seqs() if s > 2] == review_seqs[3:]
    buf.close()


def test_under_pressure_metrics_go_before_reviews_and_reviews_before_events(tmp_path: Path) -> None:
    ev, mw, rv = event(0), fixed_metrics(800), review(0, 800)
    s_ev, s_mw, s_rv = (stored_size(b, 5) for b in (ev, mw, rv))
    buf = open_buffer(tmp_path / "buffer.db", max_bytes=10 * s_ev + 5 * s_mw + 5 * s_rv, review_quota_bytes=5 * s_rv)
    buf.append_many([ev] * 10 + [mw] * 5 + [rv] * 5)
    assert buf.dropped_counts() == {"event": 0, "metrics": 0, "review": 0}
    # Room for 10 more events: all 5 metrics go first, then 5 reviews.
    more_events = 5 * s_mw // s_ev + 5 * s_rv // s_ev
    buf.append_many([ev] * more_events)
    assert buf.count(RecordClass.METRICS) == 0
    assert buf.count(RecordClass.REVIEW) <= 1
    assert buf.dropped_counts()["event"] == 0
    assert buf.count(RecordClass.EVENT) == 10 + more_events
    buf.close()


def test_events_alone_over_the_bound_are_dropped_and_counted(tmp_path: Path) -> None:
    ev = event(0)
    size = stored_size(ev, 5)
    buf = open_buffer(tmp_path / "buffer.db", max_bytes=20 * size, review_quota_bytes=0)
    with capture_logs() as logs:
        seqs = buf.append_many([event(i) for i in range(25)])
    assert buf.count(RecordClass.EVENT) == 20
    assert buf.dropped_counts() == {"event": 5, "metrics": 0, "review": 0}
    assert buf.seqs() == seqs[5:]
    assert buf.peek_batch(100).dropped == ((1, 5),)
    assert any(e["event"] == "telemetry.buffer_events_dropped" for e in logs)
    buf.close()


def test_a_record_that_can_never_fit_is_dropped_and_counted_and_the_rest_of_its_batch_is_stored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "buffer.db"
    buf = open_buffer(path, max_bytes=64 * 1024, review_quota_bytes=16 * 1024)
    with capture_logs() as logs:
        seqs = buf.append_many([event(0), review(1, 20_000), fixed_metrics(100_000), review(2), review(3, 30_000)])
        assert buf.append(review(4, 20_000)) is None
    # Only what fits got a seq, contiguous: nothing is declared lost that was never in the store.
    assert seqs == [1, 2]
    assert [r.cls for r in buf.records(seqs)] == [RecordClass.EVENT, RecordClass.REVIEW]
    assert buf.peek_batch(10).dropped == ()
    assert buf.too_large_counts() == {"review_too_large": 3, "metrics_too_large": 1}
    assert buf.dropped_counts() == {
        "event": 0,
        "metrics": 0,
        "review": 0,
        "review_too_large": 3,
        "metrics_too_large": 1,
    }
    # Logged once per class, with the sizes and the bound that refused it.
    too_large = [e for e in logs if e["event"] == "telemetry.record_too_large"]
    assert [(e["record_class"], e["bound"], e["limit_bytes"]) for e in too_large] == [
        ("review", "review_quota_bytes", 16 * 1024),
        ("metrics", "max_bytes", 64 * 1024),
    ]
    assert too_large[0]["stored_bytes"] > 16 * 1024 and too_large[0]["payload_bytes"] > 20_000
    buf.close()
    # The count is durable.
    reopened = open_buffer(path, max_bytes=64 * 1024, review_quota_bytes=16 * 1024)
    assert reopened.dropped_counts()["review_too_large"] == 3
    assert reopened.too_large_counts() == {"review_too_large": 3, "metrics_too_large": 1}
    assert reopened.append(event(5)) == 3
    reopened.close()


def test_a_review_quota_of_zero_keeps_no_review_and_never_fails(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "buffer.db", max_bytes=64 * 1024, review_quota_bytes=0)
    with capture_logs() as logs:
        seqs = buf.append_many([review(0, 10), event(1), review(2, 10)])
    assert seqs == [1] and buf.count(RecordClass.REVIEW) == 0
    assert buf.dropped_counts()["review_too_large"] == 2
    [logged] = [e for e in logs if e["event"] == "telemetry.record_too_large"]
    assert "review sampling is off" in logged["hint"]
    buf.close()


def test_files_stay_within_the_bound_over_many_appends_and_acks(tmp_path: Path) -> None:
    max_bytes = 2 * MiB
    buf = open_buffer(tmp_path / "buffer.db", max_bytes=max_bytes, review_quota_bytes=MiB // 2)
    windows = [realistic_window(i) for i in range(20)]
    rng = np.random.default_rng(5)
    worst = 0
    for step in range(300):
        bodies: list[MetricWindow | DeviceEvent | ReviewSample] = [windows[(step + k) % 20] for k in range(20)]
        if step % 7 == 0:
            bodies.append(review(step, int(rng.integers(5_000, 40_000))))
        if step % 5 == 0:
            bodies.append(event(step))
        buf.append_many(bodies)
        if step % 100 == 99:
            # The link comes back for a while: upload and acknowledge a chunk.
            for _ in range(2):
                batch = buf.peek_batch(max_records=400, max_bytes=MiB)
                buf.ack(batch.epoch, batch.last_seq)
        worst = max(worst, buf.bytes_used())
        assert buf.stored_bytes() <= max_bytes
    assert worst <= max_bytes + buf.slack_bytes, (worst, max_bytes, buf.slack_bytes)
    assert buf.dropped_counts()["metrics"] > 0
    assert buf.dropped_counts()["event"] == 0
    # After everything is acknowledged, the files shrink back (incremental vacuum + WAL truncate).
    while not (batch := buf.peek_batch(max_records=1000, max_bytes=4 * MiB)).empty:
        buf.ack(batch.epoch, batch.last_seq)
    buf.close()
    assert (tmp_path / "buffer.db").stat().st_size < 256 * 1024
