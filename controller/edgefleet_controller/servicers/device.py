"""DeviceService: the calls edge runtimes make. The device id always comes from the credential; a call whose
device is found gone (deleted while it ran) is UNAUTHENTICATED like the next call (``own_device_call``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from edgefleet.v1 import device_pb2, device_pb2_grpc, telemetry_pb2
from edgefleet_controller.auth.service import own_device_call
from edgefleet_controller.bundles.service import BundleService
from edgefleet_controller.devices.service import DeviceService
from edgefleet_controller.interceptor import current_principal
from edgefleet_controller.servicers import convert
from edgefleet_controller.telemetry.device_events import DeviceEventService
from edgefleet_controller.telemetry.service import TelemetryService

Ctx = grpc.aio.ServicerContext[Any, Any]

#: ``SyncRequest.wait_s = 0`` means this default: proto3 cannot tell 0 from unset. A device that wants an
#: immediate answer sends a ``known_revision`` it knows to be stale (e.g. 0).
DEFAULT_WAIT_S = 30
MAX_WAIT_S = 300


@dataclass(eq=False)
class DeviceServicer(device_pb2_grpc.DeviceServiceServicer):
    devices: DeviceService
    bundles: BundleService
    events: DeviceEventService
    telemetry: TelemetryService

    async def Enroll(self, request: device_pb2.EnrollRequest, context: Ctx) -> device_pb2.EnrollResponse:
        enrolled = await self.devices.enroll(
            request.enrollment_token,
            request.name,
            request.hardware.hardware_class or "unknown",
            MessageToDict(request.hardware, preserving_proto_field_name=True),
            dict(request.tags),
        )
        return device_pb2.EnrollResponse(
            device_id=enrolled.device.id,
            device_credential=enrolled.credential,
            site=enrolled.device.site,
            trusted_keys=dict(enrolled.trusted_keys),
        )

    async def Sync(self, request: device_pb2.SyncRequest, context: Ctx) -> device_pb2.SyncResponse:
        device_id = current_principal().device_id
        with own_device_call(device_id):
            delivery = await self.devices.sync(
                device_id,
                convert.device_report(request.reported),
                request.known_revision,
                min(request.wait_s or DEFAULT_WAIT_S, MAX_WAIT_S),
            )
        if delivery is None:
            return device_pb2.SyncResponse(changed=False)
        return device_pb2.SyncResponse(changed=True, desired=convert.desired_message(delivery))

    async def FetchBlob(
        self, request: device_pb2.FetchBlobRequest, context: Ctx
    ) -> AsyncIterator[device_pb2.BlobChunk]:
        device_id = current_principal().device_id
        with own_device_call(device_id):
            async for piece in self.bundles.fetch_blob(device_id, request.digest, request.offset, request.chunk_bytes):
                yield device_pb2.BlobChunk(offset=piece.offset, data=piece.data, total_size=piece.total_size)

    async def ReportEvent(self, request: device_pb2.ReportEventRequest, context: Ctx) -> device_pb2.ReportEventResponse:
        principal = current_principal()
        with own_device_call(principal.device_id):
            stored = await self.events.report_events(principal.device_id, request.events, principal.site)
        return device_pb2.ReportEventResponse(accepted=stored)

    async def UploadTelemetry(
        self, request_iterator: AsyncIterator[telemetry_pb2.TelemetryBatch], context: Ctx
    ) -> AsyncIterator[telemetry_pb2.TelemetryAck]:
        device_id = current_principal().device_id
        with own_device_call(device_id):
            async for ack in self.telemetry.ingest(device_id, request_iterator):
                yield ack
