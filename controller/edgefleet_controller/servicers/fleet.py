"""FleetService: the operators' and generic clients' calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from edgefleet.contract.request_bounds import MAX_RESPONSE_BYTES
from edgefleet.v1 import common_pb2, fleet_pb2, fleet_pb2_grpc
from edgefleet_controller.auth.revocation import DeviceRevocation
from edgefleet_controller.auth.service import AuthService
from edgefleet_controller.bundles.service import BundleService
from edgefleet_controller.configs.service import ConfigService, ManifestFile
from edgefleet_controller.devices.service import DeviceFilter, DeviceService
from edgefleet_controller.errors import InvalidArgument, timestamp_arg
from edgefleet_controller.fleet_feed import FleetFeed
from edgefleet_controller.interceptor import current_principal
from edgefleet_controller.rollout.service import RolloutService
from edgefleet_controller.servicers import convert
from edgefleet_controller.telemetry.device_events import DeviceEventService
from edgefleet_controller.telemetry.service import TelemetryService

Ctx = grpc.aio.ServicerContext[Any, Any]

#: How long a client-streaming call waits, after its request stream ended, for a cancellation to arrive.
#: grpc.aio ends the request iterator the same way whether the client half-closed or the call was cancelled
#: (or its connection dropped); the cancellation reaches the handler at its next await, measured within
#: 0.3 ms on loopback. Waiting this long before acting on "the stream ended" keeps an abandoned upload from
#: being taken for a finished one.
STREAM_SETTLE_S = 0.05
#: A ListDevices answer stays under the controller's send limit: a page whose devices (each bounded by
#: request_bounds: under 1 MiB even when hostile) reach this many bytes is cut short, its token resuming there.
LIST_DEVICES_BYTES = MAX_RESPONSE_BYTES - (1 << 20)


async def confirm_half_close(context: Ctx) -> None:
    """Return once the request stream's end is a half-close; raise ``CancelledError`` if it was a cancel."""
    await asyncio.sleep(STREAM_SETTLE_S)
    if context.cancelled():
        raise asyncio.CancelledError("the client cancelled the call or its connection dropped")


@dataclass(eq=False)
class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    devices: DeviceService
    bundles: BundleService
    configs: ConfigService
    auth: AuthService
    events: DeviceEventService
    rollouts: RolloutService
    telemetry: TelemetryService
    feed: FleetFeed
    revocation: DeviceRevocation

    # bundles
    async def PushBundle(
        self, request_iterator: AsyncIterator[fleet_pb2.PushBundleRequest], context: Ctx
    ) -> fleet_pb2.PushBundleResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("PushBundle: the first message must be a header (manifest + signature)")

        async def chunks() -> AsyncIterator[tuple[str, bytes]]:
            async for req in request_iterator:
                if not req.HasField("chunk"):
                    raise InvalidArgument("PushBundle: only the first message may be a header")
                yield req.chunk.digest, req.chunk.data
            await confirm_half_close(context)

        pushed = await self.bundles.push(first.header.manifest, first.header.signature, chunks())
        return fleet_pb2.PushBundleResponse(
            bundle=convert.bundle_summary(pushed.bundle),
            created=pushed.created,
            deduplicated_artifacts=pushed.deduplicated,
            restored_artifacts=pushed.restored,
        )

    async def ListBundles(self, request: fleet_pb2.ListBundlesRequest, context: Ctx) -> fleet_pb2.ListBundlesResponse:
        records = await self.bundles.list_bundles(request.name)
        return fleet_pb2.ListBundlesResponse(bundles=[convert.bundle_summary(r) for r in records])

    async def GetBundle(self, request: fleet_pb2.GetBundleRequest, context: Ctx) -> fleet_pb2.GetBundleResponse:
        detail = await self.bundles.get_bundle(request.ref)
        return fleet_pb2.GetBundleResponse(
            bundle=convert.bundle_summary(detail.bundle),
            manifest=detail.bundle.manifest,
            signature=detail.bundle.signature,
            artifacts=convert.artifact_refs(detail.manifest.artifacts.values()),
            running_devices=detail.running_devices,
            canary_failures=[convert.bundle_failure(f) for f in detail.failures],
            quarantined_blobs=[convert.quarantined_blob(q) for q in detail.quarantined],
        )

    async def DeleteBundle(
        self, request: fleet_pb2.DeleteBundleRequest, context: Ctx
    ) -> fleet_pb2.DeleteBundleResponse:
        await self.bundles.delete_bundle(request.ref)
        return fleet_pb2.DeleteBundleResponse()

    # configs
    async def ApplyConfig(self, request: fleet_pb2.ApplyConfigRequest, context: Ctx) -> fleet_pb2.ApplyConfigResponse:
        outcome = await self.configs.apply(
            [ManifestFile(f.name, f.content) for f in request.files],
            stage=request.stage,
            dry_run=request.dry_run,
            applied_by=current_principal().name,
        )
        return fleet_pb2.ApplyConfigResponse(
            revision=outcome.revision,
            results=outcome.results,
            devices_changed=outcome.devices_changed,
            rollout_ids=outcome.rollout_ids,
        )

    async def GetEffectiveConfig(
        self, request: fleet_pb2.GetEffectiveConfigRequest, context: Ctx
    ) -> fleet_pb2.GetEffectiveConfigResponse:
        found = await self.configs.device_config(request.device)
        return fleet_pb2.GetEffectiveConfigResponse(
            device_id=found.device.id,
            digest=found.config.digest,
            config_json=found.config.to_json_bytes(),
            sources=list(found.resolved.layers),
            values=[
                fleet_pb2.ConfigValueSource(path=leaf.dotted, value_json=leaf.value_json, layer=leaf.layer)
                for leaf in found.resolved.leaves
            ],
        )

    async def SetDesiredBundle(
        self, request: fleet_pb2.SetDesiredBundleRequest, context: Ctx
    ) -> fleet_pb2.SetDesiredBundleResponse:
        target = request.WhichOneof("target")
        revisions = await self.devices.set_desired_bundle(
            request.bundle, device=request.device if target == "device" else None, site=request.site
        )
        return fleet_pb2.SetDesiredBundleResponse(revisions=revisions)

    # fleet
    async def ListDevices(self, request: fleet_pb2.ListDevicesRequest, context: Ctx) -> fleet_pb2.ListDevicesResponse:
        wanted = DeviceFilter(
            site=request.site,
            tags=list(request.tags),
            bundle=request.bundle,
            health=convert.health_filter(request.health),
            seen_since=timestamp_arg(request.seen_since, "seen_since") if request.HasField("seen_since") else None,
            page_size=request.page_size,
            page_token=request.page_token or None,
        )
        views, token, total = await self.devices.list_devices(wanted)
        devices = [convert.device_message(v) for v in views]
        size = 0
        for i, device in enumerate(devices):
            size += device.ByteSize() + 8  # + the field's tag and length
            if size > LIST_DEVICES_BYTES and i > 0:  # cut short: the next page starts at this device
                devices, token = devices[:i], self.devices.page_token_after(devices[i - 1].id)
                break
        return fleet_pb2.ListDevicesResponse(devices=devices, next_page_token=token or "", total=total)

    async def GetDevice(self, request: fleet_pb2.GetDeviceRequest, context: Ctx) -> common_pb2.Device:
        return convert.device_message(await self.devices.get_device(request.device))

    async def ListSites(self, request: fleet_pb2.ListSitesRequest, context: Ctx) -> fleet_pb2.ListSitesResponse:
        return fleet_pb2.ListSitesResponse(sites=[convert.site_message(s) for s in await self.devices.list_sites()])

    async def WatchFleet(
        self, request: fleet_pb2.WatchFleetRequest, context: Ctx
    ) -> AsyncIterator[fleet_pb2.FleetEvent]:
        # Subscribe before the snapshot so no change between the two is missed; the initial metadata tells
        # the client it is subscribed (a client may wait for it before making a change it wants to see).
        with self.feed.subscribe() as updates:
            await context.send_initial_metadata(())
            if request.snapshot:
                wanted = DeviceFilter(site=request.site, page_size=1000)
                while True:
                    views, token, _ = await self.devices.list_devices(wanted)
                    for view in views:
                        device = convert.device_message(view)
                        yield fleet_pb2.FleetEvent(kind=fleet_pb2.FleetEvent.KIND_SNAPSHOT, device=device)
                    if not token:
                        break
                    wanted = DeviceFilter(site=request.site, page_size=1000, page_token=token)
            async for event in updates:
                if request.site and event.device.site != request.site:
                    continue
                yield event

    async def ListDeviceEvents(
        self, request: fleet_pb2.ListDeviceEventsRequest, context: Ctx
    ) -> fleet_pb2.ListDeviceEventsResponse:
        return fleet_pb2.ListDeviceEventsResponse(events=await self.events.list_events(request.device, request.limit))

    # administration
    async def CreateEnrollmentToken(
        self, request: fleet_pb2.CreateEnrollmentTokenRequest, context: Ctx
    ) -> fleet_pb2.CreateEnrollmentTokenResponse:
        rec, secret = await self.auth.create_enrollment_token(
            request.site, ttl_s=request.ttl_s, max_uses=request.max_uses or None, created_by=current_principal().name
        )
        return fleet_pb2.CreateEnrollmentTokenResponse(
            token_id=rec.id, token=secret, expires_at=convert.to_timestamp(rec.expires_at)
        )

    async def RevokeEnrollmentToken(
        self, request: fleet_pb2.RevokeEnrollmentTokenRequest, context: Ctx
    ) -> fleet_pb2.RevokeEnrollmentTokenResponse:
        await self.auth.revoke_enrollment_token(request.token_id)
        return fleet_pb2.RevokeEnrollmentTokenResponse()

    async def CreateOperatorToken(
        self, request: fleet_pb2.CreateOperatorTokenRequest, context: Ctx
    ) -> fleet_pb2.CreateOperatorTokenResponse:
        rec, secret = await self.auth.create_operator_token(
            request.name, request.role, request.ttl_s, no_expiry=request.no_expiry
        )
        response = fleet_pb2.CreateOperatorTokenResponse(token_id=rec.id, token=secret)
        if rec.expires_at is not None:
            response.expires_at.FromDatetime(rec.expires_at)
        return response

    async def ListOperatorTokens(
        self, request: fleet_pb2.ListOperatorTokensRequest, context: Ctx
    ) -> fleet_pb2.ListOperatorTokensResponse:
        records = await self.auth.list_operator_tokens()
        return fleet_pb2.ListOperatorTokensResponse(tokens=[convert.operator_token(r) for r in records])

    async def RevokeOperatorToken(
        self, request: fleet_pb2.RevokeOperatorTokenRequest, context: Ctx
    ) -> fleet_pb2.OperatorToken:
        rec = await self.auth.revoke_operator_token(request.token_id, allow_last_admin=request.allow_last_admin)
        return convert.operator_token(rec)

    async def DisableDevice(self, request: fleet_pb2.DeviceActionRequest, context: Ctx) -> common_pb2.Device:
        rec = await self.revocation.disable(request.device, by=current_principal().name)
        return convert.device_message(self.devices.view(rec))

    async def EnableDevice(self, request: fleet_pb2.DeviceActionRequest, context: Ctx) -> common_pb2.Device:
        rec = await self.revocation.enable(request.device, by=current_principal().name)
        return convert.device_message(self.devices.view(rec))

    async def DeleteDevice(
        self, request: fleet_pb2.DeviceActionRequest, context: Ctx
    ) -> fleet_pb2.DeleteDeviceResponse:
        rec = await self.revocation.delete(request.device, by=current_principal().name)
        return fleet_pb2.DeleteDeviceResponse(device_id=rec.id, name=rec.name)

    async def RotateDeviceCredential(
        self, request: fleet_pb2.DeviceActionRequest, context: Ctx
    ) -> fleet_pb2.RotateDeviceCredentialResponse:
        rec, credential = await self.revocation.rotate(request.device, by=current_principal().name)
        return fleet_pb2.RotateDeviceCredentialResponse(
            device=convert.device_message(self.devices.view(rec)), credential=credential
        )

    async def AddTrustedKey(
        self, request: fleet_pb2.AddTrustedKeyRequest, context: Ctx
    ) -> fleet_pb2.AddTrustedKeyResponse:
        return fleet_pb2.AddTrustedKeyResponse(
            key_id=await self.auth.add_trusted_key(request.key_id, request.public_key_pem)
        )

    async def ListTrustedKeys(
        self, request: fleet_pb2.ListTrustedKeysRequest, context: Ctx
    ) -> fleet_pb2.ListTrustedKeysResponse:
        return fleet_pb2.ListTrustedKeysResponse(
            keys=[convert.trusted_key(r) for r in await self.auth.list_trusted_keys()]
        )

    # rollouts
    async def CreateRollout(self, request: fleet_pb2.CreateRolloutRequest, context: Ctx) -> fleet_pb2.Rollout:
        return await self.rollouts.create(request, requested_by=current_principal().name)

    async def GetRollout(self, request: fleet_pb2.GetRolloutRequest, context: Ctx) -> fleet_pb2.Rollout:
        return await self.rollouts.get(request.id)

    async def ListRollouts(
        self, request: fleet_pb2.ListRolloutsRequest, context: Ctx
    ) -> fleet_pb2.ListRolloutsResponse:
        return await self.rollouts.list(list(request.phases))

    async def WatchRollout(
        self, request: fleet_pb2.GetRolloutRequest, context: Ctx
    ) -> AsyncIterator[fleet_pb2.Rollout]:
        async for rollout in self.rollouts.watch(request.id):
            yield rollout

    async def PauseRollout(self, request: fleet_pb2.RolloutActionRequest, context: Ctx) -> fleet_pb2.Rollout:
        return await self.rollouts.pause(request.id, request.reason, requested_by=current_principal().name)

    async def ResumeRollout(self, request: fleet_pb2.RolloutActionRequest, context: Ctx) -> fleet_pb2.Rollout:
        return await self.rollouts.resume(request.id, request.reason, requested_by=current_principal().name)

    async def ApproveRollout(self, request: fleet_pb2.RolloutActionRequest, context: Ctx) -> fleet_pb2.Rollout:
        return await self.rollouts.approve(request.id, request.reason, requested_by=current_principal().name)

    async def AbortRollout(self, request: fleet_pb2.RolloutActionRequest, context: Ctx) -> fleet_pb2.Rollout:
        return await self.rollouts.abort(request.id, request.reason, requested_by=current_principal().name)

    async def QueryTelemetry(
        self, request: fleet_pb2.QueryTelemetryRequest, context: Ctx
    ) -> fleet_pb2.QueryTelemetryResponse:
        return await self.telemetry.query(request)

    async def ListReviewSamples(
        self, request: fleet_pb2.ListReviewSamplesRequest, context: Ctx
    ) -> fleet_pb2.ListReviewSamplesResponse:
        return await self.telemetry.list_review(request)

    async def LabelReviewSample(
        self, request: fleet_pb2.LabelReviewSampleRequest, context: Ctx
    ) -> fleet_pb2.ReviewSampleInfo:
        return await self.telemetry.label(request, labeled_by=current_principal().name)

    async def DeleteTelemetry(
        self, request: fleet_pb2.DeleteTelemetryRequest, context: Ctx
    ) -> fleet_pb2.DeleteTelemetryResponse:
        return await self.telemetry.delete(request, deleted_by=current_principal().name)

    async def ListProfiles(
        self, request: fleet_pb2.ListProfilesRequest, context: Ctx
    ) -> fleet_pb2.ListProfilesResponse:
        rows, refs = await self.events.list_profiles(list(request.bundles), request.hardware_class)
        return fleet_pb2.ListProfilesResponse(profiles=[convert.profile_summary(row, refs) for row in rows])
