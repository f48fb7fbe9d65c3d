"""Device names are unique per site, over real gRPC: a second Enroll of a name in one site is ALREADY_EXISTS,
names the device that has it and what to do, and consumes nothing of the enrollment token; the same name in
another site, or another name with the same token, enrolls."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from edgefleet.v1 import fleet_pb2
from edgefleet_testing.controller import connected, running_controller

pytestmark = pytest.mark.integration


async def test_a_name_taken_in_a_site_is_refused_without_using_the_token_and_free_in_another_site(
    tmp_path: Path,
) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        token_a = await c.enrollment_token("site-a", max_uses=2)
        first_id, first_cred = await c.enroll("site-a", "lab-1", token=token_a)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.enroll("site-a", "lab-1", {"zone": "dock"}, hardware_class="rpi5", token=token_a)
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert info.value.details() == (
            f"device name 'lab-1' is already enrolled in site 'site-a' (device id {first_id}); "
            f"delete it with `fleetctl device delete {first_id}` or choose another name"
        )
        # the refused call changed nothing: one device, its facts as enrolled, its credential still works
        listed = await c.fleet.ListDevices(fleet_pb2.ListDevicesRequest(site="site-a"), metadata=c.admin)
        assert [(d.id, d.name, d.hardware.hardware_class, dict(d.tags)) for d in listed.devices] == [
            (first_id, "lab-1", "x86-avx2", {})
        ]
        assert (await c.sync(first_cred, wait_s=0)).desired.revision >= 1

        # the token's second use is still there: another name enrolls with it, then the token is spent
        second_id, _ = await c.enroll("site-a", "lab-2", token=token_a)
        with pytest.raises(grpc.aio.AioRpcError) as spent:
            await c.enroll("site-a", "lab-3", token=token_a)
        assert spent.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "used 2 of 2 times" in (spent.value.details() or "")

        # the same name in another site is another device
        other_id, _ = await c.enroll("site-b", "lab-1")
        everyone = await c.fleet.ListDevices(fleet_pb2.ListDevicesRequest(), metadata=c.admin)
        assert sorted((d.site, d.name, d.id) for d in everyone.devices) == sorted(
            [("site-a", "lab-1", first_id), ("site-a", "lab-2", second_id), ("site-b", "lab-1", other_id)]
        )
        assert everyone.total == 3
