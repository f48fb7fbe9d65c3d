"""The controller's clock: a callable returning the aware UTC now. Every service takes one, so tests move time;
only the composition root (``bootstrap``) picks the real one, ``utcnow``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)
