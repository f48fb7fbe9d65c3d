"""``DeviceService``: the fleet's devices. Enrollment, the Sync long-poll with its reported state, desired
bundles set by operators, and the device and site views operators list.

What a Sync costs: a device that re-syncs with an unchanged report and an unchanged desired state costs
no database access and no thread hop. Three caches make that so: desired state per device
(``devices.desired``), the content-addressed pieces of what a device is sent (``devices.delivery``), and
the last report per device (``_ReportMemo``): an identical report is written at most every
``REPORT_REFRESH_S`` seconds, to keep ``last_seen`` fresh.

Store calls are synchronous transactions run in worker threads (``asyncio.to_thread``); the clock is injected.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any, Protocol

import structlog

from edgefleet.contract.shown import shown
from edgefleet_controller import errors as cerr
from edgefleet_controller.auth.service import AuthService
from edgefleet_controller.bundles.service import bundle_refs
from edgefleet_controller.clock import Clock
from edgefleet_controller.configs.service import ConfigService
from edgefleet_controller.devices.delivery import Delivery
from edgefleet_controller.devices.desired import DesiredStates
from edgefleet_controller.devices.directory import DeviceDirectory
from edgefleet_controller.devices.hardware_claims import mismatch_note, profiled_class, reported_class
from edgefleet_controller.rollout.service import RolloutService
from edgefleet_controller.store import errors as serr
from edgefleet_controller.store.bundles import BundleStore
from edgefleet_controller.store.devices import DeviceStore, page_token_after
from edgefleet_controller.store.events import EventStore
from edgefleet_controller.store.records import (
    DISABLED_HEALTH,
    OFFLINE_HEALTH,
    DesiredState,
    DeviceRecord,
    SiteSummary,
)

log = structlog.get_logger("edgefleet.controller")

#: A device that has not synced for this long is shown as offline.
OFFLINE_AFTER = timedelta(seconds=120)
#: Reported state is written when it changes, and at least this often to keep last_seen fresh.
REPORT_REFRESH_S = 15.0
#: Health shown for a device not seen for ``OFFLINE_AFTER``.
OFFLINE = OFFLINE_HEALTH


@dataclass(frozen=True)
class DeviceView:
    """A device as operators see it: its record, its desired state, and its health (``disabled`` when an
    operator disabled it, else ``offline`` when it has not synced for ``OFFLINE_AFTER``)."""

    record: DeviceRecord
    desired: DesiredState | None
    health: str
    #: Why the device's hardware claims differ from its enrolment ('' when they agree; ``hardware_claims``).
    hardware_mismatch: str = ""


class DeviceChange(StrEnum):
    ENROLLED = "enrolled"
    UPDATED = "updated"


class DeviceAnnouncer(Protocol):
    """Where device changes go (the fleet feed that WatchFleet streams)."""

    def __call__(self, change: DeviceChange, view: DeviceView) -> None: ...


@dataclass(frozen=True)
class DeviceReport:
    """One Sync's reported state: its digest (an unchanged report is not rewritten), the document the store
    keeps, and the reported state as a mapping (for the rollouts' failure rules). ``read`` builds the two
    mappings, once, only when they are needed: most Syncs repeat the last report and need neither."""

    digest: str
    read: Callable[[], tuple[Mapping[str, Any], Mapping[str, Any]]]

    @cached_property
    def _mappings(self) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        return self.read()

    @property
    def document(self) -> Mapping[str, Any]:
        return self._mappings[0]

    @property
    def state(self) -> Mapping[str, Any]:
        return self._mappings[1]


@dataclass(frozen=True)
class Enrollment:
    device: DeviceRecord
    credential: str
    trusted_keys: Mapping[str, str]


@dataclass(frozen=True)
class DeviceFilter:
    """What ListDevices asks for. ``tags`` are ``key=value``; ``health`` a health name or ``offline``."""

    site: str = ""
    tags: Sequence[str] = ()
    bundle: str = ""
    health: str | None = None
    seen_since: datetime | None = None
    page_size: int = 100
    page_token: str | None = None


@dataclass
class _ReportMemo:
    digest: str
    written_at: float


@dataclass
class _DeviceCounts:
    by_state: dict[tuple[str, str], int] = field(default_factory=dict)
    stale: bool = True


@dataclass(eq=False)
class DeviceService:
    store: DeviceStore
    bundles: BundleStore
    directory: DeviceDirectory
    desired: DesiredStates
    auth: AuthService
    configs: ConfigService
    rollouts: RolloutService
    announce: DeviceAnnouncer
    clock: Clock
    #: Where the devices' profile events are read, for the hardware mismatch flag (None: Sync claims only).
    events: EventStore | None = None
    _reports: dict[str, _ReportMemo] = field(default_factory=dict, init=False)
    _counts: _DeviceCounts = field(default_factory=_DeviceCounts, init=False)
    _shutting_down: bool = field(default=False, init=False)

    def begin_shutdown(self) -> None:
        """Long-polls answer at once from now on (unchanged), so devices re-sync elsewhere."""
        self._shutting_down = True

    def view(self, rec: DeviceRecord, desired: DesiredState | None = None, profiled: str = "") -> DeviceView:
        """``profiled``: the hardware class the device's newest latency profile claims ('' if none known)."""
        offline = rec.last_seen is None or self.clock() - rec.last_seen > OFFLINE_AFTER
        note = mismatch_note(rec.hardware_class, reported=reported_class(rec.reported), profiled=profiled)
        health = DISABLED_HEALTH if rec.disabled_at is not None else OFFLINE if offline else rec.health
        return DeviceView(rec, desired, health, note)

    async def _profiled_classes(self, device_ids: Sequence[str]) -> dict[str, str]:
        """Device id → the hardware class its newest stored profile event claims (one read for all)."""
        if self.events is None or not device_ids:
            return {}
        newest = await asyncio.to_thread(self.events.newest_of_kind, device_ids, "profile")
        return {device_id: profiled_class(ev.payload) for device_id, ev in newest.items()}

    def devices_by_state(self) -> Mapping[tuple[str, str], int]:
        """Devices per (site, health), for the metrics gauge."""
        # Computed when scraped (in the metrics server's thread), not on every enrollment or report:
        # a site summary scans every device, which per report would make N reports cost O(N²).
        if self._counts.stale:
            self._counts.stale = False
            summary = self.store.site_summary()
            self._counts.by_state = {
                (site, health): count for site, s in summary.items() for health, count in s.by_health.items()
            }
        return self._counts.by_state

    # ------------------------------------------------------------------ enrollment

    async def enroll(
        self, token: str, name: str, hardware_class: str, facts: Mapping[str, Any], tags: Mapping[str, str]
    ) -> Enrollment:
        """Enroll with ``token``, which the interceptor admitted (``AuthService.admit_enrollment``) before the
        request's other fields were looked at; consuming its use here still refuses one revoked or used up since."""
        try:
            device, credential = await asyncio.to_thread(
                self.store.enroll, token, name, hardware_class, dict(facts), dict(tags), self.clock()
            )
        except serr.TokenRejected as exc:
            raise cerr.Unauthenticated(f"enrollment refused: {exc}") from None
        await self.configs.assign_configs([device])
        keys = await self.auth.list_trusted_keys()
        log.info("device.enrolled", device_id=device.id, name=device.name, site=device.site)
        self.announce(DeviceChange.ENROLLED, self.view(device))
        self._counts.stale = True
        return Enrollment(device, credential, {k.key_id: k.public_key_pem for k in keys})

    # ------------------------------------------------------------------ sync

    async def _record_report(self, device_id: str, report: DeviceReport) -> DesiredState:
        """Write the report when it changed or is due for a last_seen refresh; otherwise only read."""
        loop_now = asyncio.get_running_loop().time()
        memo = self._reports.get(device_id)
        if memo is not None and memo.digest == report.digest and loop_now - memo.written_at < REPORT_REFRESH_S:
            return await self.desired.desired_of(device_id)
        generation = self.desired.cache.generation
        desired = await asyncio.to_thread(self.store.record_report, device_id, report.document, self.clock())
        self.desired.cache.put(desired, generation)
        self._reports[device_id] = _ReportMemo(report.digest, loop_now)
        if memo is None or memo.digest != report.digest:
            device = await asyncio.to_thread(self.store.get, device_id)
            self.announce(DeviceChange.UPDATED, self.view(device, desired))
            self._counts.stale = True
            # a bundle this report shows failing (FAIL verdict or rollback under an assignment) is remembered
            await self.rollouts.note_report(device, report.state)
        return desired

    async def sync(self, device_id: str, report: DeviceReport, known_revision: int, wait_s: float) -> Delivery | None:
        """Record the report; wait up to ``wait_s`` for a desired state newer than ``known_revision``.
        None: unchanged."""
        with self.desired.subscribe(device_id) as woken:
            desired = await self._record_report(device_id, report)
            if (
                desired.revision == known_revision
                and not self._shutting_down
                and await self.desired.wait(woken, wait_s)
            ):
                desired = await self.desired.desired_of(device_id)
        if desired.revision == known_revision:
            return None
        return await self.desired.delivery(desired)

    # ------------------------------------------------------------------ desired bundles

    async def set_desired_bundle(self, bundle_ref: str, *, device: str | None, site: str) -> dict[str, int]:
        """Make a bundle desired on one device (id or name) or on every device of a site."""
        bundle = await asyncio.to_thread(self.bundles.get, bundle_ref)
        if device is not None:
            ids = [(await self.directory.find_device(device)).id]
        elif site:
            ids = [d.id for d in await self.directory.all_devices(site=site)]
            if not ids:
                raise cerr.NotFoundError(f"site {shown(site)} has no devices")
        else:
            raise cerr.InvalidArgument("SetDesiredBundle needs a device or a site")
        revisions = await self.desired.assign(
            ids,
            bundle_digest=bundle.digest,
            reason=f"set-bundle {bundle.ref}",
            now=self.clock(),
            # every SetDesiredBundle is a new decision: a bundle a device rejected is retried under it
            reassign=True,
        )
        woken = self.desired.notify(ids)
        log.info("desired.bundle_set", bundle=bundle.digest, devices=len(ids), woken=woken)
        return revisions

    # ------------------------------------------------------------------ fleet views

    async def list_devices(self, wanted: DeviceFilter) -> tuple[list[DeviceView], str | None, int]:
        """One page of devices matching ``wanted``, the next page's token (None: last page) and how many
        devices match in all. Every filter is applied by the store's query, before paging: pages are full
        until the last, and ``health`` is the health shown (``offline`` computed from last_seen)."""
        bundle = None
        if wanted.bundle:
            bundle = (await asyncio.to_thread(self.bundles.get, wanted.bundle)).digest
        for tag in wanted.tags:
            if "=" not in tag:
                raise cerr.InvalidArgument(f"tag filter must be key=value, got {shown(tag)}")
        filters: dict[str, Any] = {
            "site": wanted.site or None,
            "tags": list(wanted.tags),
            "bundle": bundle,
            "health": wanted.health,
            "seen_since": wanted.seen_since,
            "offline_before": self.clock() - OFFLINE_AFTER,
        }

        def read() -> tuple[list[DeviceRecord], str | None, int]:
            page, token = self.store.page(
                page_size=min(wanted.page_size or 100, 1000), page_token=wanted.page_token or None, **filters
            )
            return page, token, self.store.count(**filters)

        page, token, total = await asyncio.to_thread(read)
        desired = await self.desired.desired_of_many([rec.id for rec in page])
        profiled = await self._profiled_classes([rec.id for rec in page])
        return [self.view(rec, desired.get(rec.id), profiled.get(rec.id, "")) for rec in page], token, total

    @staticmethod
    def page_token_after(device_id: str) -> str:
        """The ListDevices token that resumes after ``device_id``: for a page its caller cut short."""
        return page_token_after(device_id)

    async def get_device(self, ref: str) -> DeviceView:
        rec = await self.directory.find_device(ref)
        profiled = await self._profiled_classes([rec.id])
        return self.view(rec, await self.desired.desired_of(rec.id), profiled.get(rec.id, ""))

    async def list_sites(self) -> list[SiteSummary]:
        """Each site's counts, sorted by site; ``by_bundle`` keyed by ``name@version`` (``none``: no bundle)."""
        summary = await asyncio.to_thread(self.store.site_summary)
        names = await asyncio.to_thread(bundle_refs, self.bundles)
        return [
            dataclasses.replace(s, by_bundle={(names.get(d, d) if d else "none"): n for d, n in s.by_bundle.items()})
            for _, s in sorted(summary.items())
        ]
