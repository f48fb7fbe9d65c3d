"""Finding devices: by id or name (``find_device``) and every device matching store filters
(``all_devices``, paged through the store). Read-only; shared by the device, config and event services."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from edgefleet.contract.shown import shown
from edgefleet_controller import errors as cerr
from edgefleet_controller.store.devices import DeviceStore
from edgefleet_controller.store.records import DeviceRecord

#: Devices read per store page when listing all of them.
ALL_DEVICES_PAGE = 500


class DeviceDirectory:
    def __init__(self, devices: DeviceStore) -> None:
        self.devices = devices

    async def all_devices(self, **filters: Any) -> list[DeviceRecord]:
        out: list[DeviceRecord] = []
        token = None
        while True:
            page, token = await asyncio.to_thread(
                functools.partial(self.devices.page, page_size=ALL_DEVICES_PAGE, page_token=token, **filters)
            )
            out.extend(page)
            if token is None:
                return out

    async def find_device(self, ref: str) -> DeviceRecord:
        """A device by id (``dev_…``) or by name; ``InvalidArgument`` when a name is ambiguous."""
        if not ref:
            raise cerr.InvalidArgument("device must be a device id (dev_…) or name; got ''")
        if ref.startswith("dev_"):
            return await asyncio.to_thread(self.devices.get, ref)
        matches = await self.all_devices(name=ref)
        if not matches:
            raise cerr.NotFoundError(f"no device named {shown(ref)}; list them with fleetctl get devices")
        if len(matches) > 1:
            raise cerr.InvalidArgument(
                f"device name {shown(ref)} is ambiguous ({', '.join(d.id + '@' + d.site for d in matches)}); use the id"
            )
        return matches[0]
