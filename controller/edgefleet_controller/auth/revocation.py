"""``DeviceRevocation``: an operator's switches on a device's access, named by id or name. Disable (the
device is refused on its next call, everything about it is kept), enable, delete (its credential stops
working at once and its name is free for a new enrollment; a rollout that had moved it treats it as gone,
neither succeeded nor failed) and credential rotation (the new credential is returned once; the old one is
refused from the next call).

Every switch moves the credential generation in its transaction and answers only after ``settle()``, so any
call made after the answer is refused on every replica (``auth.credential_cache``); the device's parked
long-poll is also woken (and the other replicas told) so that a waiting Sync ends now, not at its ``wait_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from edgefleet_controller.auth.credential_cache import settle
from edgefleet_controller.clock import Clock
from edgefleet_controller.devices.directory import DeviceDirectory
from edgefleet_controller.hub import SyncHub
from edgefleet_controller.store.device_access import DeviceAccessStore
from edgefleet_controller.store.devices import DeviceStore
from edgefleet_controller.store.records import DeviceRecord

log = structlog.get_logger("edgefleet.controller")

T = TypeVar("T")


@dataclass(eq=False)
class DeviceRevocation:
    access: DeviceAccessStore
    devices: DeviceStore
    directory: DeviceDirectory
    hub: SyncHub
    clock: Clock

    async def disable(self, ref: str, *, by: str) -> DeviceRecord:
        """Refuse the device from its next call on (a second disable keeps the first time)."""
        return await self._switch(ref, disable=True, by=by)

    async def enable(self, ref: str, *, by: str) -> DeviceRecord:
        """Let a disabled device call again (a no-op for an enabled one)."""
        return await self._switch(ref, disable=False, by=by)

    async def _switch(self, ref: str, *, disable: bool, by: str) -> DeviceRecord:
        at = self.clock() if disable else None
        device, _ = await self._apply(ref, lambda device_id: self.access.set_disabled(device_id, at))
        log.info("device.disabled" if disable else "device.enabled", device_id=device.id, by=by)
        return await asyncio.to_thread(self.devices.get, device.id)

    async def delete(self, ref: str, *, by: str) -> DeviceRecord:
        """Remove the device and everything that is only its own; returns the record it had."""
        device, _ = await self._apply(ref, self.access.delete)
        log.info("device.deleted", device_id=device.id, site=device.site, by=by)
        return device

    async def rotate(self, ref: str, *, by: str) -> tuple[DeviceRecord, str]:
        """A new credential for the device, shown once; the old one is refused from now on."""
        device, credential = await self._apply(ref, self.access.rotate)
        log.info("device.credential_rotated", device_id=device.id, by=by)
        return device, credential

    async def _apply(self, ref: str, change: Callable[[str], T]) -> tuple[DeviceRecord, T]:
        """Every switch's one path: find the device, ``change`` it in the store, wait out ``settle()`` and wake
        its parked long-poll (here and on the other replicas)."""
        device = await self.directory.find_device(ref)
        result = await asyncio.to_thread(change, device.id)
        await settle()
        self.hub.notify([device.id])
        return device, result
