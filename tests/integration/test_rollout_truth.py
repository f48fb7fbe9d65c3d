"""Rollout truth over real gRPC (an in-process controller on loopback, devices speaking the Sync RPC):

- a bundle that failed its canary is remembered (``GetBundle.canary_failures``) and a new rollout of it is
  refused by CreateRollout and by a Rollout manifest, quoting the verdict, unless forced — and the forced
  rollout's canary is judged only on what it reports under the new assignment;
- config rollouts: a config document applied with a Rollout naming it is staged, rolled out device by
  device (each device its own target digest), made live when the rollout completes; one whose canary
  rolls back is discarded and its devices are sent back to their live config under a new assignment.

Devices are simulated at the wire: each "device" is a credential that syncs with the ``ReportedState`` the
edge runtime would send, echoing the assignment of the desired state it acts on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from edgefleet.contract.signing import generate_keypair
from edgefleet.v1 import common_pb2, device_pb2, fleet_pb2, telemetry_pb2
from edgefleet_testing.controller import Fleet, bearer, connected, publish_bundle, running_controller

pytestmark = pytest.mark.integration

PHASE = fleet_pb2.RolloutPhase
COMMITTED = common_pb2.UPDATE_STATE_COMMITTED
ROLLED_BACK = common_pb2.UPDATE_STATE_ROLLED_BACK
FAIL = common_pb2.CanaryVerdict.OUTCOME_FAIL


class Device:
    """One simulated device: its credential, and the report it sends on every Sync."""

    def __init__(self, fleet: Fleet, name: str, device_id: str, credential: str) -> None:
        self.fleet, self.name, self.id, self.credential = fleet, name, device_id, credential
        self.reported = common_pb2.ReportedState(health=common_pb2.HEALTH_SERVING, update_state=COMMITTED)

    async def desired(self) -> common_pb2.DesiredState:
        reply = await self.fleet.sync(self.credential, known_revision=0, wait_s=1, reported=self.reported)
        return reply.desired

    async def run(self, **fields: object) -> common_pb2.DesiredState:
        """Report ``fields`` (ReportedState fields) and return the desired state in force."""
        for key, value in fields.items():
            if isinstance(value, common_pb2.CanaryVerdict):
                getattr(self.reported, key).CopyFrom(value)
            else:
                setattr(self.reported, key, value)
        return await self.desired()

    async def commit(self) -> common_pb2.DesiredState:
        """Act on the desired state: run its bundle and config, committed, under its assignment."""
        desired = await self.desired()
        return await self.run(
            running_bundle_digest=desired.bundle_digest or self.reported.running_bundle_digest,
            running_config_digest=desired.config_digest,
            update_state=COMMITTED,
            assignment_id=desired.assignment_id,
            applied_revision=desired.revision,
        )


async def eventually(check: Callable[[], object], what: str, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if await check():  # type: ignore[misc]
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


async def rollout(fleet: Fleet, rollout_id: str) -> fleet_pb2.Rollout:
    reply: fleet_pb2.Rollout = await fleet.fleet.GetRollout(
        fleet_pb2.GetRolloutRequest(id=rollout_id), metadata=fleet.admin
    )
    return reply


async def wait_phase(fleet: Fleet, rollout_id: str, phase: int, timeout_s: float = 20.0) -> fleet_pb2.Rollout:
    async def reached() -> bool:
        return (await rollout(fleet, rollout_id)).phase == phase

    await eventually(reached, f"rollout {rollout_id} {PHASE.Name(phase)}", timeout_s)  # type: ignore[arg-type]
    return await rollout(fleet, rollout_id)


async def enroll(fleet: Fleet, site: str, names: list[str], tags: dict[str, str] | None = None) -> list[Device]:
    out = []
    for name in names:
        device_id, credential = await fleet.enroll(site, name, tags=tags)
        out.append(Device(fleet, name, device_id, credential))
    return out


def apply(*documents: str, stage: bool = False, dry_run: bool = False) -> fleet_pb2.ApplyConfigRequest:
    return fleet_pb2.ApplyConfigRequest(
        files=[fleet_pb2.ManifestFile(name="apply.yaml", content="\n---\n".join(documents))],
        stage=stage,
        dry_run=dry_run,
    )


def create(
    bundle: str = "", config: str = "", *, force: bool = False, sites: tuple[str, ...] = ("lab",)
) -> fleet_pb2.CreateRolloutRequest:
    return fleet_pb2.CreateRolloutRequest(
        bundle=bundle,
        config=config,
        selector=fleet_pb2.RolloutSelector(sites=list(sites)),
        strategy=fleet_pb2.RolloutStrategy(waves=["1", "100%"]),
        force=force,
    )


ROLLOUT_V2 = """apiVersion: edgefleet.io/v1
kind: Rollout
metadata: {name: again}
spec:
  target: {bundle: classifier@2.0.0}
  selector: {sites: [lab]}
  strategy: {waves: [1, "100%"]}"""


async def test_a_bundle_that_failed_its_canary_is_refused_unless_forced(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as fleet:
        key = generate_keypair("publisher")
        await fleet.trust(key)
        v1 = (await fleet.push(publish_bundle(tmp_path / "b", key, version="1.0.0", seed=1))).bundle.digest
        v2 = (await fleet.push(publish_bundle(tmp_path / "b", key, version="2.0.0", seed=2))).bundle.digest
        devices = await enroll(fleet, "lab", ["lab-1", "lab-2", "lab-3"])
        await fleet.fleet.SetDesiredBundle(
            fleet_pb2.SetDesiredBundleRequest(site="lab", bundle=v1), metadata=fleet.admin
        )
        for d in devices:
            await d.commit()

        first = await fleet.fleet.CreateRollout(create(v2), metadata=fleet.admin)
        (canary,) = [d for d in devices if d.id in {s.device_id for s in first.devices if s.wave == 1}]
        desired = await canary.desired()
        assert desired.bundle_digest == v2 and desired.assignment_id == f"{first.id}/{canary.id}/w1"
        verdict = common_pb2.CanaryVerdict(
            outcome=FAIL,
            candidate_digest=v2,
            baseline_digest=v1,
            phase="canary",
            reasons=["confidence drift: KS 0.91 (p 1e-12) > alpha 0.01", "agreement 0.12 < 0.90"],
            assignment_id=desired.assignment_id,
        )
        await canary.run(
            update_state=ROLLED_BACK,
            candidate_bundle_digest=v2,
            update_reason="canary failed",
            assignment_id=desired.assignment_id,
            last_verdict=verdict,
        )
        done = await wait_phase(fleet, first.id, PHASE.ROLLOUT_PHASE_ROLLED_BACK)
        assert "wave 1 (canary): 1 of 1 devices failed" in done.message

        bundle = await fleet.fleet.GetBundle(fleet_pb2.GetBundleRequest(ref=v2), metadata=fleet.admin)
        (failure,) = bundle.canary_failures
        assert (failure.device_name, failure.rollout_id, failure.kind) == (canary.name, first.id, "canary_fail")
        assert failure.assignment_id == desired.assignment_id and "confidence drift" in failure.summary

        for call in (
            fleet.fleet.CreateRollout(create(v2), metadata=fleet.admin),
            fleet.fleet.CreateRollout(create("classifier@2.0.0"), metadata=fleet.admin),
            fleet.fleet.ApplyConfig(apply(ROLLOUT_V2), metadata=fleet.admin),
            fleet.fleet.ApplyConfig(apply(ROLLOUT_V2, dry_run=True), metadata=fleet.admin),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            details = refused.value.details() or ""
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, details
            assert "failed its canary before" in details and canary.name in details and first.id in details
            assert "confidence drift" in details and "--force" in details
        listed = await fleet.fleet.ListRollouts(fleet_pb2.ListRolloutsRequest(), metadata=fleet.admin)
        assert [r.id for r in listed.rollouts] == [first.id]

        forced = await fleet.fleet.CreateRollout(create(v2, force=True), metadata=fleet.admin)
        assert forced.forced
        assert any(
            line.startswith("failed-canary refusal overridden (forced)") and canary.name in line
            for line in forced.admission
        )
        (again,) = [s for s in forced.devices if s.wave == 1]
        again_device = next(d for d in devices if d.id == again.device_id)
        assert again.assignment_id == f"{forced.id}/{again.device_id}/w1"
        # the old canary's rolled-back report (another assignment) counts neither way: wave 1 stays in flight
        for _ in range(3):
            await ctrl.app.rollouts.reconcile_once()
        now = await rollout(fleet, forced.id)
        assert now.phase == PHASE.ROLLOUT_PHASE_RUNNING and now.wave == 1
        assert [s.status for s in now.devices if s.wave == 0] == ["pending", "pending"]
        # the device fails again under the new assignment: the forced rollout rolls back too
        new = await again_device.desired()
        await again_device.run(
            update_state=ROLLED_BACK,
            candidate_bundle_digest=v2,
            assignment_id=new.assignment_id,
            last_verdict=common_pb2.CanaryVerdict(
                outcome=FAIL, candidate_digest=v2, baseline_digest=v1, assignment_id=new.assignment_id
            ),
        )
        await wait_phase(fleet, forced.id, PHASE.ROLLOUT_PHASE_ROLLED_BACK)
        for d in devices:
            if d is not again_device:
                assert (await d.desired()).bundle_digest == v1, d.name  # never received v2


SITE_V1 = """apiVersion: edgefleet.io/v1
kind: SiteConfig
metadata: {name: lab, site: lab}
spec:
  config:
    review: {sample_rate: 0.02}"""
# the revision a rollout canaries: a threshold change (device-specific on top: lab-3 has its own layer)
SITE_V2 = SITE_V1.replace(
    "review: {sample_rate: 0.02}", "review: {sample_rate: 0.02}\n    inference: {conf_threshold: 0.6}"
)
SITE_V3 = SITE_V1.replace(
    "review: {sample_rate: 0.02}", "review: {sample_rate: 0.02}\n    inference: {conf_threshold: 0.99}"
)
LAB3 = """apiVersion: edgefleet.io/v1
kind: DeviceConfig
metadata: {name: lab-3-review}
spec:
  selector: {device: lab-3}
  config:
    review: {sample_rate: 0.5}"""
CONFIG_ROLLOUT = """apiVersion: edgefleet.io/v1
kind: Rollout
metadata: {name: lab-threshold}
spec:
  target: {config: SiteConfig/lab}
  selector: {sites: [lab]}
  strategy: {waves: [1, "100%"]}"""


async def effective(fleet: Fleet, name: str) -> str:
    reply = await fleet.fleet.GetEffectiveConfig(fleet_pb2.GetEffectiveConfigRequest(device=name), metadata=fleet.admin)
    return str(reply.digest)


async def test_a_config_rollout_canaries_a_staged_revision_then_makes_it_live(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as fleet:
        devices = await enroll(fleet, "lab", ["lab-1", "lab-2", "lab-3"], tags={"ring": "early"})
        (outside,) = await enroll(fleet, "lab", ["lab-4"])  # the document affects it; the selector does not
        await fleet.fleet.ApplyConfig(apply(SITE_V1, LAB3), metadata=fleet.admin)
        for d in [*devices, outside]:
            await d.commit()
        live = {d.name: await effective(fleet, d.name) for d in [*devices, outside]}
        revisions = {d.name: (await d.desired()).revision for d in [*devices, outside]}

        early = CONFIG_ROLLOUT.replace("selector: {sites: [lab]}", "selector: {sites: [lab], tags: {ring: early}}")
        reply = await fleet.fleet.ApplyConfig(apply(SITE_V2, early), metadata=fleet.admin)
        assert any(line.startswith("SiteConfig/lab staged") for line in reply.results), reply.results
        (rollout_id,) = reply.rollout_ids
        created = await rollout(fleet, rollout_id)
        assert created.config == "SiteConfig/lab" and created.bundle_digest == "" and created.config_content_digest
        assert {s.device_name for s in created.devices} == {"lab-1", "lab-2", "lab-3"}
        assert any("1 device(s) outside the selector" in line for line in created.admission), created.admission
        # staged, not live: nobody's live effective config moved
        assert {d.name: await effective(fleet, d.name) for d in [*devices, outside]} == live
        (canary_row,) = [s for s in created.devices if s.wave == 1]
        canary = next(d for d in devices if d.id == canary_row.device_id)
        desired = await canary.desired()
        assert desired.config_digest == canary_row.target_config_digest != live[canary.name]
        assert desired.assignment_id == canary_row.assignment_id and desired.rollout_id == rollout_id
        for d in [*devices, outside]:
            if d is not canary:
                assert (await d.desired()).revision == revisions[d.name], d.name

        # a live apply of the staged document while its rollout runs is refused
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await fleet.fleet.ApplyConfig(apply(SITE_V3), metadata=fleet.admin)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"staged for rollout {rollout_id}" in (refused.value.details() or "")

        await canary.commit()
        await ctrl.app.rollouts.reconcile_once()
        wave2 = await rollout(fleet, rollout_id)
        assert wave2.wave == 2
        targets = {s.device_id: s.target_config_digest for s in wave2.devices}
        # every device its own target: lab-3's DeviceConfig layer makes its digest differ from the others'
        lab3 = next(d for d in devices if d.name == "lab-3")
        assert len({targets[d.id] for d in devices}) == 2
        assert targets[lab3.id] not in {targets[d.id] for d in devices if d is not lab3}
        assert (await outside.desired()).revision == revisions[outside.name]  # not canaried, not moved yet
        for d in devices:
            await d.commit()
        done = await wait_phase(fleet, rollout_id, PHASE.ROLLOUT_PHASE_COMPLETED)
        assert {s.status for s in done.devices} == {"succeeded"}

        async def promoted() -> bool:
            return all([await effective(fleet, d.name) == targets[d.id] for d in devices])

        await eventually(promoted, "the staged revision live")

        async def unstaged() -> bool:
            # The completed rollout releases its staged revision in its own step, just after the devices see it.
            return await ctrl.app.rollouts.staged() == []

        await eventually(unstaged, "the staged revision released")
        for d in devices:
            assert (await d.desired()).revision == revisions[d.name] + 1  # assigned once; going live changed nothing
        # the device outside the selector gets the live revision as a normal config change at completion
        moved = await outside.desired()
        assert moved.revision == revisions[outside.name] + 1 and moved.config_digest == await effective(fleet, "lab-4")
        assert moved.config_digest != live[outside.name] and moved.rollout_id == ""


async def test_a_config_rollout_whose_canary_rolls_back_is_discarded_and_reverted(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as fleet:
        devices = await enroll(fleet, "lab", ["lab-1", "lab-2"])
        await fleet.fleet.ApplyConfig(apply(SITE_V1), metadata=fleet.admin)
        for d in devices:
            await d.commit()
        live = await effective(fleet, "lab-1")
        staged = await fleet.fleet.ApplyConfig(apply(SITE_V3, stage=True), metadata=fleet.admin)
        assert not staged.rollout_ids and any("SiteConfig/lab staged" in r for r in staged.results)
        assert await effective(fleet, "lab-1") == live
        created = await fleet.fleet.CreateRollout(create(config="SiteConfig/lab"), metadata=fleet.admin)
        (canary_row,) = [s for s in created.devices if s.wave == 1]
        canary = next(d for d in devices if d.id == canary_row.device_id)
        desired = await canary.desired()
        target = desired.config_digest
        assert target != live
        # the device canaries the new config in shadow; it drops every detection: rolled back
        await canary.run(
            update_state=ROLLED_BACK,
            candidate_bundle_digest=canary.reported.running_bundle_digest,
            candidate_config_digest=target,
            running_config_digest=live,
            assignment_id=desired.assignment_id,
            update_reason="config canary failed: agreement 0.00 < 0.90",
        )
        rolling = await wait_phase(fleet, created.id, PHASE.ROLLOUT_PHASE_ROLLED_BACK)
        assert "wave 1 (canary)" in rolling.message
        back = await canary.desired()
        assert back.config_digest == live and back.assignment_id == f"{created.id}/{canary.id}/revert"
        assert back.reason == f"rollback of {created.id}"
        other = next(d for d in devices if d is not canary)
        assert (await other.desired()).config_digest == live

        async def discarded() -> bool:
            return await ctrl.app.rollouts.staged() == []

        await eventually(discarded, "the staged revision discarded")
        assert await effective(fleet, "lab-1") == live and await effective(fleet, "lab-2") == live


async def test_a_rollback_without_a_fail_verdict_is_remembered_from_its_event(tmp_path: Path) -> None:
    """A candidate that crashed in its trial rolls back with no FAIL verdict: the rollback event, under the
    assignment the device reports, marks the bundle; a rollback of another assignment's state does not."""
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as fleet:
        key = generate_keypair("publisher")
        await fleet.trust(key)
        v2 = (await fleet.push(publish_bundle(tmp_path / "b", key, version="2.0.0", seed=2))).bundle.digest
        (device,) = await enroll(fleet, "lab", ["lab-1"])
        await device.commit()
        created = await fleet.fleet.CreateRollout(create(v2), metadata=fleet.admin)
        desired = await device.desired()
        await device.run(update_state=ROLLED_BACK, assignment_id=desired.assignment_id, update_reason="crashed x3")
        event = telemetry_pb2.DeviceEvent(
            event_id="e-1",
            kind=telemetry_pb2.DeviceEvent.KIND_ROLLBACK,
            bundle_digest=v2,
            to_state=ROLLED_BACK,
            reason="candidate crashed 3 times within 60 s of loading",
            revision=desired.revision,
        )
        await fleet.device.ReportEvent(
            device_pb2.ReportEventRequest(events=[event]), metadata=bearer(device.credential)
        )
        bundle = await fleet.fleet.GetBundle(fleet_pb2.GetBundleRequest(ref=v2), metadata=fleet.admin)
        (failure,) = bundle.canary_failures
        assert (failure.kind, failure.rollout_id, failure.assignment_id) == (
            "rolled_back",
            created.id,
            desired.assignment_id,
        )
        assert "crashed 3 times" in failure.summary
        await wait_phase(fleet, created.id, PHASE.ROLLOUT_PHASE_ROLLED_BACK)
