"""Desired state per device: read (cached), assigned (stored), signalled (the long-poll hub).

``DesiredStates.desired_of`` answers from memory when this controller has not changed the device since; the
cache is evicted by ``SyncHub.notify`` — the signal every writer of desired state already sends to wake
waiting devices (a relay carries it from other replicas). A value read before an eviction is not kept after
it. ``pieces`` are what a device is sent for its desired state (``devices.delivery``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Collection, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Unpack

from edgefleet_controller.devices.delivery import Delivery, DeliveryPieces
from edgefleet_controller.hub import SyncHub
from edgefleet_controller.store.desired import DesiredChange, DesiredStore
from edgefleet_controller.store.records import DesiredState


class DesiredCache:
    """Last known desired state per device. ``evict`` bumps a generation; a value read from the store
    before an eviction is not stored after it (it may predate the change that caused the eviction)."""

    def __init__(self) -> None:
        self._by_device: dict[str, DesiredState] = {}
        self.generation = 0

    def get(self, device_id: str) -> DesiredState | None:
        return self._by_device.get(device_id)

    def put(self, desired: DesiredState, generation: int) -> None:
        if generation == self.generation:
            self._by_device[desired.device_id] = desired

    def evict(self, device_ids: Collection[str] | None) -> None:
        self.generation += 1
        if device_ids is None:
            self._by_device.clear()
            return
        for device_id in device_ids:
            self._by_device.pop(device_id, None)


class DesiredStates:
    def __init__(self, store: DesiredStore, pieces: DeliveryPieces, hub: SyncHub) -> None:
        self.store = store
        self.pieces = pieces
        self.hub = hub
        self.cache = DesiredCache()
        hub.on_change(self.cache.evict)

    async def desired_of(self, device_id: str) -> DesiredState:
        """The device's desired state, from the cache when this controller has not changed it since."""
        cached = self.cache.get(device_id)
        if cached is not None:
            return cached
        generation = self.cache.generation
        desired = await asyncio.to_thread(self.store.get, device_id)
        self.cache.put(desired, generation)
        return desired

    async def desired_of_many(self, device_ids: Sequence[str]) -> dict[str, DesiredState]:
        """``desired_of`` for several devices: cached ones from memory, the rest in one store read."""
        found = {i: d for i in device_ids if (d := self.cache.get(i)) is not None}
        missing = [i for i in device_ids if i not in found]
        if missing:
            generation = self.cache.generation
            fetched = await asyncio.to_thread(self.store.get_many, missing)
            for desired in fetched.values():
                self.cache.put(desired, generation)
            found.update(fetched)
        return found

    async def delivery(self, desired: DesiredState) -> Delivery:
        return await self.pieces.delivery(desired)

    async def assign(self, device_ids: Sequence[str], **change: Unpack[DesiredChange]) -> dict[str, int]:
        """Store a desired-state change (``DesiredStore.assign``'s keywords); the caller then ``notify``-s."""
        return await asyncio.to_thread(functools.partial(self.store.assign, device_ids, **change))

    async def redeliver_artifacts(self, artifact_digests: Sequence[str]) -> list[str]:
        """New revisions (same target) for the devices whose desired bundle declares one of these
        artifacts, and wake them: their Sync returns the desired state again (``DesiredStore``)."""
        woken = await asyncio.to_thread(self.store.redeliver_artifacts, artifact_digests)
        self.notify(woken)
        return woken

    def notify(self, device_ids: Iterable[str]) -> int:
        """Wake the devices' long-polls (and evict their cached desired state); how many were waiting."""
        return self.hub.notify(device_ids)

    def subscribe(self, device_id: str) -> AbstractContextManager[asyncio.Future[None]]:
        return self.hub.subscribe(device_id)

    async def wait(self, woken: asyncio.Future[None], wait_s: float) -> bool:
        """Wait up to ``wait_s`` for ``notify``; True if woken."""
        return await self.hub.wait(woken, wait_s)
