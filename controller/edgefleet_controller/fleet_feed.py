"""In-process fan-out of fleet changes to WatchFleet / WatchRollout streams.

Each watcher owns a bounded queue. A watcher too slow to keep up is cut off (its stream ends with a
message to reconnect) rather than letting the controller's memory grow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import structlog

from edgefleet.v1 import common_pb2, fleet_pb2, telemetry_pb2
from edgefleet_controller.errors import ControllerError

log = structlog.get_logger("edgefleet.controller.feed")

QUEUE_BOUND = 1000
_CLOSED = object()


class WatcherTooSlow(ControllerError, code=grpc.StatusCode.RESOURCE_EXHAUSTED):
    """The watcher's queue overflowed; it must reconnect (and take a fresh snapshot). An expected end of a
    watch, not a controller bug: RESOURCE_EXHAUSTED with this message."""


class FleetFeed:
    def __init__(self) -> None:
        self._watchers: set[asyncio.Queue[object]] = set()
        self._closed = False

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def _publish(self, item: object) -> None:
        for queue in list(self._watchers):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                self._watchers.discard(queue)
                # Make room for the sentinel so the watcher learns it was cut off.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(WatcherTooSlow("watcher fell more than 1000 changes behind; watch again"))

    def publish_device(self, kind: int, device: common_pb2.Device) -> None:
        self._publish(fleet_pb2.FleetEvent(kind=kind, device=device))  # type: ignore[arg-type]

    def publish_event(self, device_id: str, event: telemetry_pb2.DeviceEvent, site: str = "") -> None:
        self._publish(
            fleet_pb2.FleetEvent(
                kind=fleet_pb2.FleetEvent.KIND_EVENT, device=common_pb2.Device(id=device_id, site=site), event=event
            )
        )

    def close(self) -> None:
        self._closed = True
        for queue in list(self._watchers):
            with_room = queue.full()
            if with_room:
                queue.get_nowait()
            queue.put_nowait(_CLOSED)

    def subscribe(self) -> FleetSubscription:
        """Register a watcher now (changes from this moment on are queued for it) and return it."""
        queue: asyncio.Queue[object] = asyncio.Queue(QUEUE_BOUND)
        if self._closed:
            queue.put_nowait(_CLOSED)
        else:
            self._watchers.add(queue)
        return FleetSubscription(self, queue)


class FleetSubscription:
    """One watcher's queue. Registration happens in ``FleetFeed.subscribe``, not at first iteration, so a
    caller can take a snapshot after subscribing without missing a change made in between."""

    def __init__(self, feed: FleetFeed, queue: asyncio.Queue[object]) -> None:
        self._feed = feed
        self._queue = queue

    def close(self) -> None:
        self._feed._watchers.discard(self._queue)

    def __enter__(self) -> FleetSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aiter__(self) -> AsyncIterator[fleet_pb2.FleetEvent]:
        try:
            while True:
                item = await self._queue.get()
                if item is _CLOSED:
                    return
                if isinstance(item, WatcherTooSlow):
                    raise item
                assert isinstance(item, fleet_pb2.FleetEvent)
                yield item
        finally:
            self.close()
