"""The agent's one retry policy: exponential backoff with full jitter, one value shared by every loop.

``Backoff(multiplier, max_s)`` is tenacity's ``wait_random_exponential``: the n-th wait is drawn from
[0, min(max_s, multiplier * 2**(n-1))]. ``CONTROLLER_CALLS`` (0.5 s doubling, capped at 30 s) is the policy
for calls to the controller; ``transient_retry`` retries those while ``client.is_transient`` says the failure
is transient, with no stop: a device offline for hours keeps serving and keeps trying, cheaply. Anything
else is re-raised at once (``reraise=True``) for the caller to judge. Sync, event reporting and enrollment
use ``transient_retry`` as is; the telemetry uploader with its own predicate and backoff (a stream that
ended); the fetcher, a synchronous loop whose backoff resets on progress, draws its waits from
``Backoff.delay``. Tests inject ``sleep`` so a retry takes no wall time and its waits can be asserted.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from edge_runtime.agent.client import is_transient

__all__ = ["BACKOFF_MAX_S", "BACKOFF_MULTIPLIER", "CONTROLLER_CALLS", "Backoff", "Sleep", "transient_retry"]

BACKOFF_MULTIPLIER = 0.5
BACKOFF_MAX_S = 30.0

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: the wait before retry n is uniform in
    [0, min(max_s, multiplier * 2**(n-1))]."""

    multiplier: float
    max_s: float

    def wait(self) -> wait_random_exponential:
        """The tenacity wait strategy."""
        return wait_random_exponential(multiplier=self.multiplier, max=self.max_s)

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (1-based), for a loop that is not a tenacity one. Any
        ``attempt`` (a task down for days): the exponent stops at 64, as 2**1024 overflows a float."""
        return random.uniform(0, min(self.max_s, self.multiplier * 2 ** (min(attempt, 64) - 1)))


CONTROLLER_CALLS = Backoff(multiplier=BACKOFF_MULTIPLIER, max_s=BACKOFF_MAX_S)


def transient_retry(
    *,
    sleep: Sleep | None = None,
    before_sleep: Callable[[RetryCallState], None] | None = None,
    retry_on: Callable[[BaseException], bool] = is_transient,
    backoff: Backoff = CONTROLLER_CALLS,
) -> AsyncRetrying:
    """A fresh ``AsyncRetrying`` for one call: ``async for attempt in transient_retry(): with attempt: ...``.

    ``sleep`` replaces tenacity's asyncio sleep (tests); ``before_sleep`` is called before each wait (logging);
    ``retry_on`` says which failures are retried (default: transient gRPC codes); ``backoff`` how long to wait.
    """
    options: dict[str, Any] = {}
    if sleep is not None:
        options["sleep"] = sleep
    return AsyncRetrying(
        retry=retry_if_exception(retry_on),
        wait=backoff.wait(),
        before_sleep=before_sleep,
        reraise=True,
        **options,
    )
