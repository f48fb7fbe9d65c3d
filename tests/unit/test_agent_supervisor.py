"""The agent's task supervisor: restart with capped jittered backoff, down-with-reason until a run stays up,
cancellation is no failure (and ends the task even when a run swallows it or fails in its cleanup), a stop
during a backoff wait is prompt, drills fail the first N runs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from edge_runtime.agent.retry import Backoff
from edge_runtime.agent.supervisor import TASK_BACKOFF, Supervisor, TaskDrill, TaskDrillError, parse_task_drills

# The checks that a restarted task is still down run within this of its start: room for a busy host.
HEALTHY_S = 0.5


class Script:
    """A task whose n-th run raises ``errors[n]`` (None: stays up until cancelled); counts its runs."""

    def __init__(self, *errors: BaseException | None) -> None:
        self.errors = list(errors)
        self.runs = 0
        self.cancelled = 0

    async def __call__(self) -> None:
        n = self.runs
        self.runs += 1
        await asyncio.sleep(0)
        error = self.errors[n] if n < len(self.errors) else None
        if error is not None:
            raise error
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


class Waits:
    """An injected backoff sleep: records each wait, takes (almost) no time."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0.001)


async def until(predicate: Callable[[], object]) -> None:
    async with asyncio.timeout(10.0):  # a failure's logged traceback takes ~0.1 s to render on a busy host
        while not predicate():  # noqa: ASYNC110 - polls the supervisor's state, which sets no event
            await asyncio.sleep(0.005)


async def test_a_failed_task_is_logged_with_its_traceback_restarted_and_down_until_it_stays_up() -> None:
    script = Script(OSError("disk I/O error"))
    waits = Waits()
    sup = Supervisor(healthy_after_s=HEALTHY_S, sleep=waits)
    with capture_logs() as logs:
        sup.start("telemetry", script)
        await until(lambda: script.runs == 2)
        # Restarted, but not yet up for healthy_after_s: still down, with the reason.
        assert sup.reason() == "telemetry task failed 1x: OSError: disk I/O error"
        [down] = sup.down()
        assert (down.name, down.failures, down.state) == ("telemetry", 1, "running")
        await until(lambda: not sup.down())
        await sup.stop()
    failed = [e for e in logs if e["event"] == "agent.task_failed"]
    assert len(failed) == 1
    assert failed[0]["task"] == "telemetry" and failed[0]["exc_info"] is True and failed[0]["log_level"] == "error"
    assert failed[0]["error"].startswith("OSError: ")
    assert [e["event"] for e in logs if e["event"].startswith("agent.task_")] == [
        "agent.task_failed",
        "agent.task_restarted",
        "agent.task_recovered",
    ]
    assert len(waits.waits) == 1 and 0 <= waits.waits[0] <= 0.5
    status = sup.status()["telemetry"]
    assert status == {
        "state": "stopped",
        "failures": 0,
        "total_failures": 1,
        "restarts": 1,
        "last_error": failed[0]["error"],
    }


async def test_a_task_that_keeps_failing_stays_down_and_is_retried_with_capped_jittered_waits() -> None:
    script = Script(*[ValueError(f"bad {i}") for i in range(12)])
    waits = Waits()
    sup = Supervisor(backoff=Backoff(multiplier=0.5, max_s=4.0), healthy_after_s=5.0, sleep=waits)
    sup.start("sync", script)
    await until(lambda: script.runs == 13)
    assert sup.reason() == "sync task failed 12x: ValueError: bad 11"
    await asyncio.sleep(0.1)
    assert sup.down(), "13th run up for less than healthy_after_s: still down"
    await sup.stop()
    assert len(waits.waits) == 12
    for n, wait in enumerate(waits.waits, start=1):
        assert 0 <= wait <= min(4.0, 0.5 * 2 ** (n - 1)), (n, wait)
    assert max(waits.waits) <= 4.0
    assert len(set(waits.waits)) == 12, "waits are drawn with jitter"


def test_the_backoff_stays_capped_after_any_number_of_failures() -> None:
    # A task failing every 30 s for 9 hours is past 1024 failures in a row: 2**1024 would overflow a float.
    assert all(0 <= TASK_BACKOFF.delay(n) <= TASK_BACKOFF.max_s for n in (1, 64, 1025, 10**6))


async def test_after_recovery_a_second_failure_degrades_again_from_one() -> None:
    gate = asyncio.Event()
    runs = 0

    async def task() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise OSError("disk full")
        if runs == 2:
            await gate.wait()
            raise OSError("disk full again")
        await asyncio.Event().wait()

    sup = Supervisor(healthy_after_s=HEALTHY_S, sleep=Waits())
    sup.start("telemetry", task)
    await until(lambda: runs == 2)
    assert sup.reason() == "telemetry task failed 1x: OSError: disk full"
    await until(lambda: not sup.down())
    gate.set()
    await until(lambda: runs == 3)
    assert sup.reason() == "telemetry task failed 1x: OSError: disk full again"
    assert sup.status()["telemetry"]["total_failures"] == 2
    await until(lambda: not sup.down())
    await sup.stop()


async def test_cancellation_at_stop_is_not_a_failure() -> None:
    script = Script()
    sup = Supervisor(healthy_after_s=HEALTHY_S, sleep=Waits())
    with capture_logs() as logs:
        task = sup.start("events", script)
        await until(lambda: script.runs == 1)
        await sup.stop()
    assert task.cancelled()
    assert script.cancelled == 1 and script.runs == 1
    assert not [e for e in logs if e["event"] == "agent.task_failed"]
    assert sup.down() == [] and sup.status()["events"]["state"] == "stopped"


async def test_a_stop_the_task_swallows_or_fails_on_still_stops_it() -> None:
    # One run turns the cancel into an error in its cleanup, the other returns: neither is restarted.
    runs: list[str] = []

    async def fails_on_cancel() -> None:
        runs.append("fails")
        try:
            await asyncio.Event().wait()
        finally:
            raise OSError("close failed")

    async def swallows_cancel() -> None:
        runs.append("swallows")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    sup = Supervisor(healthy_after_s=HEALTHY_S, sleep=Waits())
    tasks = [sup.start("telemetry", fails_on_cancel), sup.start("events", swallows_cancel)]
    await until(lambda: len(runs) == 2)
    async with asyncio.timeout(2.0):
        await sup.stop()
    assert all(t.cancelled() for t in tasks) and sorted(runs) == ["fails", "swallows"]
    assert {name: s["state"] for name, s in sup.status().items()} == {"events": "stopped", "telemetry": "stopped"}


async def test_stopping_while_a_task_waits_in_backoff_is_prompt() -> None:
    script = Script(RuntimeError("boom"))
    sup = Supervisor(backoff=Backoff(multiplier=60.0, max_s=60.0), healthy_after_s=HEALTHY_S)
    # Real asyncio.sleep: the first wait is drawn from [0, 60] s.
    sup.start("tick", script)
    await until(lambda: sup.status()["tick"]["state"] == "backoff")
    started = time.monotonic()
    await sup.stop()
    assert time.monotonic() - started < 0.5
    assert script.runs == 1
    assert sup.status()["tick"]["state"] == "stopped"


async def test_a_task_that_returns_or_cancels_itself_is_a_failure() -> None:
    runs = 0

    async def task() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            return
        if runs == 2:
            raise asyncio.CancelledError  # e.g. an inner task's cancellation leaking out: not a stop
        await asyncio.Event().wait()

    sup = Supervisor(healthy_after_s=HEALTHY_S, sleep=Waits())
    with capture_logs() as logs:
        sup.start("update-worker", task)
        await until(lambda: runs == 3)
        await sup.stop()
    errors = [e["error"] for e in logs if e["event"] == "agent.task_failed"]
    assert errors == [
        "TaskReturnedError: the update-worker task returned; it must run until the agent stops",
        "CancelledError",
    ]


async def test_two_tasks_down_are_both_in_the_reason() -> None:
    sup = Supervisor(healthy_after_s=5.0, sleep=Waits())
    a, b = Script(KeyError("x")), Script(ValueError("y"))
    sup.start("telemetry", a)
    sup.start("events", b)
    await until(lambda: a.runs == 2 and b.runs == 2)
    assert sup.reason() == "events task failed 1x: ValueError: y; telemetry task failed 1x: KeyError: 'x'"
    with pytest.raises(RuntimeError, match="already running"):
        sup.start("events", b)
    await sup.stop()


async def test_a_drill_fails_the_first_runs_of_the_named_task_then_it_runs() -> None:
    script = Script()
    other = Script()
    sup = Supervisor(healthy_after_s=HEALTHY_S, sleep=Waits(), drills={"telemetry": TaskDrill(2, after_s=0.05)})
    with capture_logs() as logs:
        sup.start("telemetry", script)
        sup.start("sync", other)
        await until(lambda: script.runs == 3)
        assert sup.reason() is not None and sup.reason().startswith("telemetry task failed 2x: TaskDrillError: drill")  # type: ignore[union-attr]
        await until(lambda: not sup.down())
        await sup.stop()
    assert script.cancelled == 3, "each drilled run was the real coroutine, cancelled; the last one at stop"
    assert other.runs == 1
    assert [e["task"] for e in logs if e["event"] == "agent.task_failed"] == ["telemetry", "telemetry"]
    assert TaskDrillError.__name__ in sup.status()["telemetry"]["last_error"]


def test_parse_task_drills() -> None:
    assert parse_task_drills("telemetry:2@3, sync:1") == {"telemetry": TaskDrill(2, 3.0), "sync": TaskDrill(1, 1.0)}
    assert parse_task_drills("") == {}
    for bad in ("telemetry", "telemetry:0", ":2", "telemetry:x", "telemetry:2@x", "telemetry:2@-1"):
        with pytest.raises(ValueError, match=r"TASK:N\[@SECONDS\]"):
            parse_task_drills(bad)
