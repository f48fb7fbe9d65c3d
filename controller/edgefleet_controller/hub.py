"""Wakes long-polling ``Sync`` calls when a device's desired state changes.

Each waiting call costs one ``asyncio.Future`` in a dict keyed by device id: no thread, no task and no
polling loop per device, so thousands of waiting devices cost a few hundred bytes each. The order that
avoids a lost wake-up: subscribe first, then read the revision, then wait. A change committed between the
read and the wait has already resolved the future.

Several controller replicas on one PostgreSQL database forward ``notify`` through the database
(LISTEN/NOTIFY, ``replicas.py``); a single process (the embedded default) calls it directly after each
commit.

``notify`` is THE signal that desired state changed: whoever commits a desired-state change (set-bundle,
config apply, the rollout reconciler) must call it for the devices concerned, waiting or not. Listeners
(``on_change``) hear it before any waiter wakes; the service layer's desired-state cache evicts there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager


class SyncHub:
    """Registry of waiting Sync calls, keyed by device id."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._count = 0
        self._listeners: list[Callable[[Collection[str] | None], None]] = []
        self._publishers: list[Callable[[Collection[str] | None], None]] = []

    def on_change(self, listener: Callable[[Collection[str] | None], None]) -> None:
        """Call ``listener(device_ids)`` on every ``notify`` (``None``: every device) before waking anyone."""
        self._listeners.append(listener)

    def on_publish(self, publisher: Callable[[Collection[str] | None], None]) -> None:
        """Call ``publisher(device_ids)`` after every local change, to tell other replicas (see replicas.py)."""
        self._publishers.append(publisher)

    @property
    def waiting(self) -> int:
        """Number of calls currently waiting."""
        return self._count

    @contextmanager
    def subscribe(self, device_id: str) -> Iterator[asyncio.Future[None]]:
        """Register a waiter for ``device_id``; the future resolves on the next ``notify`` for it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(device_id, set()).add(future)
        self._count += 1
        try:
            yield future
        finally:
            self._count -= 1
            waiters = self._waiters.get(device_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[device_id]

    @staticmethod
    async def wait(future: asyncio.Future[None], timeout_s: float) -> bool:
        """Wait until notified (True) or ``timeout_s`` passes (False)."""
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return False
        return True

    def notify(self, device_ids: Iterable[str], *, publish: bool = True) -> int:
        """Wake every call waiting for these devices; return how many were woken. ``publish=False`` for a
        change another replica already announced."""
        ids = device_ids if isinstance(device_ids, Collection) else list(device_ids)
        for listener in self._listeners:
            listener(ids)
        if publish:
            for publisher in self._publishers:
                publisher(ids)
        return self._wake(ids)

    def _wake(self, device_ids: Iterable[str]) -> int:
        woken = 0
        for device_id in device_ids:
            for future in self._waiters.get(device_id, ()):
                if not future.done():
                    future.set_result(None)
                    woken += 1
        return woken

    def notify_all(self, *, publish: bool = False) -> int:
        """Wake every waiting call (shutdown, or a fleet-wide change); listeners hear ``None`` (everyone).
        Not published by default: a shutdown concerns this replica only."""
        for listener in self._listeners:
            listener(None)
        if publish:
            for publisher in self._publishers:
                publisher(None)
        return self._wake(list(self._waiters))
