"""The agent's one retry policy (``transient_retry``) with an injected sleep: no wall time spent."""

from __future__ import annotations

import grpc
import pytest

from edge_runtime.agent.retry import BACKOFF_MAX_S, transient_retry


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="test")


async def test_transient_failures_are_retried_with_capped_jittered_waits() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    calls = 0
    async for attempt in transient_retry(sleep=sleep):
        with attempt:
            calls += 1
            if calls < 12:
                raise _rpc_error(grpc.StatusCode.UNAVAILABLE)
    assert calls == 12
    assert len(waits) == 11
    assert all(0 <= w <= BACKOFF_MAX_S for w in waits), waits


async def test_a_refusal_is_raised_at_once_without_waiting() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for attempt in transient_retry(sleep=sleep):
            with attempt:
                raise _rpc_error(grpc.StatusCode.PERMISSION_DENIED)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert waits == []


async def test_before_sleep_sees_each_retry() -> None:
    seen: list[int] = []

    async def sleep(seconds: float) -> None:
        return None

    calls = 0
    async for attempt in transient_retry(sleep=sleep, before_sleep=lambda state: seen.append(state.attempt_number)):
        with attempt:
            calls += 1
            if calls < 3:
                raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert seen == [1, 2]
