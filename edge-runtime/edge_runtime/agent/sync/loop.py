"""The Sync long-poll loop: report state, learn the desired state, never hot-loop, never give up.

One exchange = one unary ``Sync(known_revision, reported, wait_s)`` with a deadline a few seconds past
``wait_s``. When the agent's reported state changes during a held call (an update step, a health change),
``wake()`` cancels the call and the next one carries the new state at once, so the controller sees update
progress within moments instead of at the end of the long-poll.

Failures: transient codes (see ``client.is_transient``) are retried by the agent's one retry policy
(``retry.transient_retry``: tenacity, exponential backoff with full jitter capped at 30 s, forever): a device
offline for hours keeps serving and keeps trying, cheaply. UNAUTHENTICATED after enrollment is an operator problem
(credential rotated, device deleted): logged as ``agent.credential_rejected`` and retried only every
``unauth_backoff_s``; PERMISSION_DENIED (an operator disabled the device) as ``agent.device_disabled`` (``refusals``).
Other refusals back off ``refused_backoff_s``; the agent keeps serving what it runs in every case. A call that comes
back unchanged sooner than ``min_interval_s`` waits out the rest, so a misbehaving server cannot make us spin.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from tenacity import RetryCallState

from edge_runtime.agent.client import ControllerLink
from edge_runtime.agent.refusals import DETAILS_CHARS, RefusalLog, refusal_of
from edge_runtime.agent.retry import Sleep, transient_retry
from edgefleet.contract.shown import shown
from edgefleet.v1 import common_pb2, device_pb2

log = structlog.get_logger(__name__)

DEADLINE_SLACK_S = 5.0


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
    log.info(
        "agent.sync_retry",
        attempt=state.attempt_number,
        code=code,
        retry_in_s=round(state.upcoming_sleep, 2),
    )


@dataclass(eq=False, repr=False, kw_only=True)
class SyncLoop:
    """Runs Sync exchanges until cancelled; ``on_response`` gets every answer."""

    link: ControllerLink
    reported: Callable[[], common_pb2.ReportedState]
    on_response: Callable[[device_pb2.SyncResponse], Awaitable[None]]
    wait_s: int = 30
    unauth_backoff_s: float = 300.0
    refused_backoff_s: float = 60.0
    min_interval_s: float = 1.0
    retry_sleep: Sleep | None = None
    known_revision: int = field(default=0, init=False)
    online: bool = field(default=False, init=False)
    last_ok_monotonic: float | None = field(default=None, init=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def wake(self) -> None:
        """Re-issue the pending long-poll now (call from the event loop's thread)."""
        self._wake.set()

    async def run(self) -> None:
        refusals = RefusalLog("Sync", self.unauth_backoff_s, self.refused_backoff_s, every_time=True)
        while True:
            started = time.monotonic()
            try:
                async for attempt in transient_retry(sleep=self.retry_sleep, before_sleep=_log_retry):
                    with attempt:
                        try:
                            response = await self._exchange()
                        except grpc.aio.AioRpcError:
                            self.online = False
                            raise
            except grpc.aio.AioRpcError as exc:
                refused = refusal_of(exc)
                if refused is not None:
                    await self._sleep_or_wake(refusals.note(refused))
                else:
                    log.error(
                        "agent.sync_refused", code=exc.code().name, details=shown(exc.details() or "", DETAILS_CHARS)
                    )
                    await self._sleep_or_wake(self.refused_backoff_s)
                continue
            if response is None:  # woken: state changed, re-issue at once (after a short debounce)
                await asyncio.sleep(0.05)
                continue
            if not self.online:
                log.info("agent.sync_online", known_revision=self.known_revision)
            self.online = True
            self.last_ok_monotonic = time.monotonic()
            await self.on_response(response)
            if response.changed:
                self.known_revision = response.desired.revision
                continue
            if response.retry_after_s:
                await asyncio.sleep(response.retry_after_s)
            elapsed = time.monotonic() - started
            if elapsed < self.min_interval_s:
                await asyncio.sleep(self.min_interval_s - elapsed)

    async def _sleep_or_wake(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _exchange(self) -> device_pb2.SyncResponse | None:
        self._wake.clear()
        request = device_pb2.SyncRequest(
            known_revision=self.known_revision, reported=self.reported(), wait_s=self.wait_s
        )
        call = self.link.device.Sync(request, metadata=self.link.metadata, timeout=self.wait_s + DEADLINE_SLACK_S)
        answer: asyncio.Future[device_pb2.SyncResponse] = asyncio.ensure_future(call)
        woken: asyncio.Future[bool] = asyncio.ensure_future(self._wake.wait())
        try:
            pending: list[asyncio.Future[Any]] = [answer, woken]
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
        if answer in done:
            return answer.result()
        call.cancel()
        answer.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await answer
        return None
