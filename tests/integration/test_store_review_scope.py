"""Review samples identified by (device, sample id) and one device's telemetry deleted by range, against a real
SQLite file and a real PostgreSQL server (the ``store`` fixture in conftest.py): migration 0006 keeps the rows
an older controller stored, a device reusing another's id hides nothing, a device reusing its own id replaces
nothing, and ``delete_range`` removes exactly one device's records in [since, until)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from edgefleet.v1.telemetry_pb2 import (
    DeviceEvent,
    MetricWindow,
    ReviewSample,
    TelemetryBatch,
    TelemetryRecord,
)
from edgefleet_controller.store import Store
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.errors import InvalidArgument, NotFound
from edgefleet_controller.store.review_samples import ReviewSampleStore
from edgefleet_controller.store.telemetry import TelemetryStore
from edgefleet_controller.telemetry.ingest import validate_batch
from edgefleet_controller.telemetry.ingest_plan import plan_batch
from tests.integration.store_cases import T0, enroll, metric_window, upgrade_to

pytestmark = pytest.mark.integration

BUNDLE = "sha256:" + "c" * 64
Body = MetricWindow | DeviceEvent | ReviewSample


def review(sample_id: str, at: datetime) -> ReviewSample:
    s = ReviewSample(sample_id=sample_id, bundle_digest=BUNDLE, reason="sampled", top_confidence=0.3, jpeg=b"\xff\xd8")
    s.captured_at.FromDatetime(at)
    return s


def window(at: datetime) -> MetricWindow:
    return metric_window([20.0 + i for i in range(10)], at, BUNDLE)


def gap_event(event_id: str, at: datetime) -> DeviceEvent:
    ev = DeviceEvent(event_id=event_id, kind=DeviceEvent.KIND_FRAME_GAP, bundle_digest=BUNDLE, reason="killed")
    ev.at.FromDatetime(at)
    ev.frame_gap.frames = 3
    ev.frame_gap.start.FromDatetime(at)
    ev.frame_gap.end.FromDatetime(at + timedelta(seconds=1))
    return ev


def upload(tstore: TelemetryStore, device_id: str, epoch: str, *bodies: Body) -> None:
    """Validate, plan and store one batch the way UploadTelemetry does."""
    records = []
    for seq, body in enumerate(bodies, start=1):
        field = {MetricWindow: "metrics", DeviceEvent: "event", ReviewSample: "review"}[type(body)]
        record = TelemetryRecord(seq=seq)
        getattr(record, field).CopyFrom(body)
        records.append(record)
    batch = TelemetryBatch(epoch=epoch, first_seq=1, last_seq=len(bodies), records=records)
    validate_batch(batch)
    tstore.commit_batch(device_id, plan_batch(batch, tstore.ingest_facts(device_id, epoch, 0), T0), T0)


def listed(reviews: ReviewSampleStore, **filters: str) -> list[tuple[str, str, str]]:
    rows = reviews.samples(site=None, bundle=None, label=None, limit=100, include_jpeg=False, **filters)
    return sorted((r.device_id, r.sample.sample_id, r.label) for r in rows)


def test_one_sample_id_on_two_devices_is_two_samples_each_labelled_by_device(store: Store) -> None:
    tstore, reviews = TelemetryStore(store.db), ReviewSampleStore(store.db)
    a, _ = enroll(store, "berlin", name="cam-a")
    b, _ = enroll(store, "paris", name="cam-b")
    idle, _ = enroll(store, "paris", name="cam-idle")
    upload(tstore, a, "ep", review("s1", T0))
    upload(tstore, b, "ep", review("s1", T0 + timedelta(seconds=1)), review("s2", T0))
    assert listed(reviews) == sorted([(a, "s1", ""), (b, "s1", ""), (b, "s2", "")])

    # by id alone: refused while two devices have it, naming both; nothing is labelled
    with pytest.raises(InvalidArgument, match=r"'s1'.* ambiguous: devices 'cam-a' \(dev_\w+\), 'cam-b' \(dev_\w+\)"):
        reviews.label("s1", "fp", "alice", T0)
    assert [label for *_, label in listed(reviews)] == ["", "", ""]
    # by device + id: each device's own sample, the other untouched
    labelled = reviews.label("s1", "fp", "alice", T0, device_id=a)
    assert (labelled.device_id, labelled.sample.sample_id, labelled.label, labelled.labeled_by) == (
        a,
        "s1",
        "fp",
        "alice",
    )
    assert listed(reviews, device_id=b) == [(b, "s1", ""), (b, "s2", "")]
    reviews.label("s1", "tp", "bob", T0, device_id=b)
    assert listed(reviews, sample_id="s1") == sorted([(a, "s1", "fp"), (b, "s1", "tp")])
    assert reviews.fp_rates(site=None, bundle=None) == {f"berlin/{BUNDLE}": 1.0, f"paris/{BUNDLE}": 0.0}
    # an id only one device has still works alone; relabelling overwrites that device's label only
    assert reviews.label("s2", "fp", "carol", T0).device_id == b
    with pytest.raises(NotFound, match="s1"):
        reviews.label("s1", "tp", "alice", T0, device_id=idle)

    # a device reusing its own id later (a new epoch) replaces nothing: the labelled sample stays as it was
    upload(tstore, a, "ep2", review("s1", T0 + timedelta(hours=1)), review("s3", T0))
    assert listed(reviews, device_id=a) == [(a, "s1", "fp"), (a, "s3", "")]
    assert tstore.mark(a, "ep2") == 2  # the reused id's record is acknowledged, not stored again
    # and the same id twice in one batch is stored once
    upload(tstore, idle, "ep", review("dup", T0), review("dup", T0 + timedelta(seconds=5)))
    assert listed(reviews, device_id=idle) == [(idle, "dup", "")]


def test_delete_range_removes_one_devices_records_in_the_range_and_nothing_else(store: Store) -> None:
    tstore = TelemetryStore(store.db)
    a, _ = enroll(store, "berlin", name="cam-a")
    b, _ = enroll(store, "berlin", name="cam-b")
    inside, later = T0 + timedelta(minutes=5), T0 + timedelta(hours=2)
    for device in (a, b):
        upload(
            tstore,
            device,
            "ep",
            window(T0),
            window(inside),
            window(later),
            gap_event(f"{device}-g1", inside),
            gap_event(f"{device}-g2", later),
            review("r1", inside),
            review("r2", later),
        )

    def counts() -> dict[str, list[int]]:
        with store.db.read() as conn:
            return {
                table.name: [
                    int(conn.execute(sa.select(sa.func.count()).where(table.c.device_id == d)).scalar() or 0)
                    for d in (a, b)
                ]
                for table in (t.telemetry_windows, t.telemetry_events, t.review_samples)
            }

    before = counts()
    assert before == {"telemetry_windows": [3, 3], "telemetry_events": [2, 2], "review_samples": [2, 2]}
    with pytest.raises(ValueError, match="since < until"):
        tstore.delete_range(a, inside, inside)
    with pytest.raises(NotFound, match="dev_nope"):
        tstore.delete_range("dev_nope", T0, later)
    assert counts() == before

    deleted = tstore.delete_range(a, T0, T0 + timedelta(hours=1))  # [since, until): T0 in, later out
    assert deleted == {"telemetry_windows": 2, "telemetry_events": 1, "review_samples": 1}
    assert counts() == {"telemetry_windows": [1, 3], "telemetry_events": [1, 2], "review_samples": [1, 2]}
    assert [w.window_start for w in tstore.windows(since=None, until=None, device_id=a)] == [later]
    assert tstore.mark(a, "ep") == 7  # delivery marks are kept: the device is not asked to send again
    # again: nothing left in the range
    assert tstore.delete_range(a, T0, T0 + timedelta(hours=1)) == dict.fromkeys(deleted, 0)


def test_0006_upgrades_a_0005_database_keeping_its_review_samples(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            upgrade_to(conn, "0005")
        with engine.begin() as conn:
            for device_id, site in (("dev_a", "berlin"), ("dev_b", "paris")):
                conn.execute(
                    sa.text(
                        "INSERT INTO devices (id, name, site, tags_json, hardware_class, facts_json, "
                        "credential_sha256, enrolled_at, reported_json, health) VALUES (:id, :id, :site, '{}', "
                        "'x86', '{}', :id, :t, '{}', 'unknown')"
                    ),
                    {"id": device_id, "site": site, "t": datetime(2025, 1, 1)},
                )
            # dev_a stored "s1" twice (an older controller allowed it), dev_b has "s1" once
            for row_id, device_id, seq, sample_id, label in (
                (1, "dev_a", 1, "s1", "fp"),
                (2, "dev_a", 2, "s1", None),
                (3, "dev_b", 1, "s1", "tp"),
                (4, "dev_a", 3, "s2", None),
            ):
                conn.execute(
                    sa.text(
                        "INSERT INTO review_samples (id, device_id, epoch, seq, sample_id, site, bundle_digest, "
                        "captured_at, reason, top_confidence, jpeg, results_json, label, size_bytes, received_at) "
                        "VALUES (:id, :device, 'ep', :seq, :sample, 'berlin', :bundle, :t, 'sampled', 0.5, :jpeg, "
                        "'[]', :label, 10, :t)"
                    ),
                    {
                        "id": row_id,
                        "device": device_id,
                        "seq": seq,
                        "sample": sample_id,
                        "bundle": BUNDLE,
                        "t": datetime(2025, 1, 1),
                        "jpeg": b"\xff\xd8",
                        "label": label,
                    },
                )
    finally:
        engine.dispose()
    with Store.open(store_url) as migrated:
        reviews = ReviewSampleStore(migrated.db)
        assert listed(reviews) == [
            ("dev_a", "s1", "fp"),
            ("dev_a", "s1~2", ""),
            ("dev_a", "s2", ""),
            ("dev_b", "s1", "tp"),
        ]
        # the oldest sample kept its id and label; every sample is addressable by device + id
        assert reviews.label("s1~2", "tp", "alice", T0, device_id="dev_a").label == "tp"
        assert reviews.label("s1", "tp", "alice", T0, device_id="dev_a").label == "tp"
        assert listed(reviews, device_id="dev_b") == [("dev_b", "s1", "tp")]
        with pytest.raises(sa.exc.IntegrityError), migrated.db.transaction() as conn:
            conn.execute(
                sa.text("UPDATE review_samples SET sample_id = 's2' WHERE device_id = 'dev_a' AND sample_id = 's1'")
            )


def test_a_device_name_two_sites_use_is_refused_not_guessed(store: Store) -> None:
    """What DeleteTelemetry, QueryTelemetry and the review calls resolve a device reference with."""
    tstore = TelemetryStore(store.db)
    berlin, _ = enroll(store, "berlin", name="cam-x")
    paris, _ = enroll(store, "paris", name="cam-x")
    with pytest.raises(InvalidArgument) as info:
        tstore.resolve_device("cam-x")
    sites = {berlin: "berlin", paris: "paris"}
    listed_ids = ", ".join(f"{d} (site '{sites[d]}')" for d in sorted(sites))
    assert f"'cam-x' is ambiguous: {listed_ids}; name the device by its id" in str(info.value)
    assert (tstore.resolve_device(berlin), tstore.resolve_device(paris)) == (berlin, paris)
    only, _ = enroll(store, "paris", name="cam-y")
    assert tstore.resolve_device("cam-y") == only
