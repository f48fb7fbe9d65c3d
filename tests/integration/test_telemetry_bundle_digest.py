"""A telemetry window names a bundle the controller knows the device has, over real gRPC: its desired bundle,
one it reports running or holding, or one its recent stored windows named. Any other window is acknowledged
(the device's buffer moves on) but not stored, and counted (``edgefleet_telemetry_windows_refused``); the
batch's other records are stored as usual. A frame gap ending before it starts refuses its batch whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from edgefleet.contract.signing import generate_keypair
from edgefleet.v1 import common_pb2, fleet_pb2
from edgefleet.v1.telemetry_pb2 import DeviceEvent, FrameGap, TelemetryBatch, TelemetryRecord
from edgefleet_testing.controller import Fleet, InProcessController, connected, publish_bundle, running_controller
from tests.integration.test_telemetry_ingest import rec, upload, window

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OTHER = "sha256:" + "c" * 64
LATER = "sha256:" + "d" * 64
FORGED = "sha256:" + "e" * 64


def refused(ctrl: InProcessController) -> float:
    value = ctrl.app.metrics.registry.get_sample_value(
        "edgefleet_telemetry_windows_refused_total", {"reason": "bundle_digest"}
    )
    return value or 0.0


async def frames_by_device(fleet: Fleet, since: datetime, bundle: str = "") -> dict[str, int]:
    request = fleet_pb2.QueryTelemetryRequest(group_by="device", bundle=bundle)
    request.since.FromDatetime(since)
    reply = await fleet.fleet.QueryTelemetry(request, metadata=fleet.admin)
    return {row.key: int(row.frames) for row in reply.rows}


def batch(first: int, *records: TelemetryRecord) -> TelemetryBatch:
    return TelemetryBatch(epoch="ep", first_seq=first, last_seq=records[-1].seq, records=list(records))


def metrics(seq: int, frames: int, bundle: str, start: datetime) -> TelemetryRecord:
    return TelemetryRecord(seq=seq, metrics=window([5.0] * frames, start=start, bundle=bundle))


async def test_windows_of_bundles_the_device_does_not_have_are_acked_counted_and_not_stored(tmp_path: Path) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    async with running_controller(tmp_path / "ctl", metrics=True) as ctrl, connected(ctrl) as fleet:
        key = generate_keypair("publisher")
        await fleet.trust(key)
        v1 = (await fleet.push(publish_bundle(tmp_path / "b", key, version="1.0.0", seed=1))).bundle.digest
        cam, cred = await fleet.enroll("lab", "cam-1")
        yard, yard_cred = await fleet.enroll("yard", "cam-9")

        # 1. nothing assigned or reported: a window naming a bundle is refused, the alert and the
        # bundle-less window (nothing loaded yet) beside it are stored, and the whole batch is acknowledged
        acks = await upload(
            ctrl.address,
            cred,
            [batch(1, metrics(1, 7, FORGED, t0), rec(2), metrics(3, 2, "", t0 + timedelta(seconds=10)))],
        )
        assert acks == [(3, 0)]
        assert refused(ctrl) == 1.0
        assert await frames_by_device(fleet, t0) == {cam: 2}

        # 2. assigned v1 (not yet reported): v1 windows are stored; a forged one in the same batch is not
        await fleet.fleet.SetDesiredBundle(
            fleet_pb2.SetDesiredBundleRequest(device=cam, bundle=v1), metadata=fleet.admin
        )
        t1 = t0 + timedelta(seconds=20)
        acks = await upload(ctrl.address, cred, [batch(4, metrics(4, 5, v1, t1), metrics(5, 9, FORGED, t1))])
        assert acks == [(5, 0)]
        assert refused(ctrl) == 2.0
        assert await frames_by_device(fleet, t0, bundle=v1) == {cam: 5}

        # 3. reported running: windows of the running bundle are stored; after the device moves on to a
        # later bundle, a backlog window of the one it ran is still stored (its recent windows named it)
        await fleet.report_running(cred, OTHER)
        await upload(ctrl.address, cred, [batch(6, metrics(6, 3, OTHER, t1 + timedelta(seconds=10)))])
        await fleet.report_running(cred, LATER)
        await upload(ctrl.address, cred, [batch(7, metrics(7, 4, OTHER, t1 + timedelta(seconds=20)))])
        assert refused(ctrl) == 2.0
        assert await frames_by_device(fleet, t0) == {cam: 2 + 5 + 3 + 4}

        # 4. another device (another site) cannot write into cam-1's bundle
        acks = await upload(ctrl.address, yard_cred, [batch(1, metrics(1, 50, v1, t1))])
        assert acks == [(1, 0)]
        assert refused(ctrl) == 3.0
        assert await frames_by_device(fleet, t0, bundle=v1) == {cam: 5}
        assert yard not in await frames_by_device(fleet, t0)

        # 5. a re-sent refused window is a duplicate (already acknowledged), not counted again
        acks = await upload(ctrl.address, cred, [batch(5, metrics(5, 9, FORGED, t1))])
        assert acks == [(7, 1)] and refused(ctrl) == 3.0

        # 6. a frame gap that ends before it starts refuses its batch whole: the window beside it is not stored
        gap = FrameGap(frames=10, frames_known=True, cause="process_killed")
        gap.start.FromDatetime(t1)
        gap.end.FromDatetime(t1 - timedelta(seconds=1))
        bad = TelemetryRecord(seq=9, event=DeviceEvent(event_id="gap", kind=DeviceEvent.KIND_FRAME_GAP, frame_gap=gap))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await upload(ctrl.address, cred, [batch(8, metrics(8, 6, LATER, t1), bad)])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "frame_gap must have start <= end" in str(err.value.details())
        assert await frames_by_device(fleet, t0) == {cam: 14}
        # the device's next, sound batch is stored and acknowledged from where it was
        acks = await upload(ctrl.address, cred, [batch(8, metrics(8, 6, LATER, t1))])
        assert acks == [(8, 0)]
        assert await frames_by_device(fleet, t0) == {cam: 20}
        device = await fleet.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device=cam), metadata=fleet.admin)
        assert device.reported.running_bundle_digest == LATER and device.health == common_pb2.HEALTH_SERVING
