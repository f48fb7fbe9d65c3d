"""What the artifact download in flight has done (``DownloadProgress``), for the reported state and status.json.

Written by the fetcher's thread, read by the agent's event loop (``snapshot``), so every access holds one
lock. The rate is bytes kept over the last ``RATE_WINDOW_S`` seconds (0 while nothing arrives). A listener
(the agent's wake, which re-issues the Sync long-poll with the new reported state) is told at most every
``NOTIFY_INTERVAL_S`` while bytes arrive, and at once when a download starts, loses its connection or ends,
so ``fleetctl describe device`` follows a download within seconds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

RATE_WINDOW_S = 10.0
NOTIFY_INTERVAL_S = 2.0


@dataclass(frozen=True)
class ProgressSnapshot:
    """One artifact's download: bytes kept of its total, rate, losses and the chunk size asked for now."""

    digest: str
    bytes_kept: int
    total_bytes: int
    rate_bps: float
    resets: int
    stalls: int
    chunk_bytes: int
    # "receiving" while a stream delivers, "reconnecting" between a loss and the next stream.
    phase: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DownloadProgress:
    """The live progress of the fetcher's current artifact (``snapshot`` is None when none is in flight)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._active = False
        self._digest = ""
        self._kept = 0
        self._total = 0
        self._resets = 0
        self._stalls = 0
        self._chunk = 0
        self._phase = "receiving"
        self._window: deque[tuple[float, int]] = deque()
        self._listener: Callable[[], None] | None = None
        self._notified = 0.0

    def listen(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (from the fetcher's thread; it must be thread-safe) when progress is worth a report."""
        self._listener = listener

    def started(self, digest: str, kept: int, total: int, chunk_bytes: int) -> None:
        with self._lock:
            self._active = True
            self._digest, self._kept, self._total, self._chunk = digest, kept, total, chunk_bytes
            self._resets = self._stalls = 0
            self._phase = "receiving"
            self._window.clear()
        self._notify(force=True)

    def kept(self, nbytes: int, chunk_bytes: int) -> None:
        now = self._clock()
        with self._lock:
            self._kept += nbytes
            self._chunk = chunk_bytes
            self._phase = "receiving"
            self._window.append((now, nbytes))
        self._notify(force=False)

    def lost(self, *, stalled: bool, chunk_bytes: int) -> None:
        with self._lock:
            if stalled:
                self._stalls += 1
            else:
                self._resets += 1
            self._chunk = chunk_bytes
            self._phase = "reconnecting"
        self._notify(force=True)

    def finished(self) -> None:
        with self._lock:
            self._active = False
        self._notify(force=True)

    def snapshot(self) -> ProgressSnapshot | None:
        now = self._clock()
        with self._lock:
            if not self._active:
                return None
            while self._window and self._window[0][0] < now - RATE_WINDOW_S:
                self._window.popleft()
            span = now - self._window[0][0] if self._window else 0.0
            recent = sum(n for _, n in self._window)
            rate = recent / max(span, 1.0) if self._window else 0.0
            return ProgressSnapshot(
                self._digest, self._kept, self._total, rate, self._resets, self._stalls, self._chunk, self._phase
            )

    def rate_bps(self) -> float:
        """Bytes per second kept over the recent window (0 when unknown): the watchdog scales its limit by it."""
        snap = self.snapshot()
        return snap.rate_bps if snap is not None else 0.0

    def _notify(self, *, force: bool) -> None:
        listener = self._listener
        if listener is None:
            return
        now = self._clock()
        if not force and now - self._notified < NOTIFY_INTERVAL_S:
            return
        self._notified = now
        try:
            listener()
        except Exception as exc:  # a report that cannot be sent must never stop a download
            log.warning("agent.download_progress_listener_failed", error=str(exc))
