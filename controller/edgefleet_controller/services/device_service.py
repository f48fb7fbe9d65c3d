"""DeviceService: the calls edge runtimes make. The device id always comes from the credential."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from edgefleet.v1 import device_pb2, device_pb2_grpc, telemetry_pb2
from edgefleet_controller.app import ControllerApp
from edgefleet_controller.interceptor import current_principal

Ctx = grpc.aio.ServicerContext[Any, Any]


class DeviceServicer(device_pb2_grpc.DeviceServiceServicer):
    def __init__(self, app: ControllerApp) -> None:
        self.app = app

    async def Enroll(self, request: device_pb2.EnrollRequest, context: Ctx) -> device_pb2.EnrollResponse:
        return await self.app.enroll(request)

    async def Sync(self, request: device_pb2.SyncRequest, context: Ctx) -> device_pb2.SyncResponse:
        return await self.app.sync(current_principal().device_id, request)

    async def FetchBlob(
        self, request: device_pb2.FetchBlobRequest, context: Ctx
    ) -> AsyncIterator[device_pb2.BlobChunk]:
        async for chunk in self.app.fetch_blob(current_principal().device_id, request):
            yield chunk

    async def ReportEvent(self, request: device_pb2.ReportEventRequest, context: Ctx) -> device_pb2.ReportEventResponse:
        principal = current_principal()
        stored = await self.app.report_events(principal.device_id, request.events, principal.site)
        return device_pb2.ReportEventResponse(accepted=stored)

    async def UploadTelemetry(
        self, request_iterator: AsyncIterator[telemetry_pb2.TelemetryBatch], context: Ctx
    ) -> AsyncIterator[telemetry_pb2.TelemetryAck]:
        device_id = current_principal().device_id
        async for ack in self.app.ingest_telemetry(device_id, request_iterator):
            yield ack
