"""A ``Rollout`` manifest applied like any config (``fleetctl apply -f``) becomes a rollout; a bad one
changes nothing."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from edgefleet.contract.signing import generate_keypair
from edgefleet.v1 import fleet_pb2
from edgefleet_testing.controller import connected, publish_bundle, running_controller

pytestmark = pytest.mark.integration

ROLLOUT = """\
apiVersion: edgefleet.io/v1
kind: Rollout
metadata: {name: classifier-v2}
spec:
  target: {bundle: classifier@2.0.0}
  selector: {sites: [warehouse-a]}
  strategy: {waves: [1, "100%"], bake_s: 0}
  on_abort: rollback
"""


async def test_rollout_manifest_creates_a_rollout(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as fleet:
        key = generate_keypair("publisher")
        await fleet.trust(key)
        v2 = await fleet.push(publish_bundle(tmp_path / "b", key, version="2.0.0", seed=2))
        for name in ("cam-1", "cam-2"):
            await fleet.enroll("warehouse-a", name)

        def apply(content: str, dry_run: bool = False) -> fleet_pb2.ApplyConfigRequest:
            return fleet_pb2.ApplyConfigRequest(
                files=[fleet_pb2.ManifestFile(name="rollouts/v2.yaml", content=content)], dry_run=dry_run
            )

        dry = await fleet.fleet.ApplyConfig(apply(ROLLOUT, dry_run=True), metadata=fleet.admin)
        assert not dry.rollout_ids and any("dry run" in line for line in dry.results)
        listed = await fleet.fleet.ListRollouts(fleet_pb2.ListRolloutsRequest(), metadata=fleet.admin)
        assert not listed.rollouts

        reply = await fleet.fleet.ApplyConfig(apply(ROLLOUT), metadata=fleet.admin)
        assert len(reply.rollout_ids) == 1
        rollout = await fleet.fleet.GetRollout(
            fleet_pb2.GetRolloutRequest(id=reply.rollout_ids[0]), metadata=fleet.admin
        )
        assert rollout.bundle_digest == v2.bundle.digest
        assert list(rollout.strategy.waves) == ["1", "100%"]
        assert {d.device_name for d in rollout.devices} == {"cam-1", "cam-2"}

        # A Rollout naming a bundle that does not exist is refused with the reference in the message, and
        # the config document applied with it in the same request is not stored either.
        site_config = "apiVersion: edgefleet.io/v1\nkind: SiteConfig\nmetadata: {name: wa, site: warehouse-a}\n"
        site_config += "spec:\n  config:\n    sla: {latency_ms: 33}\n---\n"
        before = await fleet.fleet.GetEffectiveConfig(
            fleet_pb2.GetEffectiveConfigRequest(device="cam-1"), metadata=fleet.admin
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await fleet.fleet.ApplyConfig(
                apply(site_config + ROLLOUT.replace("classifier@2.0.0", "classifier@9.9.9")), metadata=fleet.admin
            )
        assert refused.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
        assert "9.9.9" in (refused.value.details() or "")
        after = await fleet.fleet.GetEffectiveConfig(
            fleet_pb2.GetEffectiveConfigRequest(device="cam-1"), metadata=fleet.admin
        )
        assert after.digest == before.digest
        listed = await fleet.fleet.ListRollouts(fleet_pb2.ListRolloutsRequest(), metadata=fleet.admin)
        assert [r.id for r in listed.rollouts] == list(reply.rollout_ids)
