"""Revocation over real gRPC, on two controller replicas sharing one database (SQLite file and PostgreSQL):
a revoked operator token, a disabled, deleted or re-credentialed device is refused on its very next call on
either replica; re-enabling restores the device with its state; admin-only; unknown ids change nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from edgefleet.contract.signing import generate_keypair
from edgefleet.v1 import common_pb2, device_pb2, fleet_pb2, telemetry_pb2
from edgefleet_controller.auth.service import DEFAULT_OPERATOR_TTL_S, DEVICE_GONE
from edgefleet_testing.controller import Fleet, bearer, connected, publish_bundle, running_controller

pytestmark = pytest.mark.integration


@asynccontextmanager
async def two_replicas(tmp_path: Path, store_url: str) -> AsyncIterator[tuple[Fleet, Fleet]]:
    """Two controllers on one database, each with its own data dir; both clients use replica A's admin."""
    async with (
        running_controller(tmp_path / "a", store_url=store_url) as a,
        running_controller(tmp_path / "b", store_url=store_url) as b,
        connected(a) as fleet_a,
        grpc.aio.insecure_channel(b.address) as channel_b,
    ):
        fleet_b = Fleet(channel_b, a.admin_token)  # the first replica made the bootstrap token
        yield fleet_a, fleet_b


async def refused(call: object, code: grpc.StatusCode) -> str:
    """Await ``call`` and return the refusal's details; fails when it succeeds or fails otherwise."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


def action(device: str) -> fleet_pb2.DeviceActionRequest:
    return fleet_pb2.DeviceActionRequest(device=device)


async def test_revoked_operator_token_is_refused_on_the_next_call_on_both_replicas(
    tmp_path: Path, store_url: str
) -> None:
    async with two_replicas(tmp_path, store_url) as (a, b):
        token_id, token = await a.operator_token("viewer", "ci-bot")
        for fleet in (a, b):  # both replicas accept it (and would have cached it, before)
            await fleet.fleet.ListSites(fleet_pb2.ListSitesRequest(), metadata=bearer(token))
        revoked = await a.fleet.RevokeOperatorToken(
            fleet_pb2.RevokeOperatorTokenRequest(token_id=token_id), metadata=a.admin
        )
        assert revoked.id == token_id and revoked.HasField("revoked_at")
        for fleet in (b, a):
            details = await refused(
                fleet.fleet.ListSites(fleet_pb2.ListSitesRequest(), metadata=bearer(token)),
                grpc.StatusCode.UNAUTHENTICATED,
            )
            assert "revoked" in details
        again = await b.fleet.RevokeOperatorToken(
            fleet_pb2.RevokeOperatorTokenRequest(token_id=token_id), metadata=b.admin
        )
        assert again.revoked_at == revoked.revoked_at  # idempotent: the first time is kept


async def test_disabled_device_is_refused_on_both_replicas_and_enabling_restores_it(
    tmp_path: Path, store_url: str
) -> None:
    async with two_replicas(tmp_path, store_url) as (a, b):
        device_id, credential = await a.enroll("lab", "cam-1", tags={"zone": "north"})
        await b.sync(credential, wait_s=0)
        await a.sync(credential, wait_s=0)
        disabled = await b.fleet.DisableDevice(action("cam-1"), metadata=b.admin)
        assert disabled.id == device_id and disabled.HasField("disabled_at")
        for fleet in (a, b):
            details = await refused(fleet.sync(credential, wait_s=0), grpc.StatusCode.PERMISSION_DENIED)
            assert "disabled by an operator" in details and "fleetctl device enable cam-1" in details
        kept = await a.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device=device_id), metadata=a.admin)
        assert kept.HasField("disabled_at") and dict(kept.tags) == {"zone": "north"}
        assert kept.reported.health == common_pb2.HEALTH_SERVING  # its last report is kept
        assert kept.health == common_pb2.HEALTH_DISABLED  # shown over its reported health

        async def listed(health: common_pb2.Health.ValueType) -> list[str]:
            reply = await b.fleet.ListDevices(fleet_pb2.ListDevicesRequest(health=health), metadata=b.admin)
            assert reply.total == len(reply.devices)
            return [d.id for d in reply.devices]

        assert await listed(common_pb2.HEALTH_DISABLED) == [device_id]
        assert await listed(common_pb2.HEALTH_SERVING) == []

        enabled = await a.fleet.EnableDevice(action(device_id), metadata=a.admin)
        assert not enabled.HasField("disabled_at")
        assert enabled.health == common_pb2.HEALTH_SERVING
        assert (await listed(common_pb2.HEALTH_DISABLED), await listed(common_pb2.HEALTH_SERVING)) == ([], [device_id])
        for fleet in (b, a):
            assert (await fleet.sync(credential, wait_s=0)).desired.revision >= 1


async def test_deleted_device_is_refused_at_once_on_both_replicas_and_its_name_enrolls_again(
    tmp_path: Path, store_url: str
) -> None:
    async with two_replicas(tmp_path, store_url) as (a, b):
        key = generate_keypair("publisher")
        await a.trust(key)
        bundle = (await a.push(publish_bundle(tmp_path / "bundle", key))).bundle.digest
        device_id, credential = await a.enroll("lab", "cam-1", tags={"zone": "n"})
        await a.fleet.SetDesiredBundle(
            fleet_pb2.SetDesiredBundleRequest(device=device_id, bundle=bundle), metadata=a.admin
        )
        event = telemetry_pb2.DeviceEvent(event_id="e1", kind=telemetry_pb2.DeviceEvent.KIND_ALERT, reason="hot")
        await b.device.ReportEvent(device_pb2.ReportEventRequest(events=[event]), metadata=bearer(credential))
        await b.sync(credential, wait_s=0)
        await refused(  # the device's desired state holds the bundle
            a.fleet.DeleteBundle(fleet_pb2.DeleteBundleRequest(ref=bundle), metadata=a.admin),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        deleted = await a.fleet.DeleteDevice(action("cam-1"), metadata=a.admin)
        assert (deleted.device_id, deleted.name) == (device_id, "cam-1")
        for fleet in (b, a):
            await refused(fleet.sync(credential, wait_s=0), grpc.StatusCode.UNAUTHENTICATED)
        await refused(
            b.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device=device_id), metadata=b.admin),
            grpc.StatusCode.NOT_FOUND,
        )
        await refused(b.fleet.DeleteDevice(action(device_id), metadata=b.admin), grpc.StatusCode.NOT_FOUND)
        listed = await b.fleet.ListDevices(fleet_pb2.ListDevicesRequest(tags=["zone=n"]), metadata=b.admin)
        assert listed.total == 0  # its tags went with it
        await b.fleet.DeleteBundle(fleet_pb2.DeleteBundleRequest(ref=bundle), metadata=b.admin)  # no refs left
        new_id, new_credential = await b.enroll("lab", "cam-1")
        assert new_id != device_id
        assert (await a.sync(new_credential, wait_s=0)).changed
        await refused(a.sync(credential, wait_s=0), grpc.StatusCode.UNAUTHENTICATED)


def event_batch(seq: int) -> telemetry_pb2.TelemetryBatch:
    event = telemetry_pb2.DeviceEvent(event_id=f"e{seq}", kind=telemetry_pb2.DeviceEvent.KIND_ALERT, reason="hot")
    record = telemetry_pb2.TelemetryRecord(seq=seq, event=event)
    return telemetry_pb2.TelemetryBatch(epoch="ep", first_seq=seq, last_seq=seq, records=[record])


async def test_a_sync_parked_when_its_device_is_deleted_ends_unauthenticated_as_every_later_call(
    tmp_path: Path, store_url: str
) -> None:
    async with two_replicas(tmp_path, store_url) as (a, b):
        _, credential = await a.enroll("lab", "cam-1")
        revision = (await a.sync(credential, wait_s=0)).desired.revision
        stream = b.device.UploadTelemetry(metadata=bearer(credential))  # open across the deletion
        await stream.write(event_batch(1))
        assert (await stream.read()).acked_through == 1
        parked = asyncio.create_task(a.sync(credential, known_revision=revision, wait_s=60))
        await asyncio.sleep(0.5)
        # held in its long-poll, on the replica that deletes (SQLite replicas do not wake each other)
        assert not parked.done()
        await a.fleet.DeleteDevice(action("cam-1"), metadata=a.admin)
        details = await refused(asyncio.wait_for(parked, 10), grpc.StatusCode.UNAUTHENTICATED)
        assert details == DEVICE_GONE  # woken at once, and told what the next call is told: not NOT_FOUND
        assert "deleted by an operator" in details and "re-enroll" in details
        await stream.write(event_batch(2))  # the open upload's next batch: the same answer
        assert await refused(stream.read(), grpc.StatusCode.UNAUTHENTICATED) == DEVICE_GONE
        event = event_batch(3).records[0].event
        for fleet in (b, a):
            assert await refused(fleet.sync(credential, wait_s=0), grpc.StatusCode.UNAUTHENTICATED) == DEVICE_GONE
            report = fleet.device.ReportEvent(
                device_pb2.ReportEventRequest(events=[event]), metadata=bearer(credential)
            )
            assert await refused(report, grpc.StatusCode.UNAUTHENTICATED) == DEVICE_GONE
            upload = fleet.device.UploadTelemetry(iter([event_batch(3)]), metadata=bearer(credential))
            assert await refused(upload.read(), grpc.StatusCode.UNAUTHENTICATED) == DEVICE_GONE


async def test_rotated_credential_old_refused_new_accepted_on_both_replicas(tmp_path: Path, store_url: str) -> None:
    async with two_replicas(tmp_path, store_url) as (a, b):
        device_id, old = await a.enroll("lab", "cam-1")
        await b.sync(old, wait_s=0)
        rotated = await a.fleet.RotateDeviceCredential(action(device_id), metadata=a.admin)
        new = rotated.credential
        assert rotated.device.id == device_id and new.startswith(f"edc_{device_id}.") and new != old
        for fleet in (b, a):
            await refused(fleet.sync(old, wait_s=0), grpc.StatusCode.UNAUTHENTICATED)
            assert (await fleet.sync(new, wait_s=0)).desired.revision >= 1


async def test_operator_tokens_default_to_90_days_and_list_shows_last_use(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as ctrl, connected(ctrl) as fleet:
        before = datetime.now(UTC)
        default = await fleet.fleet.CreateOperatorToken(
            fleet_pb2.CreateOperatorTokenRequest(name="ci", role="operator"), metadata=fleet.admin
        )
        expires = default.expires_at.ToDatetime(tzinfo=UTC)
        assert timedelta(seconds=DEFAULT_OPERATOR_TTL_S - 60) < expires - before < timedelta(days=90, minutes=1)
        forever = await fleet.fleet.CreateOperatorToken(
            fleet_pb2.CreateOperatorTokenRequest(name="break-glass", role="admin", no_expiry=True),
            metadata=fleet.admin,
        )
        assert not forever.HasField("expires_at")
        await refused(
            fleet.fleet.CreateOperatorToken(
                fleet_pb2.CreateOperatorTokenRequest(name="both", ttl_s=60, no_expiry=True), metadata=fleet.admin
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        for bad in ("evil\u202etxt.exe", "ci\nroot", "nul\x00"):
            details = await refused(
                fleet.fleet.CreateOperatorToken(
                    fleet_pb2.CreateOperatorTokenRequest(name=bad, role="viewer"), metadata=fleet.admin
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert "CreateOperatorTokenRequest.name" in details and details.isprintable(), details
        listed = {
            t.id: t
            for t in (
                await fleet.fleet.ListOperatorTokens(fleet_pb2.ListOperatorTokensRequest(), metadata=fleet.admin)
            ).tokens
        }
        assert {"ci", "break-glass"} <= {t.name for t in listed.values()} and len(listed) == 3, listed  # + bootstrap
        assert "both" not in {t.name for t in listed.values()}  # the refused requests stored nothing
        assert not listed[default.token_id].HasField("last_used_at")
        assert not listed[forever.token_id].HasField("expires_at")
        await fleet.fleet.ListSites(fleet_pb2.ListSitesRequest(), metadata=bearer(default.token))
        after = {
            t.id: t
            for t in (
                await fleet.fleet.ListOperatorTokens(fleet_pb2.ListOperatorTokensRequest(), metadata=fleet.admin)
            ).tokens
        }
        used = after[default.token_id].last_used_at.ToDatetime(tzinfo=UTC)
        assert before - timedelta(seconds=1) <= used <= datetime.now(UTC)
        assert not after[forever.token_id].HasField("last_used_at")


async def test_viewers_and_operators_cannot_revoke_and_unknown_ids_change_nothing(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as ctrl, connected(ctrl) as fleet:
        device_id, credential = await fleet.enroll("lab", "cam-1")
        tokens_before = (
            await fleet.fleet.ListOperatorTokens(fleet_pb2.ListOperatorTokensRequest(), metadata=fleet.admin)
        ).tokens
        for role in ("viewer", "operator"):
            _, token = await fleet.operator_token(role)
            md = bearer(token)
            stub = fleet.fleet
            for call in (
                stub.ListOperatorTokens(fleet_pb2.ListOperatorTokensRequest(), metadata=md),
                stub.RevokeOperatorToken(
                    fleet_pb2.RevokeOperatorTokenRequest(token_id=tokens_before[0].id), metadata=md
                ),
                stub.DisableDevice(action(device_id), metadata=md),
                stub.EnableDevice(action(device_id), metadata=md),
                stub.DeleteDevice(action(device_id), metadata=md),
                stub.RotateDeviceCredential(action(device_id), metadata=md),
            ):
                assert "needs admin" in await refused(call, grpc.StatusCode.PERMISSION_DENIED)
        for call in (
            fleet.fleet.RevokeOperatorToken(
                fleet_pb2.RevokeOperatorTokenRequest(token_id="0123456789abcdef"), metadata=fleet.admin
            ),
            fleet.fleet.DisableDevice(action("dev_0000000000000000"), metadata=fleet.admin),
            fleet.fleet.DeleteDevice(action("no-such-camera"), metadata=fleet.admin),
            fleet.fleet.RotateDeviceCredential(action("dev_0000000000000000"), metadata=fleet.admin),
        ):
            await refused(call, grpc.StatusCode.NOT_FOUND)
        tokens_after = (
            await fleet.fleet.ListOperatorTokens(fleet_pb2.ListOperatorTokensRequest(), metadata=fleet.admin)
        ).tokens
        assert [t.revoked_at for t in tokens_after[: len(tokens_before)]] == [t.revoked_at for t in tokens_before]
        assert all(not t.HasField("revoked_at") for t in tokens_after)
        # the device was never touched: its credential still works, it is not disabled
        assert (await fleet.sync(credential, wait_s=0)).desired.revision >= 1
        got = await fleet.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device=device_id), metadata=fleet.admin)
        assert not got.HasField("disabled_at")


async def test_the_last_admin_token_is_revoked_only_when_asked_and_a_restart_recovers(tmp_path: Path) -> None:
    async def revoke(fleet: Fleet, token_id: str, allow: bool = False) -> fleet_pb2.OperatorToken:
        request = fleet_pb2.RevokeOperatorTokenRequest(token_id=token_id, allow_last_admin=allow)
        return await fleet.fleet.RevokeOperatorToken(request, metadata=fleet.admin)

    async with running_controller(tmp_path) as ctrl, connected(ctrl) as fleet:
        listed = await fleet.fleet.ListOperatorTokens(fleet_pb2.ListOperatorTokensRequest(), metadata=fleet.admin)
        (bootstrap,) = [t.id for t in listed.tokens if t.role == "admin"]
        details = await refused(revoke(fleet, bootstrap), grpc.StatusCode.FAILED_PRECONDITION)
        assert "last unexpired, unrevoked admin token" in details and "--force-last-admin" in details
        assert f"restart the controller: it writes a new bootstrap admin token to {tmp_path / 'admin.token'}" in details
        await fleet.fleet.ListSites(fleet_pb2.ListSitesRequest(), metadata=fleet.admin)  # nothing was revoked

        other_id, other = await fleet.operator_token("admin", "second-admin")
        assert (await revoke(fleet, bootstrap)).HasField("revoked_at")  # another admin is left
        second = Fleet(fleet.channel, other)
        await refused(revoke(second, other_id), grpc.StatusCode.FAILED_PRECONDITION)
        assert (await revoke(second, other_id, allow=True)).HasField("revoked_at")
        await refused(
            fleet.fleet.ListSites(fleet_pb2.ListSitesRequest(), metadata=bearer(other)), grpc.StatusCode.UNAUTHENTICATED
        )
    async with running_controller(tmp_path) as ctrl, connected(ctrl) as fleet:  # the documented recovery
        assert fleet.admin_token not in ("", other)
        await fleet.fleet.ListSites(fleet_pb2.ListSitesRequest(), metadata=fleet.admin)


async def test_a_disable_twice_keeps_its_time_survives_a_restart_and_a_second_rotation_refuses_both_old(
    tmp_path: Path,
) -> None:
    async with running_controller(tmp_path) as ctrl, connected(ctrl) as fleet:
        device_id, credential = await fleet.enroll("lab", "cam-1")
        first = await fleet.fleet.DisableDevice(action("cam-1"), metadata=fleet.admin)
        again = await fleet.fleet.DisableDevice(action(device_id), metadata=fleet.admin)
        assert again.disabled_at == first.disabled_at  # a second disable keeps the first time
    async with running_controller(tmp_path) as ctrl, connected(ctrl) as fleet:  # a fresh cache, same database
        await refused(fleet.sync(credential, wait_s=0), grpc.StatusCode.PERMISSION_DENIED)
        for _ in range(2):
            assert not (await fleet.fleet.EnableDevice(action("cam-1"), metadata=fleet.admin)).HasField("disabled_at")
        await fleet.sync(credential, wait_s=0)
        rotated = [
            (await fleet.fleet.RotateDeviceCredential(action("cam-1"), metadata=fleet.admin)).credential
            for _ in range(2)
        ]
        for old in (credential, rotated[0]):
            await refused(fleet.sync(old, wait_s=0), grpc.StatusCode.UNAUTHENTICATED)
        await fleet.sync(rotated[1], wait_s=0)
