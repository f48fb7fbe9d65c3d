"""Latency profiles are facts of the controller, not of the device, over real gRPC: a profile counts for the
device's enrolled hardware class only (a differing claim is not recorded, counted, and flags the device in
GetDevice/ListDevices and fleetctl), and one device's figure cannot block or wave through a rollout onto
another site."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from edgefleet.contract.signing import generate_keypair
from edgefleet.v1 import common_pb2, device_pb2, fleet_pb2, telemetry_pb2
from edgefleet_testing.controller import Fleet, bearer, connected, publish_bundle, running_controller
from tests.integration.test_fleetctl_telemetry import Cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Event = telemetry_pb2.DeviceEvent


async def report_profile(fleet: Fleet, credential: str, bundle: str, hardware_class: str, p95_ms: float) -> int:
    """The device reports a KIND_PROFILE event (as ``edge-runtime profile --report-to`` does)."""
    total = common_pb2.Percentiles(p50_ms=p95_ms / 2, p95_ms=p95_ms, p99_ms=p95_ms, count=60)
    profile = telemetry_pb2.LatencyProfile(
        bundle_digest=bundle, hardware_class=hardware_class, total=total, frames=60, source="profile"
    )
    event = Event(kind=Event.KIND_PROFILE, bundle_digest=bundle, profile=profile)
    reply = await fleet.device.ReportEvent(device_pb2.ReportEventRequest(events=[event]), metadata=bearer(credential))
    return int(reply.accepted)


async def profiles(fleet: Fleet, bundle: str) -> dict[str, float]:
    reply = await fleet.fleet.ListProfiles(fleet_pb2.ListProfilesRequest(bundles=[bundle]), metadata=fleet.admin)
    return {p.hardware_class: p.p95_ms for p in reply.profiles}


async def mismatch(fleet: Fleet, device: str) -> str:
    reply = await fleet.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device=device), metadata=fleet.admin)
    return str(reply.hardware_mismatch)


def rollout_to(bundle: str, site: str) -> fleet_pb2.CreateRolloutRequest:
    return fleet_pb2.CreateRolloutRequest(
        bundle=bundle,
        selector=fleet_pb2.RolloutSelector(sites=[site]),
        strategy=fleet_pb2.RolloutStrategy(waves=["1", "100%"]),
    )


async def test_one_device_cannot_move_admission_for_another_site(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as fleet:
        key = generate_keypair("publisher")
        await fleet.trust(key)
        v1 = (await fleet.push(publish_bundle(tmp_path / "b", key, version="1.0.0", seed=1))).bundle.digest
        v2 = (await fleet.push(publish_bundle(tmp_path / "b", key, version="2.0.0", seed=2))).bundle.digest
        # site A: an x86 box; site B: three rpi5 boxes, one of them hostile too
        x86_id, x86 = await fleet.enroll("site-a", "a-x86", hardware_class="x86-avx2")
        pis = [await fleet.enroll("site-b", f"b-pi-{i}", hardware_class="rpi5") for i in range(3)]
        (_, honest_1), (_, honest_2), (rogue_pi_id, rogue_pi) = pis
        refused_before = ctrl.app.metrics.registry.get_sample_value(
            "edgefleet_profiles_refused_total", {"reason": "hardware_mismatch"}
        )
        assert refused_before is None

        # 1. the x86 device claims an rpi5 p95 of 9999 ms: stored as its event, recorded for no class
        assert await report_profile(fleet, x86, v1, "rpi5", 9999.0) == 1
        assert await profiles(fleet, v1) == {}
        note = await mismatch(fleet, x86_id)
        assert "enrolled as 'x86-avx2'" in note and "'rpi5'" in note and "re-enroll" in note, note
        assert (
            ctrl.app.metrics.registry.get_sample_value(
                "edgefleet_profiles_refused_total", {"reason": "hardware_mismatch"}
            )
            == 1.0
        )
        listed = await fleet.fleet.ListDevices(fleet_pb2.ListDevicesRequest(), metadata=fleet.admin)
        flagged = {d.name for d in listed.devices if d.hardware_mismatch}
        assert flagged == {"a-x86"}
        cli = Cli(ctrl, ctrl.admin_token)
        described = await cli.ok("describe", "device", "a-x86")
        assert "mismatch:" in described and "enrolled as 'x86-avx2'" in described, described
        assert "x86-avx2 (mismatch)" in await cli.ok("get", "devices", "-o", "wide")

        # 2. honest rpi5 figures (20 ms) and an rpi5 device of the class itself saying 9999 ms: one voice
        # among three, so the rollout onto site B is admitted by the honest figures
        assert await report_profile(fleet, honest_1, v1, "rpi5", 20.0) == 1
        assert await report_profile(fleet, honest_2, v1, "rpi5", 21.0) == 1
        assert await report_profile(fleet, rogue_pi, v1, "rpi5", 9999.0) == 1
        assert await profiles(fleet, v1) == {"rpi5": 21.0}
        created = await fleet.fleet.CreateRollout(rollout_to(v1, "site-b"), metadata=fleet.admin)
        assert any(line.startswith("rpi5: p95 21.0 ms <=") and "admitted" in line for line in created.admission)
        await fleet.fleet.AbortRollout(fleet_pb2.RolloutActionRequest(id=created.id), metadata=fleet.admin)

        # 3. v2 is too slow on rpi5 (60 ms > 40 ms): neither the x86 box's nor the rogue pi's 1 ms waves it in
        assert await report_profile(fleet, honest_1, v2, "rpi5", 60.0) == 1
        assert await report_profile(fleet, honest_2, v2, "rpi5", 61.0) == 1
        assert await report_profile(fleet, x86, v2, "rpi5", 1.0) == 1
        assert await report_profile(fleet, rogue_pi, v2, "rpi5", 1.0) == 1
        assert await profiles(fleet, v2) == {"rpi5": 60.0}
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await fleet.fleet.CreateRollout(rollout_to(v2, "site-b"), metadata=fleet.admin)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "rpi5: p95 60.0 ms >" in str(refused.value.details()), refused.value.details()

        # 4. the x86 device's next, honest profile counts for its enrolled class and clears its flag
        assert await report_profile(fleet, x86, v2, "x86-avx2", 12.0) == 1
        assert await profiles(fleet, v2) == {"rpi5": 60.0, "x86-avx2": 12.0}
        assert await mismatch(fleet, x86_id) == ""
        created = await fleet.fleet.CreateRollout(rollout_to(v2, "site-a"), metadata=fleet.admin)
        assert any(line.startswith("x86-avx2: p95 12.0 ms <=") for line in created.admission), created.admission

        # 5. a Sync claiming other hardware flags the device too; its class stays the enrolled one
        reported = common_pb2.ReportedState(
            health=common_pb2.HEALTH_SERVING, hardware=common_pb2.HardwareProfile(hardware_class="jetson-orin-nano")
        )
        await fleet.sync(rogue_pi, wait_s=0, reported=reported)
        note = await mismatch(fleet, rogue_pi_id)
        assert "its Sync reports 'jetson-orin-nano'" in note and "enrolled as 'rpi5'" in note, note
        reply = await fleet.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device=rogue_pi_id), metadata=fleet.admin)
        assert reply.hardware.hardware_class == "rpi5"
