"""Records that can never fit the telemetry buffer: which they are, how they are counted, what is logged.

A record whose stored footprint is over ``max_bytes`` (or a review sample over ``review_quota_bytes``; a
quota of 0 keeps no review at all) is dropped by the buffer's append, never fatal: it gets no seq, the rest
of its batch is stored. ``Oversize`` decides (``never_fits``), logs the first such record of each class per
open store with its size and the bound (``telemetry.record_too_large``), and keeps the persistent
``<class>_too_large`` counts (rows of the buffer's ``drops`` table, written in the append's transaction by
``store``) in memory for cheap reads (``counts``: status.json, the reported state).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import structlog

from edge_runtime.telemetry.records import RecordClass
from edgefleet.contract.shown import shown

log = structlog.get_logger(__name__)

TOO_LARGE_SUFFIX: Final = "_too_large"


def too_large_key(cls: RecordClass) -> str:
    """The ``dropped_counts`` key of records of ``cls`` dropped because one alone is over the bound."""
    return cls.value + TOO_LARGE_SUFFIX


class Oversize:
    """The never-fits rule of one open buffer, its once-per-class log and its counts."""

    def __init__(self, path: Path, *, max_bytes: int, review_quota_bytes: int) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._review_quota_bytes = review_quota_bytes
        self._logged: set[RecordClass] = set()
        self._counts: dict[str, int] = {}

    def load(self, conn: sqlite3.Connection | None) -> None:
        """Read the stored counts (None: a new store, none yet)."""
        rows = () if conn is None else conn.execute("SELECT cls, count FROM drops WHERE cls LIKE ?", ("%_too_large",))
        self._counts = {str(key): int(n) for key, n in rows}

    def never_fits(self, cls: RecordClass, payload_len: int, size: int) -> bool:
        """Whether a record of ``size`` stored bytes is over its bound; logs the first of each class."""
        limit, bound = self._max_bytes, "max_bytes"
        if cls is RecordClass.REVIEW and self._review_quota_bytes < limit:
            limit, bound = self._review_quota_bytes, "review_quota_bytes"
        if size <= limit:
            return False
        if cls not in self._logged:
            self._logged.add(cls)
            off = cls is RecordClass.REVIEW and limit == 0
            log.warning(
                "telemetry.record_too_large",
                path=str(self._path),
                record_class=cls.value,
                payload_bytes=payload_len,
                stored_bytes=size,
                bound=bound,
                limit_bytes=limit,
                hint="review sampling is off (review_quota_bytes 0)"
                if off
                else f"dropped and counted as dropped[{shown(too_large_key(cls))}]; raise telemetry.{bound} "
                "or make the record smaller (review: lower review.jpeg_quality or the frame size)",
            )
        return True

    def store(self, db: sqlite3.Connection, dropped: Mapping[RecordClass, int]) -> None:
        """Add what an append dropped to the ``drops`` table, inside the append's transaction."""
        db.executemany(
            "INSERT INTO drops(cls, count) VALUES (?, ?) ON CONFLICT(cls) DO UPDATE SET count = count + excluded.count",
            [(too_large_key(cls), n) for cls, n in dropped.items() if n],
        )

    def committed(self, dropped: Mapping[RecordClass, int]) -> None:
        """Count what an append dropped, once its transaction committed."""
        for cls, n in dropped.items():
            if n:
                key = too_large_key(cls)
                self._counts[key] = self._counts.get(key, 0) + n

    def counts(self) -> dict[str, int]:
        return dict(self._counts)
