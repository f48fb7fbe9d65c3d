"""The agent's one retry policy for calls to the controller: transient gRPC failures, retried forever.

Transient codes (``client.is_transient``) are retried with exponential backoff and full jitter, capped at
30 s (``wait_random_exponential(multiplier=0.5, max=30)``), with no stop: a device offline for hours keeps
serving and keeps trying, cheaply. Anything else is re-raised at once (``reraise=True``) for the caller to
judge. Sync, event reporting and enrollment all use ``transient_retry``; tests inject ``sleep`` so a retry
takes no wall time and its waits can be asserted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from edge_runtime.agent.client import is_transient

__all__ = ["BACKOFF_MAX_S", "BACKOFF_MULTIPLIER", "Sleep", "transient_retry"]

BACKOFF_MULTIPLIER = 0.5
BACKOFF_MAX_S = 30.0

Sleep = Callable[[float], Awaitable[None]]


def transient_retry(
    *, sleep: Sleep | None = None, before_sleep: Callable[[RetryCallState], None] | None = None
) -> AsyncRetrying:
    """A fresh ``AsyncRetrying`` for one call: ``async for attempt in transient_retry(): with attempt: ...``.

    ``sleep`` replaces tenacity's asyncio sleep (tests); ``before_sleep`` is called before each wait (logging).
    """
    options: dict[str, Any] = {}
    if sleep is not None:
        options["sleep"] = sleep
    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=BACKOFF_MULTIPLIER, max=BACKOFF_MAX_S),
        before_sleep=before_sleep,
        reraise=True,
        **options,
    )
