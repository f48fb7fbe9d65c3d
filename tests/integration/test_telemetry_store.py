"""The telemetry store writes a batch's plan only when the facts it was planned from still hold: a plan
from stale facts (another writer moved the mark or the baseline) is refused whole, and planning again from
a fresh read stores it (the telemetry service's retry)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from edgefleet.v1.telemetry_pb2 import DeviceEvent, TelemetryBatch, TelemetryRecord
from edgefleet_controller.fleet_feed import FleetFeed
from edgefleet_controller.store import Store, schema
from edgefleet_controller.store.errors import Conflict
from edgefleet_controller.store.telemetry import TelemetryStore
from edgefleet_controller.telemetry.ingest_plan import IngestFacts, IngestOutcome, plan_batch
from edgefleet_controller.telemetry.service import TelemetryService

pytestmark = pytest.mark.integration

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def batch(*seqs: int) -> TelemetryBatch:
    records = [TelemetryRecord(seq=s, event=DeviceEvent(event_id=f"e{s}", kind=DeviceEvent.KIND_ALERT)) for s in seqs]
    return TelemetryBatch(epoch="ep", first_seq=min(seqs), last_seq=max(seqs), records=records)


@pytest.mark.parametrize("first_batch_of_epoch", [True, False])
def test_a_plan_from_stale_facts_is_refused_and_replanned(tmp_path: Path, first_batch_of_epoch: bool) -> None:
    store = Store.open_data_dir(tmp_path)
    try:
        _, secret = store.enrollment_tokens.create("lab", 3600, T0)
        device = store.devices.enroll(secret, "cam-1", "x86-avx2", {}, {}, T0)[0].id
        tstore = TelemetryStore(store.db)
        if not first_batch_of_epoch:
            tstore.commit_batch(device, plan_batch(batch(1), tstore.ingest_facts(device, "ep", 0), T0), T0)
        stale = tstore.ingest_facts(device, "ep", 0)
        tstore.commit_batch(device, plan_batch(batch(2, 3), stale, T0), T0)
        with pytest.raises(Conflict):
            tstore.commit_batch(device, plan_batch(batch(3, 4), stale, T0), T0)
        assert tstore.mark(device, "ep") == (3 if not first_batch_of_epoch else 0)
        replanned = plan_batch(batch(3, 4), tstore.ingest_facts(device, "ep", 0), T0)
        assert [r.seq for r in replanned.fresh] == [4] and replanned.duplicates == 1
        tstore.commit_batch(device, replanned, T0)
        assert tstore.mark(device, "ep") == (4 if not first_batch_of_epoch else 0)
    finally:
        store.close()


def test_two_writers_racing_on_one_epoch_store_each_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two uploads of overlapping batches read the same facts before either commits: one commit wins, the
    other is refused with nothing stored, planned again by the service and stores only what it adds."""
    store = Store.open_data_dir(tmp_path)
    try:
        _, secret = store.enrollment_tokens.create("lab", 3600, T0)
        device = store.devices.enroll(secret, "cam-1", "x86-avx2", {}, {}, T0)[0].id
        service = TelemetryService(store, lambda: T0, FleetFeed())
        both_read = threading.Barrier(2, timeout=10)
        read_facts = service.tstore.ingest_facts
        first_read: set[int] = set()

        def ingest_facts(device_id: str, epoch: str, recent: int, **options: Any) -> IngestFacts:
            facts = read_facts(device_id, epoch, recent, **options)
            if threading.get_ident() not in first_read:
                first_read.add(threading.get_ident())
                both_read.wait()  # the other writer has read the same facts: both plans are now racing
            return facts

        monkeypatch.setattr(service.tstore, "ingest_facts", ingest_facts)

        async def race() -> list[IngestOutcome]:
            return await asyncio.gather(
                asyncio.to_thread(service._store_batch, device, batch(1, 2, 3), T0),
                asyncio.to_thread(service._store_batch, device, batch(2, 3, 4), T0),
            )

        outcomes = asyncio.run(race())
        assert len(first_read) == 2
        won, replanned = sorted(outcomes, key=lambda o: o.duplicates)
        assert (won.duplicates, replanned.duplicates, replanned.acked_through) == (0, 2, 4)
        assert service.tstore.mark(device, "ep") == 4
        with store.db.read() as conn:
            seqs = conn.execute(
                sa.select(schema.telemetry_events.c.seq).where(schema.telemetry_events.c.device_id == device)
            ).scalars()
            assert sorted(seqs) == [1, 2, 3, 4]
            marks = conn.execute(sa.select(schema.telemetry_marks)).one()
        assert (marks.records, marks.duplicates) == (4, 2)
    finally:
        store.close()
