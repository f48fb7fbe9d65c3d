"""Public fakes for our own ports, so tests set the world up instead of monkeypatching internals.

``MovableClock`` is the controller's wall-clock port (``clock: Callable[[], datetime]``): it reads ``now``
until the test moves it. The update machine's fakes live beside their ports, in ``edge_runtime.update.testing``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["MovableClock"]


class MovableClock:
    """A wall clock that stands still until the test sets ``now`` or calls ``advance``."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start if start is not None else datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now
