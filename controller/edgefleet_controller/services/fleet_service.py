"""FleetService: the operators' and generic clients' calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from edgefleet.v1 import common_pb2, fleet_pb2, fleet_pb2_grpc
from edgefleet_controller.app import ControllerApp
from edgefleet_controller.interceptor import current_principal

Ctx = grpc.aio.ServicerContext[Any, Any]


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, app: ControllerApp) -> None:
        self.app = app

    # bundles
    async def PushBundle(
        self, request_iterator: AsyncIterator[fleet_pb2.PushBundleRequest], context: Ctx
    ) -> fleet_pb2.PushBundleResponse:
        return await self.app.push_bundle(request_iterator)

    async def ListBundles(self, request: fleet_pb2.ListBundlesRequest, context: Ctx) -> fleet_pb2.ListBundlesResponse:
        return fleet_pb2.ListBundlesResponse(bundles=await self.app.list_bundles(request.name))

    async def GetBundle(self, request: fleet_pb2.GetBundleRequest, context: Ctx) -> fleet_pb2.GetBundleResponse:
        return await self.app.get_bundle(request.ref)

    async def DeleteBundle(
        self, request: fleet_pb2.DeleteBundleRequest, context: Ctx
    ) -> fleet_pb2.DeleteBundleResponse:
        await self.app.delete_bundle(request.ref)
        return fleet_pb2.DeleteBundleResponse()

    # configs
    async def ApplyConfig(self, request: fleet_pb2.ApplyConfigRequest, context: Ctx) -> fleet_pb2.ApplyConfigResponse:
        return await self.app.apply_config(request, current_principal().name)

    async def GetEffectiveConfig(
        self, request: fleet_pb2.GetEffectiveConfigRequest, context: Ctx
    ) -> fleet_pb2.GetEffectiveConfigResponse:
        return await self.app.get_effective_config(request.device)

    async def SetDesiredBundle(
        self, request: fleet_pb2.SetDesiredBundleRequest, context: Ctx
    ) -> fleet_pb2.SetDesiredBundleResponse:
        return fleet_pb2.SetDesiredBundleResponse(revisions=await self.app.set_desired_bundle(request))

    # fleet
    async def ListDevices(self, request: fleet_pb2.ListDevicesRequest, context: Ctx) -> fleet_pb2.ListDevicesResponse:
        return await self.app.list_devices(request)

    async def GetDevice(self, request: fleet_pb2.GetDeviceRequest, context: Ctx) -> common_pb2.Device:
        return await self.app.get_device(request.device)

    async def ListSites(self, request: fleet_pb2.ListSitesRequest, context: Ctx) -> fleet_pb2.ListSitesResponse:
        return fleet_pb2.ListSitesResponse(sites=await self.app.list_sites())

    async def WatchFleet(
        self, request: fleet_pb2.WatchFleetRequest, context: Ctx
    ) -> AsyncIterator[fleet_pb2.FleetEvent]:
        # Subscribe before the snapshot so no change between the two is missed; the initial metadata tells
        # the client it is subscribed (a client may wait for it before making a change it wants to see).
        with self.app.feed.subscribe() as updates:
            await context.send_initial_metadata(())
            if request.snapshot:
                page_request = fleet_pb2.ListDevicesRequest(site=request.site, page_size=1000)
                while True:
                    page = await self.app.list_devices(page_request)
                    for device in page.devices:
                        yield fleet_pb2.FleetEvent(kind=fleet_pb2.FleetEvent.KIND_SNAPSHOT, device=device)
                    if not page.next_page_token:
                        break
                    page_request.page_token = page.next_page_token
            async for event in updates:
                if request.site and event.device.site != request.site:
                    continue
                yield event

    async def ListDeviceEvents(
        self, request: fleet_pb2.ListDeviceEventsRequest, context: Ctx
    ) -> fleet_pb2.ListDeviceEventsResponse:
        return fleet_pb2.ListDeviceEventsResponse(events=await self.app.list_events(request.device, request.limit))

    # administration
    async def CreateEnrollmentToken(
        self, request: fleet_pb2.CreateEnrollmentTokenRequest, context: Ctx
    ) -> fleet_pb2.CreateEnrollmentTokenResponse:
        return await self.app.create_enrollment_token(request, current_principal().name)

    async def RevokeEnrollmentToken(
        self, request: fleet_pb2.RevokeEnrollmentTokenRequest, context: Ctx
    ) -> fleet_pb2.RevokeEnrollmentTokenResponse:
        await self.app.revoke_enrollment_token(request.token_id)
        return fleet_pb2.RevokeEnrollmentTokenResponse()

    async def CreateOperatorToken(
        self, request: fleet_pb2.CreateOperatorTokenRequest, context: Ctx
    ) -> fleet_pb2.CreateOperatorTokenResponse:
        return await self.app.create_operator_token(request)

    async def AddTrustedKey(
        self, request: fleet_pb2.AddTrustedKeyRequest, context: Ctx
    ) -> fleet_pb2.AddTrustedKeyResponse:
        return fleet_pb2.AddTrustedKeyResponse(
            key_id=await self.app.add_trusted_key(request.key_id, request.public_key_pem)
        )

    async def ListTrustedKeys(
        self, request: fleet_pb2.ListTrustedKeysRequest, context: Ctx
    ) -> fleet_pb2.ListTrustedKeysResponse:
        return fleet_pb2.ListTrustedKeysResponse(keys=await self.app.list_trusted_keys())

    async def CreateRollout(self, request: fleet_pb2.CreateRolloutRequest, context: Ctx) -> fleet_pb2.Rollout:
        return await self.app.rollouts.create(request, requested_by=current_principal().name)

    async def GetRollout(self, request: fleet_pb2.GetRolloutRequest, context: Ctx) -> fleet_pb2.Rollout:
        return await self.app.rollouts.get(request.id)

    async def ListRollouts(
        self, request: fleet_pb2.ListRolloutsRequest, context: Ctx
    ) -> fleet_pb2.ListRolloutsResponse:
        return await self.app.rollouts.list(list(request.phases))

    async def WatchRollout(
        self, request: fleet_pb2.GetRolloutRequest, context: Ctx
    ) -> AsyncIterator[fleet_pb2.Rollout]:
        async for rollout in self.app.rollouts.watch(request.id):
            yield rollout

    async def PauseRollout(self, request: fleet_pb2.RolloutActionRequest, context: Ctx) -> fleet_pb2.Rollout:
        return await self.app.rollouts.pause(request.id, request.reason, requested_by=current_principal().name)

    async def ResumeRollout(self, request: fleet_pb2.RolloutActionRequest, context: Ctx) -> fleet_pb2.Rollout:
        return await self.app.rollouts.resume(request.id, request.reason, requested_by=current_principal().name)

    async def ApproveRollout(self, request: fleet_pb2.RolloutActionRequest, context: Ctx) -> fleet_pb2.Rollout:
        return await self.app.rollouts.approve(request.id, request.reason, requested_by=current_principal().name)

    async def AbortRollout(self, request: fleet_pb2.RolloutActionRequest, context: Ctx) -> fleet_pb2.Rollout:
        return await self.app.rollouts.abort(request.id, request.reason, requested_by=current_principal().name)

    async def QueryTelemetry(
        self, request: fleet_pb2.QueryTelemetryRequest, context: Ctx
    ) -> fleet_pb2.QueryTelemetryResponse:
        return await self.app.telemetry.query(request)

    async def ListReviewSamples(
        self, request: fleet_pb2.ListReviewSamplesRequest, context: Ctx
    ) -> fleet_pb2.ListReviewSamplesResponse:
        return await self.app.telemetry.list_review(request)

    async def LabelReviewSample(
        self, request: fleet_pb2.LabelReviewSampleRequest, context: Ctx
    ) -> fleet_pb2.ReviewSampleInfo:
        return await self.app.telemetry.label(request, labeled_by=current_principal().name)

    async def ListProfiles(
        self, request: fleet_pb2.ListProfilesRequest, context: Ctx
    ) -> fleet_pb2.ListProfilesResponse:
        return await self.app.list_profiles(request)
