"""Authenticate first, then validate, then store, over real gRPC to an in-process controller: an Enroll
without a valid token is refused UNAUTHENTICATED before its payload is looked at (cheap, a small log); a
request that breaks its ``request_bounds`` entry is refused whole with INVALID_ARGUMENT naming the field and
showing the value truncated, nothing stored, and the same caller's next good request succeeds; refusal log
lines are rate-limited per peer."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
import structlog
from structlog.testing import capture_logs
from typer.testing import CliRunner

from edgefleet.contract import request_bounds as rb
from edgefleet.contract.telemetry_bounds import MAX_REVIEW_JPEG_BYTES
from edgefleet.v1 import common_pb2, device_pb2, fleet_pb2, fleet_pb2_grpc, telemetry_pb2
from edgefleet_controller import refusal_log
from edgefleet_controller.servicers import fleet as fleet_servicer
from edgefleet_controller.store import schema as t
from edgefleet_testing.controller import InProcessController, bearer, connected, running_controller
from fleetctl.client import CHANNEL_OPTIONS
from fleetctl.main import app as fleetctl_app

pytestmark = pytest.mark.integration

HUGE = 1_900_000  # just under the 2 MiB message limit: refused by the bounds, not by gRPC's size check


async def refused(call: Awaitable[Any], code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    details = info.value.details() or ""
    assert info.value.code() == code, (info.value.code(), details[:300])
    for fragment in fragments:
        assert fragment in details, (fragment, details)
    assert len(details) < 1000, "the value is shown truncated, never whole"
    return details


def log_bytes(entries: Sequence[Mapping[str, Any]]) -> int:
    return sum(len(repr(entry)) for entry in entries)


def device_rows(ctrl: InProcessController) -> list[tuple[str, str]]:
    """(id, name) of every device row in the store."""
    with ctrl.app.store.db.engine.connect() as conn:
        return sorted((r.id, r.name) for r in conn.execute(sa.select(t.devices.c.id, t.devices.c.name)))


async def test_enroll_without_a_valid_token_is_refused_before_its_payload_cheaply(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        tokens = ["", "eft_0123456789abcdef.not-the-secret", "garbage", "eft_" + "x" * HUGE]
        with capture_logs() as logs:
            started = time.perf_counter()
            for token in tokens:
                name = "N" * (HUGE if len(token) < 100 else 10)  # both 1.9 MB pass the 2 MiB message limit
                request = device_pb2.EnrollRequest(enrollment_token=token, name=name)
                details = await refused(c.device.Enroll(request, timeout=10), grpc.StatusCode.UNAUTHENTICATED)
                assert "NNNN" not in details and "xxxx" not in details, "neither the name nor the token is echoed"
            elapsed = time.perf_counter() - started
        assert elapsed < 5.0, f"{len(tokens)} refused 1.9 MB Enrolls took {elapsed:.2f}s"
        assert log_bytes(logs) < 4000, f"{log_bytes(logs)} bytes of log for {len(tokens)} refusals"
        assert [e["code"] for e in logs if e["event"] == "rpc.refused"] == ["UNAUTHENTICATED"] * len(tokens)
        assert device_rows(ctrl) == []
        # the same caller with a real token gets in
        device_id, _ = await c.enroll("site-a", "cam-1")
        assert [i for i, _ in device_rows(ctrl)] == [device_id]


@pytest.mark.parametrize(
    ("name", "shown_as"),
    [
        ("Cam-1", "'Cam-1'"),
        ("cam\x00", "'cam\\x00'"),
        ("cam\u202e1", "'cam\\u202e1'"),
        ("../../etc", "'../../etc'"),
        ("a" * 64, repr("a" * 64)),
        ("n" * HUGE, f"({HUGE} chars)"),
    ],
)
async def test_enroll_with_a_good_token_and_a_bad_name_consumes_nothing(
    tmp_path: Path, name: str, shown_as: str
) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        created = await c.fleet.CreateEnrollmentToken(
            fleet_pb2.CreateEnrollmentTokenRequest(site="site-a", max_uses=1), metadata=c.admin
        )
        request = device_pb2.EnrollRequest(enrollment_token=created.token, name=name)
        details = await refused(c.device.Enroll(request), grpc.StatusCode.INVALID_ARGUMENT, "EnrollRequest.name")
        assert shown_as in details and "[a-z0-9][a-z0-9-]{0,62}" in details
        record = await asyncio.to_thread(ctrl.app.store.enrollment_tokens.get, created.token_id)
        assert record.uses == 0, "a refused enrolment does not use the token"
        assert device_rows(ctrl) == []
        # the one use is still there for the corrected request
        await c.enroll("site-a", "cam-1", token=created.token)
        assert [n for _, n in device_rows(ctrl)] == ["cam-1"]


async def test_oversized_device_data_is_refused_and_the_fleet_listing_keeps_working(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        token = await c.enrollment_token("site-a")
        huge_hw = device_pb2.EnrollRequest(enrollment_token=token, name="cam-0")
        huge_hw.hardware.cpu_model = "x" * HUGE
        await refused(
            c.device.Enroll(huge_hw), grpc.StatusCode.INVALID_ARGUMENT, "EnrollRequest.hardware.cpu_model", "chars)"
        )
        creds = [(await c.enroll("site-a", f"cam-{i}", token=token))[1] for i in range(1, 4)]
        before = await c.fleet.ListDevices(fleet_pb2.ListDevicesRequest(), metadata=c.admin)
        for cred in creds:
            reported = common_pb2.ReportedState(health=common_pb2.HEALTH_SERVING)
            reported.details.update({"blob": "z" * HUGE})
            await refused(
                c.device.Sync(device_pb2.SyncRequest(reported=reported, wait_s=0), metadata=bearer(cred)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "SyncRequest.reported.details",
                f"at most {rb.MAX_DETAILS_BYTES} bytes",
            )
        after = await c.fleet.ListDevices(fleet_pb2.ListDevicesRequest(), metadata=c.admin)
        assert [d.reported.SerializeToString() for d in after.devices] == [
            d.reported.SerializeToString() for d in before.devices
        ], "nothing of the refused reports was stored"
        for cred in creds:  # each device's next, normal report is taken
            await c.sync(cred, wait_s=0)
        argv = ["--controller", ctrl.address, "--token", c.admin_token, "get", "devices"]
        result = await asyncio.to_thread(CliRunner().invoke, fleetctl_app, argv, env={"COLUMNS": "200"})
        structlog.reset_defaults()
        assert result.exit_code == 0, (result.output, result.exception)
        assert all(f"cam-{i}" in result.output for i in range(1, 4)) and "cam-0" not in result.output


async def test_report_event_over_the_count_stores_nothing_and_the_next_call_is_taken(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        device_id, cred = await c.enroll("site-a", "cam-1")

        def event(i: int, reason: str = "r") -> telemetry_pb2.DeviceEvent:
            return telemetry_pb2.DeviceEvent(event_id=f"e{i}", kind=telemetry_pb2.DeviceEvent.KIND_ALERT, reason=reason)

        flood = device_pb2.ReportEventRequest(events=[event(i) for i in range(20_000)])
        await refused(
            c.device.ReportEvent(flood, metadata=bearer(cred)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ReportEventRequest.events",
            f"at most {rb.MAX_EVENTS_PER_CALL} items",
            "20000 items",
        )
        long_reason = device_pb2.ReportEventRequest(events=[event(1), event(2, "y" * 100_000)])
        await refused(
            c.device.ReportEvent(long_reason, metadata=bearer(cred)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ReportEventRequest.events[1].reason",
            "(100000 chars)",
        )
        listed = fleet_pb2.ListDeviceEventsRequest(device=device_id, limit=1000)
        assert not (await c.fleet.ListDeviceEvents(listed, metadata=c.admin)).events, "nothing of either was stored"
        reply = await c.device.ReportEvent(device_pb2.ReportEventRequest(events=[event(3)]), metadata=bearer(cred))
        assert reply.accepted == 1
        assert len((await c.fleet.ListDeviceEvents(listed, metadata=c.admin)).events) == 1


async def test_huge_refs_and_bad_filters_get_invalid_argument_not_a_metadata_error(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        device_id, _ = await c.enroll("site-a", "cam-1")
        ref = "r" * 20_000
        for call, field in (
            (c.fleet.GetBundle(fleet_pb2.GetBundleRequest(ref=ref), metadata=c.admin), "GetBundleRequest.ref"),
            (c.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device=ref), metadata=c.admin), "GetDeviceRequest.device"),
            (
                c.fleet.CreateEnrollmentToken(fleet_pb2.CreateEnrollmentTokenRequest(site=ref), metadata=c.admin),
                "CreateEnrollmentTokenRequest.site",
            ),
        ):
            await refused(call, grpc.StatusCode.INVALID_ARGUMENT, field, "'rrrr", "(20000 chars)")
        for bad in ("garbage", "classifier@1.0.0", "sha256:abc"):
            await refused(
                c.fleet.QueryTelemetry(fleet_pb2.QueryTelemetryRequest(bundle=bad), metadata=c.admin),
                grpc.StatusCode.INVALID_ARGUMENT,
                "QueryTelemetryRequest.bundle",
            )
        for site in ("", "site a", "site\x00", "sïte"):
            await refused(
                c.fleet.CreateEnrollmentToken(fleet_pb2.CreateEnrollmentTokenRequest(site=site), metadata=c.admin),
                grpc.StatusCode.INVALID_ARGUMENT,
                "CreateEnrollmentTokenRequest.site",
            )
        # the same caller's good requests are answered
        assert (await c.fleet.GetDevice(fleet_pb2.GetDeviceRequest(device=device_id), metadata=c.admin)).id == device_id
        digest = "sha256:" + "a" * 64
        query = fleet_pb2.QueryTelemetryRequest(bundle=digest)
        assert not (await c.fleet.QueryTelemetry(query, metadata=c.admin)).rows
        await refused(
            c.fleet.GetBundle(fleet_pb2.GetBundleRequest(ref="classifier@9.9.9"), metadata=c.admin),
            grpc.StatusCode.NOT_FOUND,
        )


async def test_client_streams_are_checked_message_by_message(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        _, cred = await c.enroll("site-a", "cam-1")
        good = telemetry_pb2.TelemetryRecord(
            seq=1, review=telemetry_pb2.ReviewSample(sample_id="s1", bundle_digest="sha256:" + "b" * 64, jpeg=b"j")
        )
        oversized = telemetry_pb2.TelemetryRecord(
            seq=2, review=telemetry_pb2.ReviewSample(sample_id="s2", jpeg=b"j" * (MAX_REVIEW_JPEG_BYTES + 1))
        )
        first = telemetry_pb2.TelemetryBatch(epoch="ep", first_seq=1, last_seq=1, records=[good])
        second = telemetry_pb2.TelemetryBatch(epoch="ep", first_seq=2, last_seq=2, records=[oversized])

        async def upload(batches: list[telemetry_pb2.TelemetryBatch]) -> list[telemetry_pb2.TelemetryAck]:
            return [ack async for ack in c.device.UploadTelemetry(iter(batches), metadata=bearer(cred))]

        await refused(
            upload([second]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "TelemetryBatch.records[0].review.jpeg",
            f"<{MAX_REVIEW_JPEG_BYTES + 1} bytes>",
        )
        samples = fleet_pb2.ListReviewSamplesRequest(limit=100)
        assert not (await c.fleet.ListReviewSamples(samples, metadata=c.admin)).samples
        acks = await upload([first])
        assert acks[-1].acked_through == 1
        assert [s.sample.sample_id for s in (await c.fleet.ListReviewSamples(samples, metadata=c.admin)).samples] == [
            "s1"
        ]

        bad_chunk = fleet_pb2.PushBundleRequest(chunk=fleet_pb2.ArtifactChunk(digest="../../etc/passwd", data=b"x"))
        await refused(
            c.fleet.PushBundle(iter([bad_chunk]), metadata=c.admin),
            grpc.StatusCode.INVALID_ARGUMENT,
            "PushBundleRequest.chunk.digest",
        )
        assert not (await c.fleet.ListBundles(fleet_pb2.ListBundlesRequest(), metadata=c.admin)).bundles


async def test_refusal_log_lines_are_rate_limited_per_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refusal_log, "WINDOW_S", 1.5)
    per, window = refusal_log.PER_WINDOW, refusal_log.WINDOW_S
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        bad = fleet_pb2.GetDeviceRequest(device="d" * 5000)
        with capture_logs() as logs:
            started = time.monotonic()
            for _ in range(200):
                await refused(c.fleet.GetDevice(bad, metadata=c.admin), grpc.StatusCode.INVALID_ARGUMENT)
            elapsed = time.monotonic() - started
            windows = math.ceil(elapsed / window) + 1  # the calls fit one window unless the machine is very slow
            assert len([e for e in logs if e["event"] == "rpc.refused"]) <= per * windows
            await asyncio.sleep(window)  # the window of the last call rolls over: its suppressed count is due
            await refused(c.fleet.GetDevice(bad, metadata=c.admin), grpc.StatusCode.INVALID_ARGUMENT)
        lines = [e for e in logs if e["event"] == "rpc.refused"]
        suppressed = [e for e in logs if e["event"] == "rpc.refused_suppressed"]
        assert len(lines) + sum(e["count"] for e in suppressed) == 201, "every refusal is logged or counted"
        assert all(e["peer"].startswith("ipv4:127.0.0.1") for e in suppressed + lines)
        if elapsed < window:
            assert len(lines) == per + 1 and [e["count"] for e in suppressed] == [200 - per]
        assert log_bytes(logs) < 20_000
        # and the caller's good call is answered
        assert not (await c.fleet.ListDevices(fleet_pb2.ListDevicesRequest(), metadata=c.admin)).devices


async def test_review_samples_of_the_largest_jpegs_still_list_with_their_jpegs(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        _, cred = await c.enroll("site-a", "cam-1")
        jpeg = b"\xff" * MAX_REVIEW_JPEG_BYTES
        n = rb.MAX_REVIEW_SAMPLES_WITH_JPEG + 2
        batches = [  # one largest sample per batch: a batch is at most one 2 MiB request
            telemetry_pb2.TelemetryBatch(
                epoch="ep",
                first_seq=b + 1,
                last_seq=b + 1,
                records=[
                    telemetry_pb2.TelemetryRecord(
                        seq=b + 1,
                        review=telemetry_pb2.ReviewSample(
                            sample_id=f"s{b}", bundle_digest="sha256:" + "b" * 64, jpeg=jpeg
                        ),
                    )
                ],
            )
            for b in range(n)
        ]
        acks = [ack async for ack in c.device.UploadTelemetry(iter(batches), metadata=bearer(cred))]
        assert acks[-1].acked_through == n
        listed = await c.fleet.ListReviewSamples(fleet_pb2.ListReviewSamplesRequest(limit=100), metadata=c.admin)
        assert len(listed.samples) == n
        # fleetctl's channel: it receives up to the controller's send limit
        async with grpc.aio.insecure_channel(ctrl.address, options=CHANNEL_OPTIONS) as channel:
            with_jpegs = await fleet_pb2_grpc.FleetServiceStub(channel).ListReviewSamples(
                fleet_pb2.ListReviewSamplesRequest(limit=100, include_jpeg=True), metadata=c.admin
            )
        assert len(with_jpegs.samples) == rb.MAX_REVIEW_SAMPLES_WITH_JPEG < n
        assert all(len(s.sample.jpeg) == MAX_REVIEW_JPEG_BYTES for s in with_jpegs.samples)
        assert with_jpegs.ByteSize() <= rb.MAX_RESPONSE_BYTES


async def test_a_device_page_is_cut_short_at_the_byte_budget_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_servicer, "LIST_DEVICES_BYTES", 150_000)  # 2 devices of ~62 KB fit, not 3
    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        creds = await c.enroll_many("site-a", [f"cam-{i}" for i in range(5)])
        for cred in creds:
            reported = common_pb2.ReportedState(health=common_pb2.HEALTH_SERVING)
            reported.details.update({"blob": "z" * (60 << 10)})
            await c.sync(cred, wait_s=0, reported=reported)
        seen: list[str] = []
        request = fleet_pb2.ListDevicesRequest(page_size=500)
        while True:
            page = await c.fleet.ListDevices(request, metadata=c.admin)
            assert page.total == 5 and 1 <= len(page.devices) <= 2, (page.total, len(page.devices))
            seen += [d.name for d in page.devices]
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        assert sorted(seen) == [f"cam-{i}" for i in range(5)], "every device once, none skipped"
