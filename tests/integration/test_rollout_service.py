"""The rollout service and reconciler against a real store (SQLite and PostgreSQL: the conftest's ``store``) and the
real planner (no gRPC).

Devices are enrolled in the store and "report" by writing their reported state with ``record_report``,
exactly as the Sync RPC does; time moves by hand.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.manifest import parse_manifests
from edgefleet.v1 import fleet_pb2
from edgefleet_controller import errors as cerr
from edgefleet_controller.hub import SyncHub
from edgefleet_controller.rollout.profiles import class_p95
from edgefleet_controller.rollout.reconciler import ReconcilerSettings
from edgefleet_controller.rollout.service import RolloutService
from edgefleet_controller.store import Store
from edgefleet_controller.store.errors import StillReferenced
from edgefleet_controller.store.leases import LeaseStore
from edgefleet_controller.store.records import ArtifactRef
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_testing.controller import write_sample_spec
from edgefleet_testing.fakes import MovableClock

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PHASE = fleet_pb2.RolloutPhase


@pytest.fixture(scope="module")
def base_manifest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("bundle")
    return build_bundle(write_sample_spec(work), work / "out", golden_count=1).to_dict()


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock(T0)


@pytest.fixture
def service(store: Store, clock: MovableClock) -> RolloutService:
    return RolloutService(store, SyncHub(), clock, reconciler=ReconcilerSettings(holder="replica-1"), watch_poll_s=0.05)


def publish(
    store: Store, base: dict[str, Any], name: str = "classifier", version: str = "1.0.0", sla: float = 50
) -> str:
    doc = {**base, "name": name, "version": version, "latency": {"sla_ms": sla, "percentile": 95.0}}
    manifest = BundleManifest.from_dict(doc)
    refs = [ArtifactRef(role, a.digest, a.size) for role, a in manifest.artifacts.items()]
    record, _ = store.bundles.put(
        manifest.to_json_bytes(), b"sig", name=name, version=version, key_id="pub", artifacts=refs, now=T0
    )
    return record.digest


def enroll(
    store: Store, site: str, n: int, hardware: str = "x86-avx2", tags: dict[str, str] | None = None
) -> list[str]:
    _, secret = store.enrollment_tokens.create(site, 3600, T0)
    return [store.devices.enroll(secret, f"{site}-{i}", hardware, {}, tags or {}, T0)[0].id for i in range(n)]


def report(
    store: Store,
    device_id: str,
    now: datetime,
    running: str | None,
    update_state: str = "COMMITTED",
    candidate: str = "",
    verdict: dict[str, Any] | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """Write a report as the Sync RPC does. Like the edge runtime, the device echoes the assignment of its
    current desired state (``echo``), with its update state and its verdict."""
    desired = store.desired.get(device_id)
    state: dict[str, Any] = {
        "update_state": f"UPDATE_STATE_{update_state}",
        "applied_revision": str(desired.revision),
    }
    assignment = desired.assignment_id if echo and desired.assignment_id else ""
    if assignment:
        state["assignment_id"] = assignment
    if running:
        state["running_bundle_digest"] = running
    if candidate:
        state["candidate_bundle_digest"] = candidate
    if verdict:
        state["last_verdict"] = {**verdict, "assignment_id": assignment} if assignment else verdict
    store.devices.record_report(
        device_id, {"running_bundle": running, "health": "serving", "slots": {}, "state": state}, now
    )
    return state


def assigned_to(store: Store, ids: list[str], digest: str) -> list[str]:
    return sorted(d for d in ids if store.desired.get(d).bundle_digest == digest)


def request(bundle: str, sites: list[str], waves: list[str], **kwargs: Any) -> fleet_pb2.CreateRolloutRequest:
    gates = kwargs.pop("gates", {})
    return fleet_pb2.CreateRolloutRequest(
        name="test",
        bundle=bundle,
        selector=fleet_pb2.RolloutSelector(sites=sites),
        strategy=fleet_pb2.RolloutStrategy(waves=waves, bake_s=kwargs.pop("bake_s", 0)),
        gates=fleet_pb2.RolloutGates(**gates),
        **kwargs,
    )


async def test_waves_advance_with_reports_bake_and_complete(
    store: Store, service: RolloutService, clock: MovableClock, base_manifest: dict[str, Any]
) -> None:
    v1 = publish(store, base_manifest)
    v2 = publish(store, base_manifest, version="2.0.0")
    ids = enroll(store, "berlin", 4)
    for d in ids:
        report(store, d, T0, v1)

    ro = await service.create(request("classifier@2.0.0", ["berlin"], ["1", "50%"], bake_s=60))
    assert ro.id.startswith("ro_") and ro.phase == PHASE.ROLLOUT_PHASE_RUNNING and ro.waves_total == 3
    wave1 = assigned_to(store, ids, v2)
    assert len(wave1) == 1
    desired = store.desired.get(wave1[0])
    assert (desired.rollout_id, desired.reason) == (ro.id, f"rollout {ro.id} wave 1")
    assert {s.status for s in ro.devices} == {"assigned", "pending"}

    await service.reconcile_once(clock.advance(5))
    assert assigned_to(store, ids, v2) == wave1  # nothing more until the canary commits

    report(store, wave1[0], clock.advance(1), v2)
    await service.reconcile_once(clock())  # settled: bake clock starts
    assert len(assigned_to(store, ids, v2)) == 1
    await service.reconcile_once(clock.advance(61))
    wave2 = assigned_to(store, ids, v2)
    assert len(wave2) == 2
    assert store.desired.get((set(wave2) - set(wave1)).pop()).reason == f"rollout {ro.id} wave 2"

    for d in wave2:
        report(store, d, clock.advance(1), v2)
    await service.reconcile_once(clock())
    await service.reconcile_once(clock.advance(61))
    assert len(assigned_to(store, ids, v2)) == 4
    for d in ids:
        report(store, d, clock.advance(1), v2)
    await service.reconcile_once(clock())
    done = await service.get(ro.id)
    assert done.phase == PHASE.ROLLOUT_PHASE_COMPLETED
    assert {s.status for s in done.devices} == {"succeeded"}
    assert all(store.desired.get(d).revision == 1 for d in ids)  # each device assigned exactly once
    events = [e.event for e in service.rollouts.events(ro.id)]
    assert events.count("rollout.wave_started") == 3 and events[-1] in ("rollout.completed", "rollout.phase_set")
    assert service.rollouts.bundles_held(ro.id) == {}  # a finished rollout holds no bundle


async def test_failing_canary_aborts_and_rolls_back(
    store: Store, service: RolloutService, clock: MovableClock, base_manifest: dict[str, Any]
) -> None:
    v1 = publish(store, base_manifest)
    v2 = publish(store, base_manifest, version="2.0.0")
    ids = enroll(store, "berlin", 4)
    for d in ids:
        report(store, d, T0, v1)
    ro = await service.create(request(v2, ["berlin"], ["2"]))
    good, bad = assigned_to(store, ids, v2)
    report(store, good, clock.advance(1), v2)
    verdict = {"outcome": "OUTCOME_FAIL", "candidate_digest": v2, "reasons": ["p95 61.0 ms > budget 40.0 ms"]}
    report(store, bad, clock(), v1, "ROLLED_BACK", candidate=v2, verdict=verdict)

    await service.reconcile_once(clock())
    rolling = await service.get(ro.id)
    assert rolling.phase == PHASE.ROLLOUT_PHASE_ROLLING_BACK
    assert "wave 1 (canary): 1 of 2 devices failed" in rolling.message and bad in rolling.message
    for d in (good, bad):
        desired = store.desired.get(d)
        assert (desired.bundle_digest, desired.reason) == (v1, f"rollback of {ro.id}")
    assert assigned_to(store, ids, v2) == []  # nothing else was ever assigned
    by_id = {s.device_id: s for s in rolling.devices}
    assert by_id[good].status == "reverting" and by_id[bad].status == "rolled_back"
    # the previous bundle is needed to go back: it cannot be deleted now
    with pytest.raises(StillReferenced, match=f"rollout {ro.id}"):
        store.bundles.delete(v1)

    report(store, good, clock.advance(1), v1)
    await service.reconcile_once(clock())
    assert (await service.get(ro.id)).phase == PHASE.ROLLOUT_PHASE_ROLLED_BACK
    assert all(store.desired.get(d).revision == 2 for d in (good, bad))  # assigned once, reverted once


async def test_halt_leaves_devices_where_they_are(
    store: Store, service: RolloutService, clock: MovableClock, base_manifest: dict[str, Any]
) -> None:
    v1 = publish(store, base_manifest)
    v2 = publish(store, base_manifest, version="2.0.0")
    ids = enroll(store, "berlin", 3)
    for d in ids:
        report(store, d, T0, v1)
    ro = await service.create(request(v2, ["berlin"], ["1"], on_abort="halt"))
    (canary,) = assigned_to(store, ids, v2)
    report(store, canary, clock.advance(1), v1, "FAILED", candidate=v2)
    await service.reconcile_once(clock())
    halted = await service.get(ro.id)
    assert halted.phase == PHASE.ROLLOUT_PHASE_ABORTED
    assert store.desired.get(canary).bundle_digest == v2  # halt: not reverted


async def test_pause_resume_approve(
    store: Store, service: RolloutService, clock: MovableClock, base_manifest: dict[str, Any]
) -> None:
    v1 = publish(store, base_manifest)
    v2 = publish(store, base_manifest, version="2.0.0")
    ids = enroll(store, "berlin", 3)
    for d in ids:
        report(store, d, T0, v1)
    ro = await service.create(request(v2, ["berlin"], ["1"], gates={"manual_approval": True}))
    with pytest.raises(cerr.FailedPrecondition, match="approve applies only to a rollout that is waiting_approval"):
        await service.approve(ro.id)
    paused = await service.pause(ro.id, "lunch")
    assert paused.phase == PHASE.ROLLOUT_PHASE_PAUSED and "lunch" in paused.message
    (canary,) = assigned_to(store, ids, v2)
    report(store, canary, clock.advance(1), v2)
    await service.reconcile_once(clock())
    assert (await service.get(ro.id)).phase == PHASE.ROLLOUT_PHASE_PAUSED  # paused: no progress
    assert (await service.resume(ro.id)).phase == PHASE.ROLLOUT_PHASE_WAITING_APPROVAL
    assert len(assigned_to(store, ids, v2)) == 1
    approved = await service.approve(ro.id, "canary looks fine")
    assert approved.phase == PHASE.ROLLOUT_PHASE_RUNNING and approved.wave == 2
    assert len(assigned_to(store, ids, v2)) == 3
    aborted = await service.abort(ro.id, "changed my mind")
    assert aborted.phase == PHASE.ROLLOUT_PHASE_ROLLING_BACK
    with pytest.raises(cerr.FailedPrecondition, match="is rolling_back; abort applies only"):
        await service.abort(ro.id)
    with pytest.raises(cerr.NotFoundError, match="ro_nope"):
        await service.pause("ro_nope")


async def test_admission_refuses_with_arithmetic_unless_forced(
    store: Store, service: RolloutService, base_manifest: dict[str, Any]
) -> None:
    v2 = publish(store, base_manifest, version="2.0.0", sla=50)
    enroll(store, "berlin", 2, hardware="rpi5")
    enroll(store, "paris", 1, hardware="x86-avx2")
    service.profiles.record(hardware_class="rpi5", bundle_digest=v2, p95_ms=45.0, measured_at=T0)
    service.profiles.record(hardware_class="x86-avx2", bundle_digest=v2, p95_ms=12.0, measured_at=T0)
    assert class_p95(service.profiles.measurements([v2])) == {"rpi5": 45.0, "x86-avx2": 12.0}
    with pytest.raises(cerr.FailedPrecondition) as refused:
        await service.create(request(v2, ["berlin", "paris"], ["1"]))
    assert "rpi5: p95 45.0 ms > 50 ms × (1 − 0.20) = 40.0 ms: refused" in str(refused.value)
    assert "x86-avx2: p95 12.0 ms <= 50 ms × (1 − 0.20) = 40.0 ms: admitted" in str(refused.value)
    assert (await service.list()).rollouts == []  # a refused create stores nothing

    forced = await service.create(request(v2, ["berlin", "paris"], ["1"], force=True))
    assert forced.forced
    assert any("refused (forced)" in line for line in forced.admission)


async def test_create_validates_target_selector_waves_and_overlap(
    store: Store, service: RolloutService, base_manifest: dict[str, Any]
) -> None:
    v2 = publish(store, base_manifest, version="2.0.0")
    enroll(store, "berlin", 2, tags={"line": "3"})
    with pytest.raises(cerr.NotFoundError, match=r"'classifier@9\.9\.9' is not published"):
        await service.create(request("classifier@9.9.9", ["berlin"], ["1"]))
    with pytest.raises(cerr.InvalidArgument, match="selector must name at least one site or tag"):
        await service.create(request(v2, [], ["1"]))
    with pytest.raises(cerr.FailedPrecondition, match=r"matches no enrolled device \(enrolled sites: berlin\)"):
        await service.create(request(v2, ["tokyo"], ["1"]))
    with pytest.raises(cerr.InvalidArgument, match=r"strategy.waves\[1\] must be a device count >= 1"):
        await service.create(request(v2, ["berlin"], ["1", "150%"]))
    with pytest.raises(cerr.InvalidArgument, match="on_abort must be 'rollback' or 'halt', got 'explode'"):
        await service.create(request(v2, ["berlin"], ["1"], on_abort="explode"))
    first = await service.create(request(v2, ["berlin"], ["1"]))
    overlapping = fleet_pb2.CreateRolloutRequest(
        bundle=v2, selector=fleet_pb2.RolloutSelector(tags={"line": "3"}), strategy=fleet_pb2.RolloutStrategy()
    )
    with pytest.raises(cerr.FailedPrecondition, match=f"already belong to unfinished rollout {first.id}"):
        await service.create(overlapping)


async def test_create_from_the_example_manifest(
    store: Store, service: RolloutService, base_manifest: dict[str, Any]
) -> None:
    digest = publish(store, base_manifest, name="shelf-classifier", version="2.0.0")
    enroll(store, "warehouse-a", 3)
    enroll(store, "farm-b", 2)
    (doc,) = parse_manifests((REPO / "manifests" / "rollouts" / "classifier-v2.yaml").read_text(), source="v2.yaml")
    ro = await service.create_from_manifest(doc)
    assert (ro.name, ro.bundle_digest, ro.waves_total) == ("classifier-v2", digest, 4)
    assert list(ro.strategy.waves) == ["1", "10%", "50%", "100%"] and ro.gates.max_failed_ratio == 0.05
    assert sum(1 for s in ro.devices if s.wave == 1) == 2  # one canary per site


async def test_restart_mid_rollout_never_assigns_twice(
    store: Store, clock: MovableClock, base_manifest: dict[str, Any]
) -> None:
    v1 = publish(store, base_manifest)
    v2 = publish(store, base_manifest, version="2.0.0")
    ids = enroll(store, "berlin", 4)
    for d in ids:
        report(store, d, T0, v1)
    first = RolloutService(store, SyncHub(), clock, reconciler=ReconcilerSettings(holder="before-crash"))
    ro = await first.create(request(v2, ["berlin"], ["1", "50%"]))
    (canary,) = assigned_to(store, ids, v2)
    revision = store.desired.get(canary).revision
    del first  # "crash": no stop(), the lease is left to expire

    second = RolloutService(store, SyncHub(), clock, reconciler=ReconcilerSettings(holder="after-restart"))
    assert not (await second.reconcile_once(clock.advance(1))).leader  # the dead holder's lease still runs
    report_after = await second.reconcile_once(clock.advance(20))
    assert report_after.leader
    assert assigned_to(store, ids, v2) == [canary] and store.desired.get(canary).revision == revision

    report(store, canary, clock.advance(1), v2)
    await second.reconcile_once(clock())
    assert len(assigned_to(store, ids, v2)) == 2
    for d in assigned_to(store, ids, v2):
        report(store, d, clock.advance(1), v2)
    await second.reconcile_once(clock())
    for d in ids:
        report(store, d, clock.advance(1), v2)
    await second.reconcile_once(clock())
    assert (await second.get(ro.id)).phase == PHASE.ROLLOUT_PHASE_COMPLETED
    assert [store.desired.get(d).revision for d in ids] == [1, 1, 1, 1]


async def test_only_one_reconciler_acts_per_lease(
    store: Store, clock: MovableClock, base_manifest: dict[str, Any]
) -> None:
    leases = LeaseStore(store.db)
    assert leases.acquire("l", "one", 10, T0)
    assert not leases.acquire("l", "two", 10, T0 + timedelta(seconds=5))
    assert leases.acquire("l", "one", 10, T0 + timedelta(seconds=9))  # renewal
    assert not leases.acquire("l", "two", 10, T0 + timedelta(seconds=18))
    assert leases.acquire("l", "two", 10, T0 + timedelta(seconds=20))  # expired: taken over
    assert not leases.acquire("l", "one", 10, T0 + timedelta(seconds=21))
    leases.release("l", "two", T0 + timedelta(seconds=22))
    assert leases.holder("l", T0 + timedelta(seconds=22)) is None

    winners: list[str] = []
    barrier = threading.Barrier(6)

    def race(holder: str) -> None:
        barrier.wait()
        if LeaseStore(store.db).acquire("race", holder, 10, T0):
            winners.append(holder)

    threads = [threading.Thread(target=race, args=(f"h{i}",)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(winners) == 1

    publish(store, base_manifest)
    a = RolloutService(store, SyncHub(), clock, reconciler=ReconcilerSettings(holder="a"))
    b = RolloutService(store, SyncHub(), clock, reconciler=ReconcilerSettings(holder="b"))
    leaders = [(await a.reconcile_once()).leader, (await b.reconcile_once()).leader]
    assert leaders == [True, False]
    await a.stop()  # releases: b takes over without waiting for expiry
    assert (await b.reconcile_once()).leader


async def test_rollout_blocks_deleting_its_target_bundle(
    store: Store, service: RolloutService, base_manifest: dict[str, Any]
) -> None:
    v2 = publish(store, base_manifest, version="2.0.0")
    v3 = publish(store, base_manifest, version="3.0.0")
    enroll(store, "berlin", 2)
    enroll(store, "paris", 1)
    ro = await service.create(request(v3, ["berlin"], ["1"], gates={"manual_approval": True}))
    await service.pause(ro.id)
    with pytest.raises(StillReferenced, match=rf"rollout {ro.id} \(target\)"):
        store.bundles.delete(v3)
    assert store.bundles.delete(v2) is not None  # unrelated bundles still delete


async def test_watch_streams_until_terminal(
    store: Store, service: RolloutService, clock: MovableClock, base_manifest: dict[str, Any]
) -> None:
    v2 = publish(store, base_manifest, version="2.0.0")
    (device,) = enroll(store, "berlin", 1)
    ro = await service.create(request(v2, ["berlin"], ["1"]))
    seen: list[int] = []
    async for update in service.watch(ro.id):
        seen.append(update.phase)
        if len(seen) == 1:
            report(store, device, clock.advance(1), v2)
            await service.reconcile_once(clock())
    assert seen[0] == PHASE.ROLLOUT_PHASE_RUNNING and seen[-1] == PHASE.ROLLOUT_PHASE_COMPLETED


async def test_background_loop_advances_on_its_own_and_wakes(
    store: Store, clock: MovableClock, base_manifest: dict[str, Any]
) -> None:
    v2 = publish(store, base_manifest, version="2.0.0")
    ids = enroll(store, "berlin", 2)
    service = RolloutService(
        store,
        SyncHub(),
        clock,
        reconciler=ReconcilerSettings(holder="loop", interval_s=0.05, lease_ttl_s=5),
    )
    ro = await service.create(request(v2, ["berlin"], ["1"]))
    service.start()
    try:
        (canary,) = assigned_to(store, ids, v2)
        report(store, canary, clock.advance(1), v2)
        service.wake()
        for _ in range(100):
            if len(assigned_to(store, ids, v2)) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(assigned_to(store, ids, v2)) == 2
    finally:
        await service.stop()
    assert service.reconciler.leases.holder("rollout-reconciler", clock()) is None
    assert (await service.get(ro.id)).wave == 2
