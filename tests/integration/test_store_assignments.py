"""Migration 0004 and what it stores — assignment ids on desired state, bundle failures, staged config
revisions — against a real SQLite file and a real PostgreSQL server (the ``store`` fixture in conftest.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from edgefleet_controller.store import Store, head_revision
from edgefleet_controller.store.bundle_failures import BundleFailure, BundleFailureStore
from edgefleet_controller.store.errors import Conflict, InvalidArgument
from edgefleet_controller.store.records import ArtifactRef, ConfigDocInput
from edgefleet_controller.store.rollouts import RolloutStore
from tests.integration.store_cases import T0, sha, upgrade_to

pytestmark = pytest.mark.integration


def enroll(store: Store, site: str = "berlin", name: str = "cam") -> str:
    _, secret = store.enrollment_tokens.create(site, 3600, T0)
    device, _ = store.devices.enroll(secret, name, "x86-avx2", {}, {}, T0)
    return device.id


def publish(store: Store, version: str = "1.0.0") -> str:
    record, _ = store.bundles.put(
        f'{{"name":"d","version":"{version}"}}'.encode(),
        b"sig",
        name="d",
        version=version,
        key_id="k",
        artifacts=[ArtifactRef("model", sha(version), 10)],
        now=T0,
    )
    return record.digest


def test_0004_upgrades_a_0003_database_keeping_its_rows(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            upgrade_to(conn, "0003")
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO devices (id, name, site, tags_json, hardware_class, facts_json, credential_sha256, "
                    "enrolled_at, reported_json, health) VALUES ('dev_old', 'old', 'berlin', '{}', 'x86', '{}', "
                    "'00', :t, '{}', 'unknown')"
                ),
                {"t": datetime(2025, 1, 1)},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO desired_state (device_id, revision, change_seq, updated_at, reason) "
                    "VALUES ('dev_old', 3, 0, :t, 'set-bundle')"
                ),
                {"t": datetime(2025, 1, 1)},
            )
    finally:
        engine.dispose()
    with Store.open(store_url) as migrated:
        assert migrated.db.schema_revision() == head_revision()
        desired = migrated.desired.get("dev_old")
        assert (desired.revision, desired.reason, desired.assignment_id) == (3, "set-bundle", None)
        tables = set(sa.inspect(migrated.db.engine).get_table_names())
        assert {"bundle_failures", "staged_configs"} <= tables
        # the next change mints the device's first assignment
        migrated.desired.assign(["dev_old"], config_digest=sha("c"), reason="config", now=T0)
        assert (migrated.desired.get("dev_old").assignment_id or "").startswith("asg_")


def test_every_desired_change_carries_a_new_assignment_id(store: Store) -> None:
    a, b = enroll(store), enroll(store, name="cam2")
    digest = publish(store)
    store.desired.assign([a, b], bundle_digest=digest, reason="r", now=T0)
    first = {d: store.desired.get(d).assignment_id for d in (a, b)}
    assert all(v and v.startswith("asg_") for v in first.values()) and first[a] != first[b]
    # a no-op keeps the assignment; an explicit one always changes the row, even to the same target
    store.desired.assign([a], bundle_digest=digest, reason="again", now=T0)
    assert store.desired.get(a).assignment_id == first[a]
    revisions = store.desired.assign(
        [a], bundle_digest=digest, reason="rollout", now=T0, rollout_id="ro_1", assignment_ids={a: "ro_1/a/w1"}
    )
    desired = store.desired.get(a)
    assert revisions == {a: 2} and (desired.assignment_id, desired.rollout_id) == ("ro_1/a/w1", "ro_1")
    # reassign: an operator retrying the same bundle gives every device a fresh assignment
    store.desired.assign([a, b], bundle_digest=digest, reason="retry", now=T0, reassign=True)
    assert store.desired.get(a).assignment_id not in (None, "ro_1/a/w1")
    assert store.desired.get(b).revision == 2
    with pytest.raises(InvalidArgument, match="assignment_id of"):
        store.desired.assign([a], bundle_digest=digest, reason="r", now=T0, assignment_ids={a: ""})


def test_bundle_failures_are_recorded_once_per_assignment(store: Store) -> None:
    failures = BundleFailureStore(store.db)
    digest = publish(store)
    failure = BundleFailure(digest, "dev_1", "lab-1", "ro_1", "ro_1/dev_1/w1", "canary_fail", "drift " * 200, T0)
    assert failures.record(failure)
    assert not failures.record(failure)  # the same report seen again
    later = BundleFailure(digest, "dev_1", "lab-1", None, "asg_1", "rolled_back", "crashed", T0 + timedelta(1))
    assert failures.record(later)
    found = failures.of_bundles([digest])
    assert [(f.kind, f.rollout_id) for f in found] == [("canary_fail", "ro_1"), ("rolled_back", None)]
    assert len(found[0].summary) == 500  # bounded
    assert failures.of_bundles([sha("other")]) == []
    with pytest.raises(InvalidArgument, match="needs the assignment id"):
        failures.record(BundleFailure(digest, "d", "n", None, "", "canary_fail", "", T0))


def test_staged_configs_are_claimed_by_one_rollout(store: Store) -> None:
    rollouts = RolloutStore(store.db, store.desired)
    doc = ConfigDocInput("SiteConfig", "lab", "lab", '{"kind":"SiteConfig"}', sha("v1"))
    assert rollouts.stage_configs([doc], "alice", T0) == ["staged"]
    assert rollouts.stage_configs([doc], "alice", T0) == ["unchanged"]
    assert rollouts.stage_configs([doc._replace(content_digest=sha("v2"))], "bob", T0) == ["restaged"]

    def insert(rollout_id: str) -> None:
        rollouts.insert(
            rollout_id=rollout_id,
            name=rollout_id,
            bundle_digest="",
            spec={},
            state={},
            phase="running",
            now=T0,
            claim_config=("SiteConfig", "lab"),
        )

    insert("ro_a")
    staged = rollouts.staged_config("SiteConfig", "lab")
    assert staged is not None and (staged.rollout_id, staged.content_digest, staged.ref) == (
        "ro_a",
        sha("v2"),
        "SiteConfig/lab",
    )
    assert rollouts.bundles_held("ro_a") == {}  # a config-only rollout holds no bundle
    with pytest.raises(Conflict, match="belongs to unfinished rollout ro_a"):
        insert("ro_b")
    with pytest.raises(Conflict, match="staged for unfinished rollout ro_a"):
        rollouts.stage_configs([doc._replace(content_digest=sha("v3"))], "carol", T0)
    with pytest.raises(Conflict, match="has no staged revision"):
        rollouts.insert(
            rollout_id="ro_c",
            name="c",
            bundle_digest="",
            spec={},
            state={},
            phase="running",
            now=T0,
            claim_config=("SiteConfig", "nope"),
        )
    assert not rollouts.drop_staged("SiteConfig", "lab", "ro_other")
    assert rollouts.drop_staged("SiteConfig", "lab", "ro_a")
    assert rollouts.staged_configs() == []
