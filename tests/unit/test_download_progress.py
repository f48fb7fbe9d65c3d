"""``DownloadProgress``: what the reported state says of the artifact in flight (bytes, rate over the recent
window, resets, stalls, phase), and how often it asks for a report: at once at start, at each lost connection
and at the end, at most every ``NOTIFY_INTERVAL_S`` while bytes arrive; a failing listener never stops a
download."""

from __future__ import annotations

import itertools

import pytest

from edge_runtime.agent.download.progress import NOTIFY_INTERVAL_S, RATE_WINDOW_S, DownloadProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_snapshot_follows_one_artifact_bytes_rate_losses_and_phase() -> None:
    clock = Clock()
    progress = DownloadProgress(clock)
    assert progress.snapshot() is None and progress.rate_bps() == 0.0, "nothing in flight"

    progress.started("sha256:" + "a" * 64, kept=100, total=10_000, chunk_bytes=1 << 20)
    for _ in range(5):
        clock.now += 1.0
        progress.kept(1000, chunk_bytes=64 << 10)
    snap = progress.snapshot()
    assert snap is not None
    assert (snap.bytes_kept, snap.total_bytes, snap.chunk_bytes, snap.phase) == (5100, 10_000, 64 << 10, "receiving")
    assert snap.rate_bps == pytest.approx(5000 / 4.0), "bytes kept over the time they took"

    progress.lost(stalled=False, chunk_bytes=16 << 10)
    progress.lost(stalled=True, chunk_bytes=16 << 10)
    snap = progress.snapshot()
    assert snap is not None and (snap.resets, snap.stalls, snap.phase) == (1, 1, "reconnecting")
    clock.now += RATE_WINDOW_S + 1
    assert progress.rate_bps() == 0.0, "nothing arrived within the window"

    progress.finished()
    assert progress.snapshot() is None
    progress.started("sha256:" + "b" * 64, kept=0, total=50, chunk_bytes=16 << 10)
    snap = progress.snapshot()
    assert snap is not None and (snap.bytes_kept, snap.resets, snap.stalls) == (0, 0, 0), "the next artifact anew"


def test_reports_at_once_at_start_loss_and_end_and_bytes_at_most_every_interval() -> None:
    clock = Clock()
    progress = DownloadProgress(clock)
    told: list[float] = []
    progress.listen(lambda: told.append(clock.now))

    progress.started("sha256:" + "a" * 64, kept=0, total=1 << 30, chunk_bytes=64 << 10)
    assert told == [1000.0]
    for _ in range(40):  # 4 s of chunks every 100 ms on a good link
        clock.now += 0.1
        progress.kept(64 << 10, chunk_bytes=64 << 10)
    assert 1 <= len(told[1:]) <= 4.0 / NOTIFY_INTERVAL_S, told
    assert all(b - a >= NOTIFY_INTERVAL_S for a, b in itertools.pairwise(told)), told

    clock.now += 0.1  # a loss is told at once (the next Sync carries it before a blackhole may cut it off)
    progress.lost(stalled=False, chunk_bytes=16 << 10)
    assert told[-1] == clock.now
    clock.now += 0.1
    progress.lost(stalled=True, chunk_bytes=16 << 10)
    assert told[-1] == clock.now
    count = len(told)
    progress.finished()
    assert len(told) == count + 1, "the end is told at once"


def test_a_failing_listener_is_logged_and_never_stops_the_download(capsys: pytest.CaptureFixture[str]) -> None:
    progress = DownloadProgress(Clock())

    def broken() -> None:
        raise RuntimeError("event loop is closed")

    progress.listen(broken)
    progress.started("sha256:" + "a" * 64, kept=0, total=10, chunk_bytes=4)
    progress.kept(4, chunk_bytes=4)
    progress.finished()
    assert progress.snapshot() is None
    out = capsys.readouterr().out
    assert "agent.download_progress_listener_failed" in out and "event loop is closed" in out, out
