"""Bad inputs get a specific gRPC status and a message that names what was wrong, and change nothing: the
bundle listing, the blob directory, the config revision and the devices' desired state are the same after."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgefleet.contract.bundle_archive import read_archive_manifest
from edgefleet.contract.signing import generate_keypair
from edgefleet.v1 import common_pb2, device_pb2, fleet_pb2
from edgefleet_testing.bundles import push_requests
from edgefleet_testing.controller import (
    Fleet,
    InProcessController,
    bearer,
    connected,
    publish_bundle,
    running_controller,
)

pytestmark = pytest.mark.integration


async def refused(call: Awaitable[Any], code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    details = info.value.details() or ""
    assert info.value.code() == code, (info.value.code(), details)
    for fragment in fragments:
        assert fragment in details, (fragment, details)
    return details


def blob_files(ctrl: InProcessController) -> set[str]:
    root = ctrl.app.data_dir / "blobs"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


async def fleet_state(c: Fleet, ctrl: InProcessController) -> tuple[Any, ...]:
    bundles = await c.fleet.ListBundles(fleet_pb2.ListBundlesRequest(), metadata=c.admin)
    devices = await c.fleet.ListDevices(fleet_pb2.ListDevicesRequest(), metadata=c.admin)
    revision = await asyncio.to_thread(ctrl.app.store.configs.revision)
    return (
        [b.SerializeToString() for b in bundles.bundles],
        sorted((d.id, d.desired.SerializeToString()) for d in devices.devices),
        revision,
        blob_files(ctrl),
    )


async def test_bad_bundle_uploads_are_refused_and_store_nothing(tmp_path: Path) -> None:
    trusted = generate_keypair("trusted-pub")
    stranger = generate_keypair("stranger")
    good = publish_bundle(tmp_path / "w", trusted, version="1.0.0")
    # fleetctl refuses to send an unsigned archive, so a raw client strips the signature from the header.
    unsigned = publish_bundle(tmp_path / "w", trusted, version="1.1.0", seed=5)
    foreign = publish_bundle(tmp_path / "w", stranger, version="1.2.0", seed=6)
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        await c.trust(trusted)
        kept = await c.push(good)
        before = await fleet_state(c, ctrl)

        manifest, _ = read_archive_manifest(unsigned)
        requests = push_requests(foreign)
        unsigned_reqs = push_requests(unsigned)
        unsigned_reqs[0].header.signature = b""
        await refused(
            c.fleet.PushBundle(iter(unsigned_reqs), metadata=c.admin),
            grpc.StatusCode.INVALID_ARGUMENT,
            "bundle refused",
            "unsigned",
        )
        assert manifest.version == "1.1.0"

        await refused(
            c.fleet.PushBundle(iter(requests), metadata=c.admin),
            grpc.StatusCode.INVALID_ARGUMENT,
            "bundle refused",
            "stranger",
        )

        # A trusted signature over the manifest, but one artifact byte flipped on the way.
        tampered = publish_bundle(tmp_path / "w", trusted, version="1.3.0", seed=7)
        reqs = push_requests(tampered, chunk_bytes=4096)
        victim = reqs[1].chunk
        victim.data = bytes([victim.data[0] ^ 0xFF]) + victim.data[1:]
        tampered_manifest, _ = read_archive_manifest(tampered)
        role = next(a.role for a in tampered_manifest.artifacts.values() if a.digest == victim.digest)
        await refused(
            c.fleet.PushBundle(iter(reqs), metadata=c.admin),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"bundle refused: artifact '{role}'",
            victim.digest,
        )

        # Header missing entirely.
        await refused(
            c.fleet.PushBundle(iter(reqs[1:]), metadata=c.admin),
            grpc.StatusCode.INVALID_ARGUMENT,
            "first message must be a header",
        )
        assert await fleet_state(c, ctrl) == before
        listed = await c.fleet.ListBundles(fleet_pb2.ListBundlesRequest(), metadata=c.admin)
        assert [b.digest for b in listed.bundles] == [kept.bundle.digest]


async def test_bad_requests_get_specific_statuses_and_change_nothing(tmp_path: Path) -> None:
    key = generate_keypair("pub")
    archive = publish_bundle(tmp_path / "w", key)
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        await c.trust(key)
        pushed = await c.push(archive)
        device_id, cred = await c.enroll("site-1", "cam-1")
        await c.fleet.SetDesiredBundle(
            fleet_pb2.SetDesiredBundleRequest(device=device_id, bundle=pushed.bundle.digest), metadata=c.admin
        )
        synced = await c.sync(cred)
        model = next(a for a in synced.desired.artifacts if a.role == "model")
        before = await fleet_state(c, ctrl)

        # Invalid manifest: the message points at file:line and the field path.
        bad = (
            "apiVersion: edgefleet.io/v1\nkind: SiteConfig\nmetadata:\n  name: s1\n  site: site-1\n"
            "spec:\n  config:\n    sla:\n      latency_ms: -5\n"
        )
        details = await refused(
            c.fleet.ApplyConfig(
                fleet_pb2.ApplyConfigRequest(files=[fleet_pb2.ManifestFile(name="sites/s1.yaml", content=bad)]),
                metadata=c.admin,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sites/s1.yaml:",
            "latency_ms",
        )
        assert "-5" in details
        await refused(
            c.fleet.ApplyConfig(
                fleet_pb2.ApplyConfigRequest(
                    files=[fleet_pb2.ManifestFile(name="broken.yaml", content="kind: [unclosed\n")]
                ),
                metadata=c.admin,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "broken.yaml",
        )

        # Unknown devices and bundles.
        for call in (
            c.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device="dev_0000000000000000"), metadata=c.admin),
            c.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device="no-such-cam"), metadata=c.admin),
            c.fleet.GetEffectiveConfig(fleet_pb2.GetEffectiveConfigRequest(device="no-such-cam"), metadata=c.admin),
            c.fleet.SetDesiredBundle(
                fleet_pb2.SetDesiredBundleRequest(device="no-such-cam", bundle=pushed.bundle.digest), metadata=c.admin
            ),
        ):
            await refused(call, grpc.StatusCode.NOT_FOUND)
        await refused(
            c.fleet.SetDesiredBundle(
                fleet_pb2.SetDesiredBundleRequest(device=device_id, bundle="classifier@9.9.9"), metadata=c.admin
            ),
            grpc.StatusCode.NOT_FOUND,
            "classifier@9.9.9",
        )

        # FetchBlob from beyond the end: the numbers are in the message.
        past = model.size_bytes + 10
        await refused(
            c.fetch(cred, model.digest, offset=past),
            grpc.StatusCode.OUT_OF_RANGE,
            str(past),
            str(model.size_bytes),
        )
        assert await c.fetch(cred, model.digest, offset=model.size_bytes) == b""  # at the end: empty, not an error
        await refused(c.fetch(cred, "sha256:nothex"), grpc.StatusCode.INVALID_ARGUMENT, "sha256:nothex")

        # More than 8 MiB in one unary message is refused before it reaches a servicer.
        huge = fleet_pb2.ManifestFile(name="huge.yaml", content="#" * (9 << 20))
        await refused(
            c.fleet.ApplyConfig(fleet_pb2.ApplyConfigRequest(files=[huge]), metadata=c.admin),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        await refused(
            c.device.Sync(
                device_pb2.SyncRequest(wait_s=1, reported=common_pb2.ReportedState(update_reason="x" * (9 << 20))),
                metadata=bearer(cred),
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )

        # A bundle a device wants cannot be deleted.
        await refused(
            c.fleet.DeleteBundle(fleet_pb2.DeleteBundleRequest(ref=pushed.bundle.digest), metadata=c.admin),
            grpc.StatusCode.FAILED_PRECONDITION,
            device_id,
        )
        assert await fleet_state(c, ctrl) == before
