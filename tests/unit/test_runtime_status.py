"""``edge_runtime.status_report``: whether the runtime that wrote ``status.json`` still runs (its pid alive, an
edge runtime, the file fresh against its own interval), and a dead one's last status claiming nothing live."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge_runtime.status_report import STALE_MIN_S, judge, probe_process, status_document
from edgefleet_testing.waiting import wait_until

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def alive(pid: int) -> str | None:
    return None


def written(age_s: float, interval_s: float | None = 0.5, pid: object = 4242) -> dict[str, object]:
    status: dict[str, object] = {"pid": pid, "at": (NOW - timedelta(seconds=age_s)).isoformat()}
    if interval_s is not None:
        status["status_interval_s"] = interval_s
    return status


def test_fresh_status_of_a_live_runtime_is_running() -> None:
    assert judge(written(1.0), NOW, alive).running
    # a slow writer's interval stretches the window: 10 intervals of 2 s
    assert judge(written(19.0, interval_s=2.0), NOW, alive).running
    assert not judge(written(21.0, interval_s=2.0), NOW, alive).running


def test_a_live_but_stale_writer_is_reported_hung_with_the_numbers() -> None:
    verdict = judge(written(STALE_MIN_S + 1, interval_s=None), NOW, alive)
    assert not verdict.running
    assert "is alive but status.json is 6.0 s old (written every 0.5 s; stale after 5 s)" in verdict.reason
    assert verdict.last_status_at == (NOW - timedelta(seconds=6)).isoformat()


def test_dead_reused_or_missing_writers_are_not_running() -> None:
    verdict = judge(written(0.1), NOW, lambda pid: f"process {pid} is not alive")
    assert (verdict.running, verdict.reason) == (False, "process 4242 is not alive")
    assert "no valid pid" in judge(written(0.1, pid="x"), NOW, alive).reason
    assert "no valid 'at'" in judge({"pid": 1, "at": "yesterday"}, NOW, alive).reason
    assert "no valid 'at'" in judge({"pid": 1, "at": "2026-01-01T00:00:00"}, NOW, alive).reason  # no offset
    assert "has not run" in judge(None, NOW, alive).reason


def test_the_process_probe_reads_the_real_process_table() -> None:
    # this test process is alive but not an edge runtime: a reused pid
    assert "not an edge runtime" in (probe_process(os.getpid()) or "")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "edge-runtime"])
    try:
        wait_until(lambda: Path(f"/proc/{proc.pid}/cmdline").read_bytes() or None, 10, "the sleeper's exec")
        assert probe_process(proc.pid) is None
        proc.send_signal(signal.SIGKILL)
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped: a zombie
        assert "zombie" in (probe_process(proc.pid) or "")
    finally:
        proc.kill()
        proc.wait()
    assert probe_process(proc.pid) == f"process {proc.pid} is not alive"


def test_a_dead_runtimes_last_status_claims_nothing_live() -> None:
    status = {**written(30.0), "health": "HEALTH_SERVING", "online": True, "serving": "sha256:" + "a" * 64}
    verdict = judge(status, NOW, lambda pid: "process 4242 is not alive")
    doc = status_document({"state": "idle"}, status, verdict)
    assert doc["running"] is False and doc["not_running_reason"] == "process 4242 is not alive"
    runtime = doc["runtime"]
    assert runtime["health"] == f"UNKNOWN (not running; last status at {verdict.last_status_at})"
    assert (runtime["online"], runtime["serving"], runtime["last_serving"]) == (False, None, "sha256:" + "a" * 64)
    assert status["health"] == "HEALTH_SERVING"  # the caller's mapping is not changed
    fresh = {**status, **written(0.1)}
    live = status_document({"state": "idle"}, fresh, judge(fresh, NOW, alive))
    assert live["runtime"] == fresh and "not_running_reason" not in live
