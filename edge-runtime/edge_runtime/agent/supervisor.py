"""Supervision of the agent's long-running asyncio tasks (tick, update-worker, sync, events, telemetry).

Every such task runs inside ``Supervisor.start(name, factory)``: ``factory`` makes a fresh coroutine per run.
A run that raises is logged with its traceback (``agent.task_failed``) and started again after a capped,
jittered exponential wait (``retry.Backoff``, the agent's one retry policy), for ever: a device offline for
days must not lose its telemetry to one bad record. A run that returns is a failure too (these tasks run until
stopped), and so is a ``CancelledError`` that the task raised without being cancelled from outside.

Down and up: from its first failure until a later run has stayed up for ``healthy_after_s``, a task is
*down*; ``down()`` lists what is down, with the failures in a row and the last error, and ``reason()`` says
it in one line (``telemetry task failed 2x: OperationalError: disk I/O error``). The agent turns that into
``HEALTH_DEGRADED`` with the reason, on Sync and in ``status.json``, and back to SERVING once nothing is down.

Stopping: cancelling the supervised task (``stop()``) is not a failure; it ends a run or a backoff wait at once,
and no run starts after it, even when the run swallowed the cancel or raised in its cleanup (that is logged).

Drills: ``drills`` maps a task name to a ``TaskDrill`` (``EDGEFLEET_TASK_FAILURES=telemetry:2@3``, like the
update crash drill): its first ``failures`` runs are cancelled ``after_s`` after they start and raise
``TaskDrillError``, so an end-to-end test can kill the real telemetry task from inside the real process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from edge_runtime.agent.retry import Backoff, Sleep
from edgefleet.contract.shown import shown

__all__ = [
    "DEFAULT_HEALTHY_AFTER_S",
    "DRILL_ENV",
    "TASK_BACKOFF",
    "Supervisor",
    "TaskDown",
    "TaskDrill",
    "TaskDrillError",
    "parse_task_drills",
]

log = structlog.get_logger(__name__)

DRILL_ENV = "EDGEFLEET_TASK_FAILURES"
# A failing task is retried quickly at first (a transient fault), then at most every 30 s, like controller calls.
TASK_BACKOFF = Backoff(multiplier=0.5, max_s=30.0)
DEFAULT_HEALTHY_AFTER_S = 5.0
ERROR_TEXT_MAX = 300

TaskFactory = Callable[[], Coroutine[Any, Any, None]]
RunState = Literal["running", "backoff", "stopped"]


class TaskDrillError(RuntimeError):
    """A run failed on purpose (``EDGEFLEET_TASK_FAILURES``)."""


class TaskReturnedError(RuntimeError):
    """A task meant to run until stopped returned."""


@dataclass(frozen=True)
class TaskDrill:
    """The first ``failures`` runs of a task fail on purpose, each ``after_s`` seconds after it started."""

    failures: int
    after_s: float = 1.0


def parse_task_drills(value: str) -> dict[str, TaskDrill]:
    """``"telemetry:2@3,sync:1"`` -> {"telemetry": TaskDrill(2, 3.0), "sync": TaskDrill(1)}; ValueError with
    the accepted form."""
    drills: dict[str, TaskDrill] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, _, rest = part.partition(":")
        count, _, after = rest.partition("@")
        try:
            drill = TaskDrill(int(count), float(after) if after else 1.0)
        except ValueError:
            drill = TaskDrill(0)
        if not name or drill.failures < 1 or not drill.after_s >= 0:
            raise ValueError(
                f"{DRILL_ENV}={shown(value)}: each entry must be TASK:N[@SECONDS] with N >= 1 "
                f"(e.g. telemetry:2@3), got {shown(part)}"
            )
        drills[name] = drill
    return drills


def describe_error(exc: BaseException) -> str:
    """``Type: message``, truncated to ``ERROR_TEXT_MAX`` characters."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= ERROR_TEXT_MAX else text[: ERROR_TEXT_MAX - 1] + "…"


@dataclass(frozen=True)
class TaskDown:
    """A supervised task that is down: failed ``failures`` times in a row, the last time with ``error``."""

    name: str
    failures: int
    error: str
    state: RunState

    @property
    def reason(self) -> str:
        return f"{self.name} task failed {self.failures}x: {self.error}"


@dataclass
class _Task:
    name: str
    state: RunState = "running"
    failures: int = 0  # in a row, since the task last stayed up for healthy_after_s
    total_failures: int = 0
    restarts: int = 0
    last_error: str = ""
    started_at: float = 0.0
    next_retry_in_s: float = 0.0


class Supervisor:
    """Runs named tasks, restarts the ones that fail, and says which are down. One per agent."""

    def __init__(
        self,
        *,
        backoff: Backoff = TASK_BACKOFF,
        healthy_after_s: float = DEFAULT_HEALTHY_AFTER_S,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        drills: Mapping[str, TaskDrill] | None = None,
    ) -> None:
        self.backoff = backoff
        self.healthy_after_s = healthy_after_s
        self._sleep = sleep
        self._clock = clock
        self._drills = {name: drill.failures for name, drill in (drills or {}).items()}
        self._drill_after_s = {name: drill.after_s for name, drill in (drills or {}).items()}
        self._tasks: dict[str, _Task] = {}
        self._running: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, factory: TaskFactory) -> asyncio.Task[None]:
        """Run ``factory()`` as task ``name`` under supervision until ``stop()`` (or the task is cancelled)."""
        if name in self._running and not self._running[name].done():
            raise RuntimeError(f"supervisor: a task named {shown(name)} is already running")
        self._tasks[name] = _Task(name)
        task = asyncio.create_task(self._keep(self._tasks[name], factory), name=name)
        self._running[name] = task
        return task

    async def stop(self) -> None:
        """Cancel every supervised task and wait for them to end."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ what is down

    def down(self) -> list[TaskDown]:
        """The tasks that failed and have not stayed up for ``healthy_after_s`` since, by name."""
        return [
            TaskDown(t.name, t.failures, t.last_error, t.state)
            for t in sorted(self._tasks.values(), key=lambda t: t.name)
            if t.failures > 0
        ]

    def reason(self) -> str | None:
        """One line naming every task that is down (``telemetry task failed 2x: ...``), or None."""
        down = self.down()
        return "; ".join(d.reason for d in down) if down else None

    def status(self) -> dict[str, dict[str, Any]]:
        """Per task, for ``status.json``: state, failures in a row and in all, restarts, last error."""
        return {
            t.name: {
                "state": t.state,
                "failures": t.failures,
                "total_failures": t.total_failures,
                "restarts": t.restarts,
                "last_error": t.last_error or None,
                **({"retry_in_s": round(t.next_retry_in_s, 3)} if t.state == "backoff" else {}),
            }
            for t in sorted(self._tasks.values(), key=lambda t: t.name)
        }

    # ------------------------------------------------------------------ the loop

    async def _keep(self, task: _Task, factory: TaskFactory) -> None:
        try:
            while True:
                task.state = "running"
                task.started_at = self._clock()
                healthy = self._mark_healthy_later(task)
                try:
                    await self._run_once(task, factory)
                    raise TaskReturnedError(f"the {task.name} task returned; it must run until the agent stops")
                except asyncio.CancelledError as exc:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # stopped from outside: not a failure
                    self._failed(task, exc)
                except Exception as exc:
                    self._failed(task, exc)
                finally:
                    if healthy is not None:
                        healthy.cancel()
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    # Stopped, but the run swallowed the cancel or failed in its cleanup: no restart.
                    raise asyncio.CancelledError
                task.state = "backoff"
                await self._sleep(task.next_retry_in_s)
                task.restarts += 1
                log.info("agent.task_restarted", task=task.name, restarts=task.restarts, failures=task.failures)
        finally:
            task.state = "stopped"

    async def _run_once(self, task: _Task, factory: TaskFactory) -> None:
        drilled = self._drills.get(task.name, 0)
        if drilled <= 0:
            await factory()
            return
        self._drills[task.name] = drilled - 1
        run = asyncio.ensure_future(factory())
        try:
            done, _ = await asyncio.wait({run}, timeout=self._drill_after_s[task.name])
        finally:
            if not run.done():
                run.cancel()
                await asyncio.wait({run})
        if run in done:
            run.result()
            return
        raise TaskDrillError(f"drill: {task.name} task failure on purpose ({DRILL_ENV}, {drilled - 1} more to come)")

    def _mark_healthy_later(self, task: _Task) -> asyncio.TimerHandle | None:
        if task.failures == 0:
            return None

        def recovered() -> None:
            if task.state == "running" and task.failures:
                log.info(
                    "agent.task_recovered",
                    task=task.name,
                    after_failures=task.failures,
                    up_s=round(self._clock() - task.started_at, 3),
                )
                task.failures = 0

        return asyncio.get_running_loop().call_later(self.healthy_after_s, recovered)

    def _failed(self, task: _Task, error: BaseException) -> None:
        """Count and log a failed run (called while ``error`` is being handled: the log has its traceback)."""
        task.failures += 1
        task.total_failures += 1
        task.last_error = describe_error(error)
        task.next_retry_in_s = self.backoff.delay(task.failures)
        log.exception(
            "agent.task_failed",
            task=task.name,
            error=task.last_error,
            failures=task.failures,
            total_failures=task.total_failures,
            up_s=round(self._clock() - task.started_at, 3),
            retry_in_s=round(task.next_retry_in_s, 3),
        )
