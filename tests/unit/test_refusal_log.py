"""``refusal_log.RefusalLimiter``: at most ``per_window`` refusal lines per peer and window, the rest counted
and reported once the window rolls over; a flood of distinct peers keeps the table at ``max_peers``."""

from __future__ import annotations

from edgefleet_controller.refusal_log import RefusalLimiter, peer_host


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_peer_gets_n_lines_per_window_then_one_suppressed_count() -> None:
    clock = Clock()
    limiter = RefusalLimiter(per_window=20, window_s=10.0, clock=clock)
    admitted = [limiter.admit("ipv4:10.0.0.1") for _ in range(200)]
    assert sum(a.log for a in admitted) == 20
    assert all(a.log for a in admitted[:20]) and not any(a.log for a in admitted[20:])
    assert all(not a.suppressed for a in admitted)
    other = limiter.admit("ipv4:10.0.0.2")
    assert other.log, "another peer has its own window"

    clock.now = 10.0
    rolled = limiter.admit("ipv4:10.0.0.1")
    assert rolled.suppressed == (("ipv4:10.0.0.1", 180),) and rolled.log
    clock.now = 20.0
    assert limiter.admit("ipv4:10.0.0.1").suppressed == (), "nothing suppressed in the last window"


def test_a_flood_of_peers_cannot_grow_the_table() -> None:
    clock = Clock()
    limiter = RefusalLimiter(per_window=1, window_s=10.0, max_peers=100, clock=clock)
    limiter.admit("ipv4:10.0.0.1")
    limiter.admit("ipv4:10.0.0.1")  # suppressed: reported when its entry is evicted
    due = [pair for i in range(10_000) for pair in limiter.admit(f"ipv4:10.1.{i // 256}.{i % 256}").suppressed]
    assert len(limiter) <= 100
    assert due == [("ipv4:10.0.0.1", 1)]


def test_peer_host_drops_the_port() -> None:
    assert peer_host("ipv4:127.0.0.1:53211") == "ipv4:127.0.0.1"
    assert peer_host("ipv6:[::1]:5555") == "ipv6:[::1]"
    assert peer_host(None) == "unknown"
    assert len(peer_host("unix:" + "x" * 10_000)) == 100
