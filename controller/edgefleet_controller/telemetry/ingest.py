"""Telemetry batch validation and the contiguous high-water mark. Pure: no I/O, no clock.

The device numbers records per buffer epoch; the controller acknowledges the highest sequence number ``m``
such that every seq ``<= m`` is durably stored or was declared dropped by the device. Batches need not be
contiguous (after a reconnect the device sends events first, ahead of older metrics), so what is stored
above the mark is kept as ranges (``pending``) until the mark passes them:

- a record whose seq is ``<= mark`` or inside a pending range is a duplicate (re-sent after a lost ack)
  and is dropped;
- ``advance(mark, ranges)`` merges ranges and moves the mark through every range that touches it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.contract.shown import shown
from edgefleet.v1.telemetry_pb2 import DeviceEvent, FrameGap, TelemetryBatch, TelemetryRecord
from edgefleet_controller.telemetry.window_bounds import MAX_STORED_INT, WindowInvalid, check_window

MAX_EPOCH_LEN = 64
#: ``FrameGap.cause`` is a short stored name (``process_killed``, ``rebooted``, ...).
MAX_GAP_CAUSE_LEN = 32
MAX_BATCH_RECORDS = 10_000

Range = tuple[int, int]


class BatchError(ValueError):
    """A batch that breaks the upload protocol; the message names the field and value."""


def validate_batch(batch: TelemetryBatch) -> None:
    """Check epoch, bounds, ordering and declared ranges; raises ``BatchError`` with what to fix."""
    if not batch.epoch or len(batch.epoch) > MAX_EPOCH_LEN:
        raise BatchError(
            f"TelemetryBatch: field 'epoch' must be 1..{MAX_EPOCH_LEN} characters, got {shown(batch.epoch)}; "
            "send the buffer's store epoch"
        )
    if not batch.records and not batch.dropped:
        raise BatchError("TelemetryBatch: a batch needs at least one record or dropped range, got none")
    if len(batch.records) > MAX_BATCH_RECORDS:
        raise BatchError(
            f"TelemetryBatch: at most {MAX_BATCH_RECORDS} records per batch, got {len(batch.records)}; split it"
        )
    first, last = batch.first_seq, batch.last_seq
    if first < 1 or last < first or last > MAX_STORED_INT:
        raise BatchError(
            f"TelemetryBatch: need 1 <= first_seq <= last_seq <= {MAX_STORED_INT} (2^63 - 1), "
            f"got first_seq={first}, last_seq={last}"
        )
    previous = 0
    for i, record in enumerate(batch.records):
        seq = record.seq
        if not first <= seq <= last:
            raise BatchError(f"TelemetryBatch: records[{i}].seq={seq} is outside first_seq..last_seq = {first}..{last}")
        if seq <= previous:
            raise BatchError(
                f"TelemetryBatch: records must be in strictly ascending seq order, got {seq} after {previous} "
                f"at records[{i}]"
            )
        if record.WhichOneof("body") is None:
            raise BatchError(f"TelemetryBatch: records[{i}] (seq {seq}) has no body (metrics, event or review)")
        _check_body(record, f"records[{i}] (seq {seq})")
        previous = seq
    for i, r in enumerate(batch.dropped):
        if r.first > r.last or r.first < first or r.last > last:
            raise BatchError(
                f"TelemetryBatch: dropped[{i}] = {r.first}..{r.last} must be ordered and within "
                f"first_seq..last_seq = {first}..{last}"
            )


def _check_body(record: TelemetryRecord, where: str) -> None:
    """Values the store converts: timestamps within years 1..9999, an event kind this contract names."""
    stamps: list[tuple[str, Timestamp]] = []
    match record.WhichOneof("body"):
        case "metrics":
            stamps.append(("metrics.window_start", record.metrics.window_start))
        case "event":
            stamps.append(("event.at", record.event.at))
            if record.event.kind not in DeviceEvent.Kind.values():
                known = ", ".join(DeviceEvent.Kind.keys())
                raise BatchError(f"TelemetryBatch: {where}.event.kind must be one of {known}, got {record.event.kind}")
            if record.event.kind == DeviceEvent.KIND_FRAME_GAP:
                gap = record.event.frame_gap
                stamps += [("event.frame_gap.start", gap.start), ("event.frame_gap.end", gap.end)]
        case "review":
            stamps.append(("review.captured_at", record.review.captured_at))
    for name, ts in stamps:
        try:
            ts.ToDatetime()
        except ValueError:
            raise BatchError(
                f"TelemetryBatch: {where}.{name} must be a timestamp between years 1 and 9999, "
                f"got seconds={ts.seconds}, nanos={ts.nanos}"
            ) from None
    if record.WhichOneof("body") == "metrics":
        try:
            check_window(record.metrics)
        except WindowInvalid as exc:
            raise BatchError(f"TelemetryBatch: {where}.metrics.{exc}; the batch was not stored") from None
    if record.WhichOneof("body") == "event" and record.event.kind == DeviceEvent.KIND_FRAME_GAP:
        _check_frame_gap(record.event.frame_gap, where)


def _check_frame_gap(gap: FrameGap, where: str) -> None:
    """A frame gap's interval is ordered (start <= end), its count storable, its cause a short name."""
    if (gap.start.seconds, gap.start.nanos) > (gap.end.seconds, gap.end.nanos):
        raise BatchError(
            f"TelemetryBatch: {where}.event.frame_gap must have start <= end, got start {gap.start.ToJsonString()} "
            f"after end {gap.end.ToJsonString()}; the batch was not stored"
        )
    if gap.frames > MAX_STORED_INT:
        raise BatchError(
            f"TelemetryBatch: {where}.event.frame_gap.frames must be within 0..{MAX_STORED_INT}, got {gap.frames}"
        )
    if len(gap.cause) > MAX_GAP_CAUSE_LEN:
        raise BatchError(
            f"TelemetryBatch: {where}.event.frame_gap.cause must be at most {MAX_GAP_CAUSE_LEN} characters, "
            f"got {shown(gap.cause)}"
        )


@dataclass(frozen=True, slots=True)
class MarkAdvance:
    mark: int
    pending: tuple[Range, ...]


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, merged ranges (adjacent ranges join)."""
    out: list[Range] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def advance(mark: int, ranges: Iterable[Range]) -> MarkAdvance:
    """Move ``mark`` through every range touching it; ranges still above it stay pending."""
    pending: list[Range] = []
    for a, b in merge_ranges(r for r in ranges if r[1] > mark):
        if not pending and a <= mark + 1:
            mark = max(mark, b)
        else:
            pending.append((max(a, mark + 1), b))
    return MarkAdvance(mark, tuple(pending))


def is_duplicate(seq: int, mark: int, pending: Iterable[Range]) -> bool:
    return seq <= mark or any(a <= seq <= b for a, b in pending)
