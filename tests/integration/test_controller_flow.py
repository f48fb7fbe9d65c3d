"""The controller's main path over real gRPC and SQLite: enroll, sync, publish and assign a bundle, wake a
waiting long-poll, resume a download from the middle, and survive a SIGTERM restart of the real process
with every piece of state and the device credential intact."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.contract.signing import generate_keypair
from edgefleet.v1 import common_pb2, fleet_pb2
from edgefleet_testing.controller import (
    CONFIG_MANIFESTS,
    ControllerProcess,
    bearer,
    connected,
    publish_bundle,
    running_controller,
)

pytestmark = pytest.mark.integration


def _manifest_files() -> list[fleet_pb2.ManifestFile]:
    files = []
    for root in CONFIG_MANIFESTS:
        paths = sorted(root.rglob("*.yaml")) if root.is_dir() else [root]
        files += [fleet_pb2.ManifestFile(name=str(p), content=p.read_text()) for p in paths]
    return files


async def test_waiting_sync_wakes_with_new_bundle_and_fetch_resumes(tmp_path: Path) -> None:
    key = generate_keypair("publisher-a")
    archive = publish_bundle(tmp_path / "work", key)
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        await c.trust(key)
        pushed = await c.push(archive)
        assert pushed.created
        device_id, cred = await c.enroll("warehouse-a", "cam-1")
        assert device_id.startswith("dev_") and cred.startswith("edc_")

        first = await c.sync(cred, known_revision=0, wait_s=1)
        assert first.changed  # enrollment assigned the effective config
        known = first.desired.revision

        # A long-poll with nothing new is held; start it before the change.
        started = time.monotonic()
        waiting = asyncio.ensure_future(c.sync(cred, known_revision=known, wait_s=30))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert ctrl.app.hub.waiting == 1
        changed_at = time.monotonic()
        reply = await c.fleet.SetDesiredBundle(
            fleet_pb2.SetDesiredBundleRequest(device=device_id, bundle="classifier@1.0.0"), metadata=c.admin
        )
        woke = await asyncio.wait_for(waiting, 5)
        woke_after = time.monotonic() - changed_at
        assert woke_after < 1.0, woke_after
        assert time.monotonic() - started < 5
        assert woke.changed
        assert woke.desired.revision == reply.revisions[device_id] > known
        assert woke.desired.bundle_digest == pushed.bundle.digest
        assert woke.desired.bundle_manifest and woke.desired.bundle_signature
        model = next(a for a in woke.desired.artifacts if a.role == "model")

        # Download, drop half-way, resume from the partial length: the bytes are exactly the artifact.
        whole = await c.fetch(cred, model.digest, chunk_bytes=4096)
        assert len(whole) == model.size_bytes
        half = model.size_bytes // 2 + 17
        rest = await c.fetch(cred, model.digest, offset=half, chunk_bytes=4096)
        rebuilt = whole[:half] + rest
        assert "sha256:" + hashlib.sha256(rebuilt).hexdigest() == model.digest

        # The same revision held again returns changed=False after wait_s.
        t0 = time.monotonic()
        quiet = await c.sync(cred, known_revision=woke.desired.revision, wait_s=1)
        assert not quiet.changed
        assert 0.8 < time.monotonic() - t0 < 5


async def test_restart_by_sigterm_keeps_state_and_credentials(tmp_path: Path) -> None:
    key = generate_keypair("publisher-a")
    archive = publish_bundle(tmp_path / "work", key)
    data = tmp_path / "data"
    proc = ControllerProcess(data)
    proc.start()
    try:
        async with connected(proc) as c:
            await c.trust(key)
            pushed = await c.push(archive)
            await c.fleet.ApplyConfig(fleet_pb2.ApplyConfigRequest(files=_manifest_files()), metadata=c.admin)
            device_id, cred = await c.enroll("warehouse-a", "wa-dock-door-3", {"camera": "thermal"})
            await c.sync(cred, wait_s=1)
            set_reply = await c.fleet.SetDesiredBundle(
                fleet_pb2.SetDesiredBundleRequest(site="warehouse-a", bundle=pushed.bundle.digest), metadata=c.admin
            )
            _, viewer = await c.operator_token("viewer", "dash")
            enroll_token = await c.enrollment_token("farm-b")
            before_device = await c.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device=device_id), metadata=c.admin)
            before_config = await c.fleet.GetEffectiveConfig(
                fleet_pb2.GetEffectiveConfigRequest(device=device_id), metadata=c.admin
            )

            # A long-poll in flight when SIGTERM arrives returns at once (unchanged) instead of hanging.
            pending = asyncio.ensure_future(c.sync(cred, known_revision=set_reply.revisions[device_id], wait_s=30))
            await asyncio.sleep(0.3)
            health = health_pb2_grpc.HealthStub(c.channel)
            assert (
                await health.Check(health_pb2.HealthCheckRequest())
            ).status == health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(service="edgefleet.v1.FleetService"))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            status = await asyncio.wait_for(watch.read(), 10)
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
            drained = await asyncio.wait_for(pending, 10)
            assert not drained.changed
        assert proc.wait(20) == 0
    finally:
        proc.kill()

    again = ControllerProcess(data)
    again.start()
    try:
        async with connected(again) as c:
            assert again.admin_token == proc.admin_token  # bootstrap token is not re-issued
            after_device = await c.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device=device_id), metadata=c.admin)
            assert after_device.desired == before_device.desired
            assert after_device.tags == before_device.tags and after_device.site == "warehouse-a"
            after_config = await c.fleet.GetEffectiveConfig(
                fleet_pb2.GetEffectiveConfigRequest(device=device_id), metadata=c.admin
            )
            assert after_config.digest == before_config.digest
            assert after_config.sources == before_config.sources
            bundles = await c.fleet.ListBundles(fleet_pb2.ListBundlesRequest(), metadata=bearer(viewer))
            assert [b.digest for b in bundles.bundles] == [pushed.bundle.digest]
            keys = await c.fleet.ListTrustedKeys(fleet_pb2.ListTrustedKeysRequest(), metadata=c.admin)
            assert [k.key_id for k in keys.keys] == [key.key_id]
            # The device credential still works, and the desired state comes back in full.
            synced = await c.sync(cred, known_revision=0, wait_s=1)
            assert synced.changed and synced.desired.bundle_digest == pushed.bundle.digest
            assert synced.desired.revision == set_reply.revisions[device_id]
            model = next(a for a in synced.desired.artifacts if a.role == "model")
            blob = await c.fetch(cred, model.digest)
            assert "sha256:" + hashlib.sha256(blob).hexdigest() == model.digest
            # The enrollment token made before the restart still enrolls.
            new_id, _ = await c.enroll("farm-b", "pi-1", token=enroll_token)
            assert (
                await c.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device=new_id), metadata=c.admin)
            ).site == "farm-b"
        assert again.terminate() == 0
    finally:
        again.kill()


async def test_sync_records_reported_state(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        device_id, cred = await c.enroll("farm-b", "pi-7")
        reported = common_pb2.ReportedState(
            running_bundle_digest="sha256:" + "ab" * 32,
            health=common_pb2.HEALTH_DEGRADED,
            active_providers=["CPUExecutionProvider"],
        )
        await c.sync(cred, wait_s=1, reported=reported)
        device = await c.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device="pi-7"), metadata=c.admin)
        assert device.id == device_id
        assert device.health == common_pb2.HEALTH_DEGRADED
        assert device.reported.running_bundle_digest == reported.running_bundle_digest
        assert list(device.reported.active_providers) == ["CPUExecutionProvider"]
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await c.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device="pi-8"), metadata=c.admin)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
