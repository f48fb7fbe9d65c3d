"""How a telemetry record is encoded and accounted in the device's buffer.

Owns the drop classes (``RecordClass``, stored names never change) and their codes, ``classify_body``
(which class and body field a metric window, event or review sample is), ``encode_record`` (the stored
payload: a ``TelemetryRecord`` with its seq, serialized without re-encoding the body),
``record_footprint`` (the bytes one record takes by SQLite's cell layout) and the values the buffer hands
out (``BufferedRecord``, ``Batch``). No SQLite here: the spool itself is ``buffer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from edge_runtime.telemetry.errors import TelemetryBufferError
from edgefleet.v1.telemetry_pb2 import (
    DeviceEvent,
    MetricWindow,
    ReviewSample,
    SeqRange,
    TelemetryBatch,
    TelemetryRecord,
)

# Cell pointer, payload-size and rowid varints of one table-leaf cell.
CELL_OVERHEAD: Final = 8
# The (cls, seq, size) index entry of one record at a typical fill, plus its share of interior pages.
INDEX_OVERHEAD: Final = 24


class RecordClass(StrEnum):
    """Drop classes; the stored names never change."""

    EVENT = "event"
    METRICS = "metrics"
    REVIEW = "review"


CLASS_CODE: Final = {RecordClass.EVENT: 0, RecordClass.METRICS: 1, RecordClass.REVIEW: 2}
CLASS_OF_CODE: Final = {v: k for k, v in CLASS_CODE.items()}
# Under pressure the store gives up classes in this order.
DROP_ORDER: Final = (RecordClass.METRICS, RecordClass.REVIEW, RecordClass.EVENT)
_BODY_FIELD: Final = {"metrics": 2, "event": 3, "review": 4}
_BODY_CLASS: Final = {"metrics": RecordClass.METRICS, "event": RecordClass.EVENT, "review": RecordClass.REVIEW}

Body = MetricWindow | DeviceEvent | ReviewSample | TelemetryRecord


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_record(seq: int, body_field: str, body: bytes) -> bytes:
    """``TelemetryRecord(seq=seq, <body_field>=body)`` serialized, without re-encoding the body.

    Byte-identical to ``SerializeToString()`` (fields in number order), so the buffer serializes each
    body once.
    """
    field = _BODY_FIELD[body_field]
    return b"\x08" + _varint(seq) + bytes([(field << 3) | 2]) + _varint(len(body)) + body


def record_footprint(payload_len: int, page_size: int = 4096) -> int:
    """Bytes one stored record takes in the database file, by SQLite's table-leaf cell layout.

    Small records are charged their share of a leaf page (a 1.4 KB record fits twice in a 4 KB page, so it
    costs 2 KB, not 1.4), large ones their local part plus whole overflow pages; ``INDEX_OVERHEAD`` covers
    the ``(cls, seq, size)`` index entry and interior pages.
    """
    usable = page_size
    max_local = usable - 35
    min_local = ((usable - 12) * 32 // 255) - 23
    # Record header + the cls and size columns; the seq is the rowid.
    p = payload_len + 8
    if p <= max_local:
        cell = p + CELL_OVERHEAD
        per_page = max(1, (usable - 8) // cell)
        return -(-usable // per_page) + INDEX_OVERHEAD
    k = min_local + (p - min_local) % (usable - 4)
    local = k if k <= max_local else min_local
    overflow_pages = math.ceil((p - local) / (usable - 4))
    return local + CELL_OVERHEAD + 4 + overflow_pages * page_size + INDEX_OVERHEAD


def classify_body(body: Body) -> tuple[RecordClass, str, bytes]:
    """A record's drop class, its ``TelemetryRecord`` body field and the body serialized."""
    if isinstance(body, TelemetryRecord):
        field = body.WhichOneof("body")
        if field is None:
            raise TelemetryBufferError("telemetry buffer: a TelemetryRecord with no body cannot be buffered")
        inner: MetricWindow | DeviceEvent | ReviewSample = getattr(body, field)
        return _BODY_CLASS[field], field, inner.SerializeToString()
    if isinstance(body, MetricWindow):
        return RecordClass.METRICS, "metrics", body.SerializeToString()
    if isinstance(body, DeviceEvent):
        return RecordClass.EVENT, "event", body.SerializeToString()
    if isinstance(body, ReviewSample):
        return RecordClass.REVIEW, "review", body.SerializeToString()
    raise TelemetryBufferError(
        "telemetry buffer: records must be MetricWindow, DeviceEvent, ReviewSample or TelemetryRecord, "
        f"got {type(body).__name__}"
    )


@dataclass(frozen=True, slots=True)
class BufferedRecord:
    """One stored record; ``payload`` is the serialized ``TelemetryRecord`` (seq included)."""

    seq: int
    cls: RecordClass
    payload: bytes

    def to_proto(self) -> TelemetryRecord:
        return TelemetryRecord.FromString(self.payload)


@dataclass(frozen=True, slots=True)
class Batch:
    """What ``peek_batch`` offers for upload: records in ascending seq, plus declared dropped ranges.

    ``first_seq``/``last_seq`` bound both the records and the declared ranges.
    """

    epoch: str
    records: tuple[BufferedRecord, ...]
    dropped: tuple[tuple[int, int], ...]

    @property
    def empty(self) -> bool:
        return not self.records and not self.dropped

    @property
    def first_seq(self) -> int:
        firsts = [r.seq for r in self.records[:1]] + [d[0] for d in self.dropped[:1]]
        return min(firsts, default=0)

    @property
    def last_seq(self) -> int:
        lasts = [r.seq for r in self.records[-1:]] + [d[1] for d in self.dropped[-1:]]
        return max(lasts, default=0)

    @property
    def payload_bytes(self) -> int:
        return sum(len(r.payload) for r in self.records)

    def to_proto(self) -> TelemetryBatch:
        return TelemetryBatch(
            epoch=self.epoch,
            first_seq=self.first_seq,
            last_seq=self.last_seq,
            records=[r.to_proto() for r in self.records],
            dropped=[SeqRange(first=a, last=b) for a, b in self.dropped],
        )
