"""Several controller replicas (separate ``Store`` objects, separate engines) on ONE PostgreSQL database.

SQLite serialises every writer with ``BEGIN IMMEDIATE``; these tests prove the store keeps the same
guarantees where replicas really run concurrently: one reconciler lease holder, token use limits, one
migration, check-then-insert writes (rollout overlap check, bundle publish, bootstrap admin) and the
optimistic rollout version. Each race starts its threads on a barrier so they overlap.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import pytest

from edgefleet_controller.store import Store, head_revision
from edgefleet_controller.store.errors import Conflict, TokenExhausted
from edgefleet_controller.store.leases import LeaseStore
from edgefleet_controller.store.records import ArtifactRef
from edgefleet_controller.store.rollouts import RolloutRow, RolloutStore
from edgefleet_testing.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
REPLICAS = 6
JOIN_TIMEOUT_S = 60

R = TypeVar("R")


def race(calls: Sequence[Callable[[], R]]) -> list[R | BaseException]:
    """Run every call in its own thread, released together; each result or the exception it raised."""
    barrier = threading.Barrier(len(calls))
    results: dict[int, R | BaseException] = {}

    def run(i: int) -> None:
        barrier.wait(timeout=JOIN_TIMEOUT_S)
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
        assert not thread.is_alive(), "a racing call did not finish: the store deadlocked or waits unbounded"
    return [results[i] for i in range(len(calls))]


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[list[Store]]:  # noqa: F811
    opened = [Store.open(postgres_url) for _ in range(REPLICAS)]
    yield opened
    for store in opened:
        store.close()


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_exactly_one_replica_wins_the_reconciler_lease_each_round(replicas: list[Store]) -> None:
    leases = [LeaseStore(store.db) for store in replicas]
    now = T0
    for _round in range(5):
        won = race([partial(r.acquire, "reconciler", f"replica-{i}", 30, now) for i, r in enumerate(leases)])
        assert all(isinstance(w, bool) for w in won), won
        assert won.count(True) == 1, won
        winner = f"replica-{won.index(True)}"
        assert leases[0].holder("reconciler", now) == winner
        # the holder renews, everyone else keeps losing while it is valid
        assert leases[won.index(True)].acquire("reconciler", winner, 30, now + timedelta(seconds=10))
        now += timedelta(seconds=41)  # expired: the next round is open to all


def test_enrollments_through_several_replicas_never_exceed_max_uses(replicas: list[Store]) -> None:
    _, secret = replicas[0].enrollment_tokens.create("berlin", 3600, T0, max_uses=5)
    attempts = [
        partial(replicas[i % REPLICAS].devices.enroll, secret, f"cam-{i}", "x86-avx2", {}, {}, T0)
        for i in range(2 * REPLICAS)
    ]
    outcomes = race(attempts)
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 5
    assert all(isinstance(o, TokenExhausted) for o in outcomes if isinstance(o, BaseException)), outcomes
    assert len(replicas[1].devices.page()[0]) == 5
    assert replicas[2].enrollment_tokens.get(replicas[0].enrollment_tokens.all()[0].id).uses == 5


def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:  # noqa: F811
    opened = race([lambda: Store.open(postgres_url) for _ in range(REPLICAS)])
    try:
        assert not [o for o in opened if isinstance(o, BaseException)], opened
        assert {o.db.schema_revision() for o in opened if isinstance(o, Store)} == {head_revision()}
    finally:
        for store in opened:
            if isinstance(store, Store):
                store.close()


def test_overlapping_rollouts_created_on_two_replicas_admit_one(replicas: list[Store]) -> None:
    digest, _ = replicas[0].bundles.put(
        b'{"name":"det"}', b"sig", name="det", version="1.0.0", key_id="k", artifacts=[], now=T0
    )

    def refuse_overlap(unfinished: Sequence[RolloutRow]) -> None:
        if unfinished:
            raise Conflict(f"rollout {unfinished[0].id} is still running on the same devices")
        time.sleep(0.2)  # the other replica reads the rollouts while this one has not committed yet

    def create(store: Store, i: int) -> RolloutRow:
        return RolloutStore(store.db, store.desired).insert(
            rollout_id=f"ro-{i}",
            name=f"rollout {i}",
            bundle_digest=digest.digest,
            spec={},
            state={},
            phase="pending",
            now=T0,
            check=refuse_overlap,
        )

    outcomes = race([partial(create, s, i) for i, s in enumerate(replicas[:3])])
    assert sum(isinstance(o, RolloutRow) for o in outcomes) == 1, outcomes
    assert all(isinstance(o, (RolloutRow, Conflict)) for o in outcomes), outcomes
    assert len(RolloutStore(replicas[0].db, replicas[0].desired).unfinished()) == 1


def test_the_same_bundle_published_through_every_replica_is_stored_once(replicas: list[Store]) -> None:
    refs = [ArtifactRef("model", sha("model"), 1234), ArtifactRef("golden", sha("golden"), 10)]
    outcomes = race(
        [
            partial(s.bundles.put, b'{"b":1}', b"sig", name="det", version="2.0.0", key_id="k", artifacts=refs, now=T0)
            for s in replicas
        ]
    )
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    created = [o[1] for o in outcomes if isinstance(o, tuple)]
    assert created.count(True) == 1
    assert {o[0].digest for o in outcomes if isinstance(o, tuple)} == {sha('{"b":1}')}
    assert len(replicas[0].bundles.all()) == 1


def test_replicas_starting_together_create_one_bootstrap_admin(replicas: list[Store]) -> None:
    secrets = race([partial(s.operator_tokens.ensure_bootstrap_admin, T0) for s in replicas])
    assert not [o for o in secrets if isinstance(o, BaseException)], secrets
    assert sum(o is not None for o in secrets) == 1
    assert len(replicas[0].operator_tokens.all()) == 1


def test_only_one_replica_persists_a_plan_from_the_same_version(replicas: list[Store]) -> None:
    digest, _ = replicas[0].bundles.put(
        b'{"name":"det"}', b"sig", name="det", version="1.0.0", key_id="k", artifacts=[], now=T0
    )
    RolloutStore(replicas[0].db, replicas[0].desired).insert(
        rollout_id="ro-1", name="r", bundle_digest=digest.digest, spec={}, state={}, phase="pending", now=T0
    )

    def persist(store: Store, i: int) -> int:
        return RolloutStore(store.db, store.desired).persist_plan(
            "ro-1", read_version=1, state={"by": i}, phase="running", now=T0, events=[("rollout.planned", {"by": i})]
        )

    outcomes = race([partial(persist, s, i) for i, s in enumerate(replicas)])
    assert outcomes.count(2) == 1, outcomes
    assert all(isinstance(o, Conflict) for o in outcomes if o != 2), outcomes
    row = RolloutStore(replicas[1].db, replicas[1].desired).get("ro-1")
    assert row.version == 2 and row.state == {"by": outcomes.index(2)}
    assert [e.event for e in RolloutStore(replicas[2].db, replicas[2].desired).events("ro-1")] == [
        "rollout.created",
        "rollout.planned",
    ]


def test_desired_state_changes_from_every_replica_are_all_counted(replicas: list[Store]) -> None:
    _, secret = replicas[0].enrollment_tokens.create("berlin", 3600, T0)
    devices = [replicas[0].devices.enroll(secret, f"cam-{i}", "x86-avx2", {}, {}, T0)[0].id for i in range(20)]
    before = replicas[0].desired.change_counter()

    def assign(store: Store, i: int) -> dict[str, int]:
        # overlapping device sets in different orders: row locks must not deadlock
        ids = devices[i:] + devices[:i]
        return store.desired.assign(ids, config_digest=sha(f"config-{i}"), reason=f"replica {i}", now=T0)

    outcomes: list[Any] = race([partial(assign, s, i) for i, s in enumerate(replicas)])
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    # every call changed every device: each bumped the counter once and each device's revision REPLICAS times
    assert replicas[0].desired.change_counter() == before + REPLICAS
    assert {replicas[1].desired.get(d).revision for d in devices} == {REPLICAS}
    changes = replicas[2].desired.changes_since(before)
    assert len(changes) == len(devices)
    assert len({c.config_digest for c in changes}) == 1  # the last writer's config, on every device
