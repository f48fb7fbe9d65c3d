"""The edge-runtime's telemetry uploader and event sender against a real controller that refuses the device,
over real gRPC: disabled, then (after coming back by itself once re-enabled) deleted. Each refusal is one
``agent.device_disabled`` / ``agent.credential_rejected`` line with its hint (no raw exception repr, no
retry every 0.1-15 s), the next try waits the injected backoff, and nothing queued is lost or dropped."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from edge_runtime.agent.client import ControllerLink
from edge_runtime.agent.refusals import CREDENTIAL_HINT, DISABLED_HINT
from edge_runtime.agent.telemetry.reporter import AgentReporter, EventSender
from edge_runtime.agent.telemetry.uploader import TelemetryUploader, UploadSettings
from edge_runtime.telemetry.buffer import TelemetryBuffer
from edgefleet.v1 import device_pb2_grpc, fleet_pb2
from edgefleet_testing.controller import Fleet, bearer, connected, running_controller
from tests.integration.test_telemetry_ingest import window

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNNING = "sha256:" + "a" * 64
BACKOFF_S = 0.5
INTERVAL_S = 2.0
#: Tries within INTERVAL_S when each waits BACKOFF_S (plus the call itself): the one that failed first, then one
#: per backoff. The transient reconnect policy would have made far more.
MAX_TRIES = int(INTERVAL_S / BACKOFF_S) + 2

Logs = list[MutableMapping[str, Any]]


def refusal_lines(logs: Logs, event: str, call: str) -> Logs:
    return [e for e in logs if e["event"] == event and e.get("call") == call]


def assert_no_raw_errors(logs: Logs) -> None:
    for entry in logs:
        text = repr(entry)
        assert "AioRpcError" not in text and "debug_error_string" not in text, text[:300]
        assert "Internal error from Core" not in text, text[:300]


async def until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(work: Awaitable[None]) -> AsyncIterator[None]:
    task = asyncio.ensure_future(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def admin_action(fleet: Fleet, rpc: str, device: str) -> None:
    await getattr(fleet.fleet, rpc)(fleet_pb2.DeviceActionRequest(device=device), metadata=fleet.admin)


async def test_uploader_refused_disabled_then_deleted_logs_once_each_backs_off_and_keeps_its_buffer(
    tmp_path: Path,
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as fleet:
        _, cred = await fleet.enroll("lab", "cam-1")
        await fleet.report_running(cred, RUNNING)
        buf = TelemetryBuffer(tmp_path / "dev" / "buffer.db", max_bytes=8 << 20, review_quota_bytes=1 << 20)

        def add(n: int) -> None:
            for _ in range(n):
                buf.append(window([5.0] * 3, start=t0 + timedelta(seconds=10 * buf.next_seq)))
            up.notify()

        channel = grpc.aio.insecure_channel(ctrl.address)
        up = TelemetryUploader(
            buf,
            functools.partial(device_pb2_grpc.DeviceServiceStub, channel),
            functools.partial(bearer, cred),
            functools.partial(UploadSettings, batch_max_delay_s=0.05),
            unauth_backoff_s=BACKOFF_S,
            refused_backoff_s=BACKOFF_S,
        )
        add(2)
        await admin_action(fleet, "DisableDevice", "cam-1")
        with capture_logs() as logs:
            async with running(up.run()):
                await asyncio.sleep(INTERVAL_S)
                disabled = refusal_lines(logs, "agent.device_disabled", "UploadTelemetry")
                assert len(disabled) == 1, disabled  # one line, however many tries
                assert disabled[0]["hint"] == DISABLED_HINT and disabled[0]["retry_in_s"] == BACKOFF_S
                assert "disabled by an operator" in disabled[0]["details"]
                assert 2 <= up.streams <= MAX_TRIES, up.streams  # it keeps trying, at the backoff
                assert (buf.count(), buf.acked_through) == (2, 0)  # nothing sent is forgotten, nothing dropped

                await admin_action(fleet, "EnableDevice", "cam-1")
                await until(lambda: buf.count() == 0, 5 * BACKOFF_S + 5, "uploads again by itself once enabled")
                assert buf.acked_through == 2

                await admin_action(fleet, "DeleteDevice", "cam-1")
                streams = up.streams
                add(3)  # the open stream's next batch is refused: the device is gone
                await asyncio.sleep(INTERVAL_S)
                rejected = refusal_lines(logs, "agent.credential_rejected", "UploadTelemetry")
                assert len(rejected) == 1, rejected
                assert rejected[0]["hint"] == CREDENTIAL_HINT and "deleted by an operator" in rejected[0]["details"]
                hint = rejected[0]["hint"]  # both ways back: the rotated credential installed, or re-enrolled
                assert "install the new one in DATA_DIR/credential.json" in hint and "rotate-credential" in hint
                assert "delete DATA_DIR/credential.json and restart with --enroll-token" in hint
                assert 1 <= up.streams - streams <= MAX_TRIES, (streams, up.streams)
                assert (buf.count(), buf.acked_through) == (3, 2)  # kept for a re-enrolled device
        await channel.close()
        assert len(refusal_lines(logs, "agent.device_disabled", "UploadTelemetry")) == 1
        assert [e for e in logs if e["event"] == "telemetry.upload_stream_ended"] == []  # no link-failure noise
        assert_no_raw_errors(logs)


class _CountCalls(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts the unary calls made on the channel (the calls reaching the controller)."""

    def __init__(self) -> None:
        self.calls = 0

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        self.calls += 1
        return await continuation(client_call_details, request)


async def test_event_sender_refused_keeps_its_events_and_tries_again_only_after_the_backoff(tmp_path: Path) -> None:
    async with running_controller(tmp_path / "ctl") as ctrl, connected(ctrl) as fleet:
        _, cred = await fleet.enroll("lab", "cam-1")
        link = ControllerLink(ctrl.address)
        counted = _CountCalls()
        channel = grpc.aio.insecure_channel(ctrl.address, interceptors=[counted])
        link.device = device_pb2_grpc.DeviceServiceStub(channel)
        link.authenticate(cred)
        reporter = AgentReporter()
        sender = EventSender(link=link, reporter=reporter, unauth_backoff_s=BACKOFF_S, refused_backoff_s=BACKOFF_S)
        reporter.set_wake(sender.wakeup.set)
        await admin_action(fleet, "DisableDevice", "cam-1")
        with capture_logs() as logs:
            async with running(sender.run()):
                reporter.report_alert(RUNNING, "hot", {"celsius": 91.0})
                await asyncio.sleep(INTERVAL_S)
                assert len(refusal_lines(logs, "agent.device_disabled", "ReportEvent")) == 1
                assert 2 <= counted.calls <= MAX_TRIES, counted.calls
                assert reporter.has_pending()
                await admin_action(fleet, "EnableDevice", "cam-1")
                await until(lambda: not reporter.has_pending(), 5 * BACKOFF_S + 5, "sent once enabled")
                await admin_action(fleet, "DeleteDevice", "cam-1")
                calls = counted.calls
                reporter.report_alert(RUNNING, "hotter", {"celsius": 95.0})
                await asyncio.sleep(INTERVAL_S)
                rejected = refusal_lines(logs, "agent.credential_rejected", "ReportEvent")
                assert len(rejected) == 1 and rejected[0]["hint"] == CREDENTIAL_HINT, rejected
                assert 2 <= counted.calls - calls <= MAX_TRIES, (calls, counted.calls)
                assert [e.reason for e in reporter.pending()] == ["hotter"]  # kept, not dropped
        await channel.close()
        await link.close()
        assert_no_raw_errors(logs)
