"""One bounded ``wait_until`` for the tests, the demo and the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["WaitTimeout", "wait_until"]

T = TypeVar("T")


class WaitTimeout(TimeoutError, AssertionError):
    """``wait_until`` ran out of time: an assertion failure to a test, a timeout to the demo."""


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` every ``interval`` s until it returns something truthy (returned) or ``timeout`` s
    pass (``WaitTimeout`` naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
