"""The telemetry store writes a batch's plan only when the facts it was planned from still hold: a plan
from stale facts (another writer moved the mark or the baseline) is refused whole, and planning again from
a fresh read stores it (the telemetry service's retry)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgefleet.v1.telemetry_pb2 import DeviceEvent, TelemetryBatch, TelemetryRecord
from edgefleet_controller.store import Store
from edgefleet_controller.store.errors import Conflict
from edgefleet_controller.store.telemetry import TelemetryStore
from edgefleet_controller.telemetry.ingest_plan import plan_batch

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
