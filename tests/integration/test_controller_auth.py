"""The controller's access rules over real gRPC: devices see only themselves, roles gate FleetService, and
missing, expired and revoked credentials are refused with UNAUTHENTICATED.

Operator tokens have no revoke RPC in v1 (fleet.proto has none): revocation is an administrative act on
the store. Both paths are shown: ``AuthService.revoke_operator_token`` (what a future RPC calls) evicts
the auth cache at once, and a revocation written to the store is honoured by a freshly started controller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgefleet.contract.signing import generate_keypair
from edgefleet.v1 import device_pb2, fleet_pb2
from edgefleet_controller.store import Store
from edgefleet_testing.controller import bearer, connected, publish_bundle, running_controller
from edgefleet_testing.fakes import MovableClock

pytestmark = pytest.mark.integration


async def refused(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_devices_only_reach_their_own_state(tmp_path: Path) -> None:
    key = generate_keypair("pub")
    a_bundle = publish_bundle(tmp_path / "w", key, version="1.0.0", seed=1)
    b_bundle = publish_bundle(tmp_path / "w", key, version="2.0.0", seed=2)
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        await c.trust(key)
        a_pushed, b_pushed = await c.push(a_bundle), await c.push(b_bundle)
        a_id, a_cred = await c.enroll("site-1", "dev-a")
        b_id, b_cred = await c.enroll("site-1", "dev-b")
        for dev, bundle in ((a_id, a_pushed), (b_id, b_pushed)):
            await c.fleet.SetDesiredBundle(
                fleet_pb2.SetDesiredBundleRequest(device=dev, bundle=bundle.bundle.digest), metadata=c.admin
            )
        a_sync = await c.sync(a_cred)
        b_sync = await c.sync(b_cred)
        assert a_sync.desired.bundle_digest == a_pushed.bundle.digest
        assert b_sync.desired.bundle_digest == b_pushed.bundle.digest
        b_model = next(x for x in b_sync.desired.artifacts if x.role == "model").digest
        a_model = next(x for x in a_sync.desired.artifacts if x.role == "model").digest
        assert a_model != b_model
        # The artifact exists, but only in B's desired bundle: A is told NOT_FOUND, as for an unknown digest.
        err = await refused(c.fetch(a_cred, b_model))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert b_model in (err.details() or "")
        assert len(await c.fetch(b_cred, b_model)) > 0
        # A's report lands on A only.
        b_before = await c.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device=b_id), metadata=c.admin)
        await c.sync(a_cred, known_revision=0)
        b_after = await c.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device=b_id), metadata=c.admin)
        assert b_after.last_seen == b_before.last_seen
        # A change for B does not wake A's long-poll.
        waiting_a = asyncio.ensure_future(c.sync(a_cred, known_revision=a_sync.desired.revision, wait_s=2))
        await asyncio.sleep(0.2)
        await c.fleet.SetDesiredBundle(
            fleet_pb2.SetDesiredBundleRequest(device=b_id, bundle=a_pushed.bundle.digest), metadata=c.admin
        )
        await asyncio.sleep(0.3)
        assert not waiting_a.done()
        assert not (await waiting_a).changed


async def test_roles_and_credential_kinds(tmp_path: Path) -> None:
    key = generate_keypair("pub")
    archive = publish_bundle(tmp_path / "w", key)
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        await c.trust(key)
        _, cred = await c.enroll("site-1", "dev-a")
        _, viewer = await c.operator_token("viewer")
        _, operator = await c.operator_token("operator")

        err = await refused(c.fleet.ListDevices(fleet_pb2.ListDevicesRequest(), metadata=bearer(cred)))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "device credentials cannot call FleetService" in (err.details() or "")

        err = await refused(c.push(archive, token=viewer))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "role viewer" in (err.details() or "")
        assert not (await c.fleet.ListBundles(fleet_pb2.ListBundlesRequest(), metadata=bearer(viewer))).bundles

        err = await refused(
            c.fleet.CreateEnrollmentToken(fleet_pb2.CreateEnrollmentTokenRequest(site="x"), metadata=bearer(operator))
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (await c.push(archive, token=operator)).created

        # Operators cannot call the device API: the device id always comes from a device credential.
        err = await refused(c.sync(c.admin_token))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED

        err = await refused(c.fleet.ListDevices(fleet_pb2.ListDevicesRequest()))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in (err.details() or "")
        err = await refused(c.device.Sync(device_pb2.SyncRequest(wait_s=1)))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        for bogus in ("eot_nope.nope", "edc_dev_x.y", "hello"):
            err = await refused(c.fleet.ListDevices(fleet_pb2.ListDevicesRequest(), metadata=bearer(bogus)))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, bogus


async def test_expired_and_revoked_enrollment_tokens_are_refused(tmp_path: Path) -> None:
    clock = MovableClock()
    async with running_controller(tmp_path / "data", clock=clock) as ctrl, connected(ctrl) as c:
        short = await c.fleet.CreateEnrollmentToken(
            fleet_pb2.CreateEnrollmentTokenRequest(site="s", ttl_s=60), metadata=c.admin
        )
        revoked = await c.fleet.CreateEnrollmentToken(
            fleet_pb2.CreateEnrollmentTokenRequest(site="s", ttl_s=3600), metadata=c.admin
        )
        await c.fleet.RevokeEnrollmentToken(
            fleet_pb2.RevokeEnrollmentTokenRequest(token_id=revoked.token_id), metadata=c.admin
        )
        err = await refused(c.enroll("s", "d1", token=revoked.token))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in (err.details() or "")
        err = await refused(
            c.fleet.RevokeEnrollmentToken(fleet_pb2.RevokeEnrollmentTokenRequest(token_id="nosuch"), metadata=c.admin)
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert "enrollment tokens are shown once when created" in (err.details() or ""), err.details()

        clock.now += timedelta(seconds=61)
        err = await refused(c.enroll("s", "d2", token=short.token))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "expired" in (err.details() or "")
        err = await refused(c.device.Enroll(device_pb2.EnrollRequest(name="d3")))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        devices = await c.fleet.ListDevices(fleet_pb2.ListDevicesRequest(), metadata=c.admin)
        assert not devices.devices


async def test_expired_operator_token_is_refused_despite_the_cache(tmp_path: Path) -> None:
    clock = MovableClock()
    async with running_controller(tmp_path / "data", clock=clock) as ctrl, connected(ctrl) as c:
        _, temp = await c.operator_token("viewer", ttl_s=60)
        await c.fleet.ListSites(fleet_pb2.ListSitesRequest(), metadata=bearer(temp))  # now cached
        clock.now += timedelta(seconds=61)
        err = await refused(c.fleet.ListSites(fleet_pb2.ListSitesRequest(), metadata=bearer(temp)))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "expired" in (err.details() or "")


async def test_revoked_operator_tokens_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_controller(data) as ctrl, connected(ctrl) as c:
        first_id, first = await c.operator_token("operator", "ci")
        second_id, second = await c.operator_token("viewer", "dash")
        for token in (first, second):
            await c.fleet.ListSites(fleet_pb2.ListSitesRequest(), metadata=bearer(token))  # cached now
        # Through this controller's service layer: the cache is evicted at once, not after its TTL.
        await ctrl.app.auth.revoke_operator_token(first_id)
        err = await refused(c.fleet.ListSites(fleet_pb2.ListSitesRequest(), metadata=bearer(first)))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in (err.details() or "")
    # Written straight to the store (an administrator's act while the controller is down) …
    store = Store.open_data_dir(data)
    try:
        store.operator_tokens.revoke(second_id, datetime.now(UTC))
    finally:
        store.close()
    # … and honoured by the next controller on that data dir.
    async with running_controller(data) as ctrl, connected(ctrl) as c:
        err = await refused(c.fleet.ListSites(fleet_pb2.ListSitesRequest(), metadata=bearer(second)))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        await c.fleet.ListSites(fleet_pb2.ListSitesRequest(), metadata=c.admin)
