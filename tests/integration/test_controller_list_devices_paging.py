"""ListDevices paging over real gRPC: ``total`` is the number of all matches (not the page size), every filter
(several tags, health with ``offline`` computed from the last Sync) is applied before paging so no page is short
or empty before the last, and devices that enroll between pages are neither skipped nor repeated."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from edgefleet.v1 import common_pb2, fleet_pb2
from edgefleet_testing.controller import Fleet, connected, running_controller
from edgefleet_testing.fakes import MovableClock

pytestmark = pytest.mark.integration

DOCK = {1, 4, 8, 12, 17, 21, 24}


async def pages(c: Fleet, page_size: int, **filters: Any) -> list[tuple[list[str], int]]:
    """(names, total) of every page, following the tokens."""
    request = fleet_pb2.ListDevicesRequest(page_size=page_size, **filters)
    out: list[tuple[list[str], int]] = []
    while len(out) < 20:
        reply = await c.fleet.ListDevices(request, metadata=c.admin)
        out.append(([d.name for d in reply.devices], reply.total))
        if not reply.next_page_token:
            return out
        request.page_token = reply.next_page_token
    raise AssertionError(f"no last page after 20 pages: {out[:3]}")


async def test_list_devices_total_and_full_pages_with_every_filter(tmp_path: Path) -> None:
    clock = MovableClock()
    async with running_controller(tmp_path / "data", clock=clock) as ctrl, connected(ctrl) as c:
        creds: dict[int, str] = {}
        for i in range(25):
            tags = {"camera": "rgb", **({"zone": "dock"} if i in DOCK else {})}
            _, creds[i] = await c.enroll("north" if i < 13 else "south", f"cam-{i:02}", tags)
        t0 = clock.now
        for i in range(25):
            health = common_pb2.HEALTH_FAILING if i % 4 == 0 else common_pb2.HEALTH_SERVING
            await c.sync(creds[i], wait_s=0, reported=common_pb2.ReportedState(health=health))
        clock.now = t0 + timedelta(seconds=100)
        for i in range(0, 25, 3):  # the others go offline at t0 + 150 s
            health = common_pb2.HEALTH_FAILING if i % 4 == 0 else common_pb2.HEALTH_SERVING
            # a changed report is written at once (an unchanged one only every REPORT_REFRESH_S of loop time)
            reported = common_pb2.ReportedState(health=health, update_reason="again")
            await c.sync(creds[i], wait_s=0, reported=reported)
        clock.now = t0 + timedelta(seconds=150)

        async def shape(page_size: int, **filters: Any) -> tuple[list[int], set[int], list[str]]:
            got = await pages(c, page_size, **filters)
            names = [n for p, _ in got for n in p]
            assert len(names) == len(set(names)), f"a device twice: {filters}"
            return [len(p) for p, _ in got], {t for _, t in got}, sorted(names)

        everything = await shape(10)
        assert everything == ([10, 10, 5], {25}, [f"cam-{i:02}" for i in range(25)])
        dock = [f"cam-{i:02}" for i in sorted(DOCK)]
        assert await shape(10, tags=["zone=dock"]) == ([7], {7}, dock)
        assert await shape(5, tags=["camera=rgb", "zone=dock"]) == ([5, 2], {7}, dock)
        # failing and still syncing: 0, 12, 24 (the other failing devices are offline)
        assert await shape(2, health=common_pb2.HEALTH_FAILING) == ([2, 1], {3}, ["cam-00", "cam-12", "cam-24"])
        offline = [f"cam-{i:02}" for i in range(25) if i % 3]
        assert await shape(10, health=common_pb2.HEALTH_OFFLINE) == ([10, 6], {16}, offline)
        north_offline = [n for n in offline if int(n[4:]) < 13]
        assert await shape(3, site="north", health=common_pb2.HEALTH_OFFLINE) == ([3, 3, 2], {8}, north_offline)
        assert await shape(4, tags=["zone=dock", "camera=thermal"]) == ([0], {0}, [])


async def test_devices_enrolling_while_an_operator_pages_are_neither_skipped_nor_repeated(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        token = await c.enrollment_token("north")
        first = {await c.enroll("north", f"cam-{i:02}", token=token) for i in range(25)}
        request = fleet_pb2.ListDevicesRequest(page_size=10)
        listed: list[str] = []
        added: dict[str, str] = {}  # id of a device enrolled mid-listing -> the last id listed then
        totals = []
        while True:
            reply = await c.fleet.ListDevices(request, metadata=c.admin)
            listed += [d.id for d in reply.devices]
            totals.append(reply.total)
            if not reply.next_page_token:
                break
            assert len(reply.devices) == 10
            for k in (0, 1):
                device_id, _ = await c.enroll("north", f"late-{len(added)}-{k}", token=token)
                added[device_id] = listed[-1]
            request.page_token = reply.next_page_token
        assert len(listed) == len(set(listed)), "a device came back twice"
        assert {d for d, _ in first} <= set(listed), "a device enrolled before the listing was skipped"
        assert {d for d, cursor in added.items() if d > cursor} == set(added) & set(listed)
        assert totals == sorted(totals) and totals[0] == 25 and totals[-1] == 25 + len(added)
        # the next listing has everyone
        assert sum(len(p) for p, _ in await pages(c, 1000)) == 25 + len(added)
