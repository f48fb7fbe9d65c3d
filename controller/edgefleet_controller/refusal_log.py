"""How many ``rpc.refused`` log lines one peer may cause: at most ``PER_WINDOW`` per ``WINDOW_S`` seconds; the
rest are counted and reported as one ``rpc.refused_suppressed`` line when the peer's window rolls over (or
its entry is evicted). At most ``MAX_PEERS`` peers are tracked, so a flood of peers cannot grow memory: when
full, rolled-over entries are dropped first, then the oldest.

Pure: the clock is injected, nothing is logged here; ``admit`` says what the caller should log.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

PER_WINDOW = 20
WINDOW_S = 10.0
MAX_PEERS = 4096


@dataclass
class _Window:
    started: float
    logged: int = 0
    suppressed: int = 0


@dataclass(frozen=True)
class Admission:
    """``log``: emit this refusal's line; ``suppressed``: (peer, count) lines to emit first."""

    log: bool
    suppressed: tuple[tuple[str, int], ...] = ()


def peer_host(peer: str | None) -> str:
    """The address part of a gRPC peer string (``ipv4:127.0.0.1:5555`` → ``ipv4:127.0.0.1``)."""
    if not peer:
        return "unknown"
    if peer.startswith("ipv6:[") and "]" in peer:
        return peer[: peer.index("]") + 1]
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer[:100]


class RefusalLimiter:
    def __init__(
        self,
        per_window: int | None = None,
        window_s: float | None = None,
        max_peers: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_window = PER_WINDOW if per_window is None else per_window
        self.window_s = WINDOW_S if window_s is None else window_s
        self.max_peers = MAX_PEERS if max_peers is None else max_peers
        self._clock = clock
        self._peers: OrderedDict[str, _Window] = OrderedDict()

    def admit(self, peer: str) -> Admission:
        """Count one refusal of ``peer``; whether to log it, and suppressed counts that are now due."""
        now = self._clock()
        due: list[tuple[str, int]] = []
        window = self._peers.get(peer)
        if window is not None and now - window.started >= self.window_s:
            if window.suppressed:
                due.append((peer, window.suppressed))
            del self._peers[peer]
            window = None
        if window is None:
            if len(self._peers) >= self.max_peers:
                due.extend(self._evict(now))
            window = self._peers[peer] = _Window(now)
        if window.logged < self.per_window:
            window.logged += 1
            return Admission(True, tuple(due))
        window.suppressed += 1
        return Admission(False, tuple(due))

    def _evict(self, now: float) -> list[tuple[str, int]]:
        """Drop rolled-over windows, else the oldest; their suppressed counts. Entries are in order of their
        window's start (a rolled window is re-inserted at the end), so the oldest are at the front."""
        due: list[tuple[str, int]] = []
        while self._peers:
            peer, window = next(iter(self._peers.items()))
            if len(self._peers) < self.max_peers and now - window.started < self.window_s:
                break
            del self._peers[peer]
            if window.suppressed:
                due.append((peer, window.suppressed))
        return due

    def __len__(self) -> int:
        return len(self._peers)
