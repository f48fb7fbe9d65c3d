"""ReportEvent over real gRPC and SQLite is all or nothing: a call with one event whose latency profile holds a
NaN (or inf, or a negative figure) is refused with INVALID_ARGUMENT naming it, and stores no event and no
profile; the same device's good events alone are stored next, and re-sending them stores nothing twice."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import pytest

from edgefleet.v1 import common_pb2, device_pb2, fleet_pb2, telemetry_pb2
from edgefleet_controller.errors import InvalidArgument
from edgefleet_testing.controller import Fleet, bearer, connected, running_controller

pytestmark = pytest.mark.integration

Event = telemetry_pb2.DeviceEvent
BUNDLE = "sha256:" + "b" * 64


def profile_event(event_id: str, p95_ms: float, *, part: str = "total") -> Event:
    ev = Event(event_id=event_id, kind=Event.KIND_PROFILE, bundle_digest=BUNDLE)
    ev.profile.bundle_digest = BUNDLE
    ev.profile.hardware_class = "x86-avx2"
    ev.profile.frames = 100
    ev.profile.total.CopyFrom(common_pb2.Percentiles(p50_ms=1.0, p95_ms=2.0, p99_ms=3.0, count=100))
    getattr(ev.profile, part).p95_ms = p95_ms
    getattr(ev.profile, part).count = 100
    return ev


async def stored(c: Fleet) -> tuple[list[str], list[bytes]]:
    events = await c.fleet.ListDeviceEvents(fleet_pb2.ListDeviceEventsRequest(device="cam-1"), metadata=c.admin)
    profiles = await c.fleet.ListProfiles(fleet_pb2.ListProfilesRequest(), metadata=c.admin)
    return [e.event_id for e in events.events], [p.SerializeToString(deterministic=True) for p in profiles.profiles]


async def test_a_refused_report_event_stores_nothing_and_the_good_events_go_through_next(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as c:
        _, cred = await c.enroll("lab", "cam-1")
        good = [profile_event(f"good-{i}", 10.0 + i) for i in range(5)]
        nothing = await stored(c)
        assert nothing == ([], [])
        far = Event(event_id="bad", kind=Event.KIND_UPDATE_STATE)
        far.at.seconds = 10**12  # beyond year 9999
        for bad in (
            profile_event("bad", math.nan),
            profile_event("bad", math.inf, part="model"),
            profile_event("bad", -1.0, part="pre"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.device.ReportEvent(device_pb2.ReportEventRequest(events=[*good, bad]), metadata=bearer(cred))
            details = info.value.details() or ""
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (info.value.code(), details)
            # refused by the request bounds (edgefleet.contract.request_bounds) or by check_events: either names
            # the event and the field, and says nothing was stored
            assert "events[5]" in details and ".p95_ms" in details and "nothing" in details, details
            assert await stored(c) == nothing

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.device.ReportEvent(device_pb2.ReportEventRequest(events=[*good, far]), metadata=bearer(cred))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert await stored(c) == nothing

        reply = await c.device.ReportEvent(device_pb2.ReportEventRequest(events=good), metadata=bearer(cred))
        assert reply.accepted == 5
        ids, profiles = await stored(c)
        assert ids == [f"good-{i}" for i in range(5)]
        assert len(profiles) == 1
        summary = fleet_pb2.ProfileSummary.FromString(profiles[0])
        assert (summary.bundle_digest, summary.samples) == (BUNDLE, 5)
        # a device re-sending after a lost acknowledgement stores nothing twice, and a later refusal
        # still leaves what was stored as it was
        again = await c.device.ReportEvent(device_pb2.ReportEventRequest(events=good), metadata=bearer(cred))
        assert again.accepted == 0
        after = await stored(c)
        assert after[0] == ids
        with pytest.raises(grpc.aio.AioRpcError):
            await c.device.ReportEvent(
                device_pb2.ReportEventRequest(events=[profile_event("late", 1.0), profile_event("nan", math.nan)]),
                metadata=bearer(cred),
            )
        assert await stored(c) == after


async def test_the_event_service_checks_the_whole_call_before_storing_any(tmp_path: Path) -> None:
    """Behind the request bounds: ``DeviceEventService.report_events`` itself (also reached by in-process
    callers) refuses the call whole, so the service holds even where the bounds table does not reach."""
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as c:
        device_id, _ = await c.enroll("lab", "cam-1")
        good = [profile_event(f"good-{i}", 10.0 + i) for i in range(5)]
        canary = Event(event_id="canary", kind=Event.KIND_CANARY_VERDICT, bundle_digest=BUNDLE)
        canary.verdict.candidate_latency.CopyFrom(common_pb2.Percentiles(p50_ms=1, p95_ms=math.nan, count=9))
        for bad in (profile_event("bad", math.nan), canary):
            with pytest.raises(
                InvalidArgument, match=r"events\[5\].*must be a finite number >= 0.*nothing of this call"
            ):
                await ctrl.app.events.report_events(device_id, [*good, bad])
            assert await stored(c) == ([], [])
        assert await ctrl.app.events.report_events(device_id, good) == 5
