"""Background loops of the controller's services (the rollout reconciler, telemetry retention): each runs as
one task on the event loop; ``stop_loop`` cancels it and waits until it has finished."""

from __future__ import annotations

import asyncio
import contextlib


async def stop_loop(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (None: never started) and wait for it, so nothing of it runs after this returns."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
