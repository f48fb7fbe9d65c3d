"""DeleteTelemetry (admin): the request's checks and the reply. ``TelemetryService.delete`` resolves the device
and has the store delete its windows, telemetry events and review samples in [since, until) in one
transaction (``TelemetryStore.delete_range``); a request refused here deletes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from edgefleet.contract.shown import shown
from edgefleet.v1.fleet_pb2 import DeleteTelemetryRequest, DeleteTelemetryResponse
from edgefleet_controller.errors import InvalidArgument, timestamp_arg
from edgefleet_controller.store import schema as t


@dataclass(frozen=True, slots=True)
class DeletionRange:
    device: str
    since: datetime
    until: datetime


def check_request(request: DeleteTelemetryRequest) -> DeletionRange:
    """The device reference and the range [since, until); ``InvalidArgument`` naming what is wrong."""
    if not request.device:
        raise InvalidArgument("DeleteTelemetry: 'device' is required (a device id or name)")
    for name in ("since", "until"):
        if not request.HasField(name):
            raise InvalidArgument(f"DeleteTelemetry: '{name}' is required (both ends of the range are)")
    since = timestamp_arg(request.since, "DeleteTelemetry.since")
    until = timestamp_arg(request.until, "DeleteTelemetry.until")
    if not since < until:
        raise InvalidArgument(
            f"DeleteTelemetry: 'since' must be before 'until', got since={since.isoformat()} "
            f"until={until.isoformat()} for device {shown(request.device)}"
        )
    return DeletionRange(request.device, since, until)


def reply(device_id: str, deleted: Mapping[str, int]) -> DeleteTelemetryResponse:
    return DeleteTelemetryResponse(
        device_id=device_id,
        windows=deleted[t.telemetry_windows.name],
        events=deleted[t.telemetry_events.name],
        review_samples=deleted[t.review_samples.name],
    )
