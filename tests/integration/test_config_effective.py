"""GetEffectiveConfig against a real controller: the operator config a device receives (no defaults, no
bundle policy) and, per key, the resolved value and the layer it came from — defaults < the device's
desired (else running) bundle < FleetConfig < SiteConfig < tag DeviceConfig < device DeviceConfig."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.contract.signing import generate_keypair
from edgefleet.v1 import common_pb2, fleet_pb2
from edgefleet_testing.controller import Fleet, connected, publish_bundle, running_controller

pytestmark = pytest.mark.integration

HEAD = "apiVersion: edgefleet.io/v1\n"
MANIFESTS = (
    f"{HEAD}kind: FleetConfig\nmetadata: {{name: default}}\n"
    "spec:\n  config: {sla: {latency_ms: 80}, review: {max_per_hour: 5}}\n---\n"
    f"{HEAD}kind: SiteConfig\nmetadata: {{name: wa, site: warehouse-a}}\n"
    "spec:\n  config: {canary: {min_frames: 60}}\n---\n"
    f"{HEAD}kind: DeviceConfig\nmetadata: {{name: thermal}}\n"
    "spec:\n  selector: {tags: {camera: thermal}}\n  config: {inference: {conf_threshold: 0.35}}\n"
)


async def values_of(
    c: Fleet, device: str
) -> tuple[fleet_pb2.GetEffectiveConfigResponse, dict[str, tuple[object, str]]]:
    reply = await c.fleet.GetEffectiveConfig(fleet_pb2.GetEffectiveConfigRequest(device=device), metadata=c.admin)
    paths = [v.path for v in reply.values]
    assert len(paths) == len(set(paths)) and paths == sorted(paths, key=lambda p: p.split("."))
    return reply, {v.path: (json.loads(v.value_json), v.layer) for v in reply.values}


async def test_every_key_names_its_layer_and_the_bundle_sits_between_defaults_and_fleet(tmp_path: Path) -> None:
    key = generate_keypair("publisher")
    v1 = publish_bundle(tmp_path, key, name="shelf", version="1.0.0", canary={"min_frames": 80, "min_seconds": 20})
    v2 = publish_bundle(tmp_path, key, name="shelf", version="2.0.0", canary={"min_frames": 100, "min_seconds": 10})
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        await c.trust(key)
        one = (await c.push(v1)).bundle.digest
        two = (await c.push(v2)).bundle.digest
        device_id, cred = await c.enroll("warehouse-a", "cam-1", {"camera": "thermal"})
        applied = await c.fleet.ApplyConfig(
            fleet_pb2.ApplyConfigRequest(files=[fleet_pb2.ManifestFile(name="m.yaml", content=MANIFESTS)]),
            metadata=c.admin,
        )
        assert applied.devices_changed == 1

        # No bundle yet: the manifests over the built-in defaults.
        reply, values = await values_of(c, "cam-1")
        assert list(reply.sources) == ["defaults", "FleetConfig/default", "SiteConfig/wa", "DeviceConfig/thermal"]
        assert values["canary.min_frames"] == (60, "SiteConfig/wa")
        assert values["canary.min_seconds"] == (30, "defaults")
        assert values["sla.latency_ms"] == (80, "FleetConfig/default")
        assert values["inference.conf_threshold"] == (0.35, "DeviceConfig/thermal")
        assert values["review.max_per_hour"] == (5, "FleetConfig/default")
        assert values["review.jpeg_quality"] == (85, "defaults")
        # What the device receives holds the manifests' keys only, digest-equal to its desired state.
        operator = {
            "canary": {"min_frames": 60},
            "inference": {"conf_threshold": 0.35},
            "review": {"max_per_hour": 5},
            "sla": {"latency_ms": 80},
        }
        assert json.loads(reply.config_json) == operator
        synced = await c.sync(cred)
        assert synced.desired.config_digest == reply.digest and synced.desired.config_json == reply.config_json

        # Running v1 (reported by the device): its declared policy is the layer above the defaults.
        await c.sync(
            cred,
            known_revision=synced.desired.revision,
            wait_s=1,
            reported=common_pb2.ReportedState(running_bundle_digest=one, health=common_pb2.HEALTH_SERVING),
        )
        reply, values = await values_of(c, device_id)
        assert "bundle shelf@1.0.0" in reply.sources
        assert values["canary.min_seconds"] == (20, "bundle shelf@1.0.0")
        assert values["canary.min_frames"] == (60, "SiteConfig/wa")  # the site's key wins over the bundle's
        assert values["canary.deadline_s"] == (900, "defaults")  # no bundle declares it

        # Desired v2 wins over running v1: the policy shown is the one its canary will run with.
        await c.fleet.SetDesiredBundle(fleet_pb2.SetDesiredBundleRequest(device="cam-1", bundle=two), metadata=c.admin)
        reply, values = await values_of(c, "cam-1")
        assert list(reply.sources) == [
            "defaults",
            "bundle shelf@2.0.0",
            "FleetConfig/default",
            "SiteConfig/wa",
            "DeviceConfig/thermal",
        ]
        assert values["canary.min_seconds"] == (10, "bundle shelf@2.0.0")
        assert values["canary.min_frames"] == (60, "SiteConfig/wa")
        assert values["sla.thermal_buffer"] == (0.0, "defaults")
        assert values["sla.latency_ms"] == (80, "FleetConfig/default")
        assert values["inference.providers"] == (["tensorrt", "cuda", "cpu"], "bundle shelf@2.0.0")
        assert json.loads(reply.config_json) == operator  # the bundle never enters what is sent

        # Removing the site's key: the bundle's own min_frames applies again.
        site_without = MANIFESTS.replace("{canary: {min_frames: 60}}", "{canary: {min_frames: null}}")
        await c.fleet.ApplyConfig(
            fleet_pb2.ApplyConfigRequest(files=[fleet_pb2.ManifestFile(name="m.yaml", content=site_without)]),
            metadata=c.admin,
        )
        reply, values = await values_of(c, "cam-1")
        assert values["canary.min_frames"] == (100, "bundle shelf@2.0.0")
        assert "min_frames" not in json.loads(reply.config_json).get("canary", {})
