"""``TelemetryService``: the shell the servicers call for UploadTelemetry, QueryTelemetry and the review
queue, plus the periodic retention and site-drift task.

Store calls run in worker threads (``asyncio.to_thread``). Alerts (drift per device and per site,
thermal throttling per device) are raised on the transition into the bad state, remembered in memory (a
restart may raise a standing alert once more), stored as ``alert`` device events (per device) and
published on the fleet feed as ``KIND_ALERT`` events.

Review samples are addressed by device and id (``store.review_samples``). ``delete`` is the admin
DeleteTelemetry: one device's records in a range, checked by ``deletion.check_request`` first.

Ingest: each batch is validated, planned in the domain (``ingest_plan.plan_batch`` over the facts the
store reads) and written by the store in one transaction; a plan whose facts another writer moved meanwhile
is refused by the store and planned again (``INGEST_ATTEMPTS``). The composition root (``bootstrap``)
builds the service, starts it and stops it.
"""

from __future__ import annotations

import asyncio
import functools
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from edgefleet.contract.shown import shown
from edgefleet.v1 import fleet_pb2, telemetry_pb2
from edgefleet_controller.clock import Clock
from edgefleet_controller.errors import timestamp_arg
from edgefleet_controller.fleet_feed import FleetFeed
from edgefleet_controller.loops import stop_loop
from edgefleet_controller.metrics import ControllerMetrics
from edgefleet_controller.store import EventInput, Store
from edgefleet_controller.store.errors import Conflict
from edgefleet_controller.store.review_samples import ReviewSampleStore
from edgefleet_controller.store.telemetry import TelemetryStore
from edgefleet_controller.telemetry import deletion
from edgefleet_controller.telemetry.drift import (
    DEFAULT_BASELINE_WINDOWS,
    DEFAULT_MIN_FRAMES,
    DEFAULT_PSI_BOUND,
    DriftFinding,
    add_counts,
    evaluate_drift,
)
from edgefleet_controller.telemetry.ingest import validate_batch
from edgefleet_controller.telemetry.ingest_plan import IngestOutcome, plan_batch
from edgefleet_controller.telemetry.query import QueryPolicy, summarise
from edgefleet_controller.telemetry.review import check_request, listing, sample_info
from edgefleet_controller.telemetry.thermal import ThrottlePolicy

log = structlog.get_logger("edgefleet.controller.telemetry")

#: Reads and plans of one batch before a conflict with a concurrent writer of the same device is an error.
INGEST_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    retention: timedelta = timedelta(days=30)
    max_bytes: int = 10 << 30
    retention_interval_s: float = 300.0
    psi_bound: float = DEFAULT_PSI_BOUND
    min_frames: int = DEFAULT_MIN_FRAMES
    baseline_windows: int = DEFAULT_BASELINE_WINDOWS
    #: Newest windows of a device compared with its baseline after each upload.
    drift_windows: int = 6
    #: Site drift looks at windows this recent.
    site_drift_lookback: timedelta = timedelta(minutes=10)
    throttle: ThrottlePolicy = field(default_factory=ThrottlePolicy)


class TelemetryService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        feed: FleetFeed,
        settings: TelemetrySettings = TelemetrySettings(),
        *,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.feed = feed
        self.settings = settings
        self.tstore = TelemetryStore(store.db)
        self.reviews = ReviewSampleStore(store.db)
        self._alerting: set[tuple[str, str, str]] = set()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._periodic(), name="telemetry-retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_loop(task)

    async def _periodic(self) -> None:
        while True:
            try:
                await self.run_retention()
                await self.evaluate_site_drift()
            except Exception as exc:  # the task must outlive one failed pass; the next pass retries
                log.exception("telemetry.periodic_failed", error=str(exc))
            await asyncio.sleep(self.settings.retention_interval_s)

    async def run_retention(self) -> dict[str, int]:
        now = self.clock()
        deleted = await asyncio.to_thread(
            lambda: self.tstore.enforce_retention(
                older_than=now - self.settings.retention, max_bytes=self.settings.max_bytes
            )
        )
        if any(deleted.values()):
            log.info("telemetry.retention_deleted", **deleted)
        return deleted

    # ------------------------------------------------------------------ ingest

    async def ingest(
        self, device_id: str, batches: AsyncIterator[telemetry_pb2.TelemetryBatch]
    ) -> AsyncIterator[telemetry_pb2.TelemetryAck]:
        """Store each batch (one transaction each) and acknowledge the contiguous mark after the commit."""
        async for batch in batches:
            outcome = await asyncio.to_thread(self._store_batch, device_id, batch, self.clock())
            if outcome.duplicates:
                log.debug("telemetry.duplicates_dropped", device_id=device_id, duplicates=outcome.duplicates)
            ack = telemetry_pb2.TelemetryAck(
                epoch=outcome.epoch, acked_through=outcome.acked_through, duplicates=outcome.duplicates
            )
            if outcome.refused:
                self._count_refused(device_id, outcome)
                first = outcome.refused[0]
                ack.refused_windows = len(outcome.refused)
                ack.refused_reason = f"seq {first.seq}: bundle {shown(first.bundle_digest)}: {first.reason}"
            yield ack
            if outcome.windows:
                try:
                    await self._after_windows(device_id, outcome)
                except Exception as exc:  # alerts must never break the upload stream
                    log.exception("telemetry.alert_failed", device_id=device_id, error=str(exc))

    def _count_refused(self, device_id: str, outcome: IngestOutcome) -> None:
        """Windows acknowledged but not stored (``ingest_plan.bundle_rule``): counted, one log line a batch."""
        first = outcome.refused[0]
        if self.metrics is not None:
            self.metrics.telemetry_windows_refused.labels(reason="bundle_digest").inc(len(outcome.refused))
        log.warning(
            "telemetry.windows_refused",
            device_id=device_id,
            epoch=outcome.epoch,
            refused=len(outcome.refused),
            first_seq=first.seq,
            bundle=shown(first.bundle_digest),
            reason=first.reason,
        )

    def _store_batch(self, device_id: str, batch: telemetry_pb2.TelemetryBatch, now: datetime) -> IngestOutcome:
        """Read the device's facts, plan the batch (``ingest_plan``), and store the plan in one transaction;
        a plan whose facts another writer moved meanwhile is planned again from a fresh read."""
        validate_batch(batch)
        has_windows = any(r.WhichOneof("body") == "metrics" for r in batch.records)
        recent = self.settings.throttle.windows if has_windows else 0
        attempt = 1
        while True:
            facts = self.tstore.ingest_facts(device_id, batch.epoch, recent, known_bundles=has_windows)
            plan = plan_batch(
                batch, facts, now, throttle=self.settings.throttle, baseline_windows=self.settings.baseline_windows
            )
            try:
                self.tstore.commit_batch(device_id, plan, now)
            except Conflict:
                if attempt >= INGEST_ATTEMPTS:
                    raise
                log.info("telemetry.ingest_replanned", device_id=device_id, epoch=batch.epoch, attempt=attempt)
                attempt += 1
                continue
            return plan.outcome()

    async def _after_windows(self, device_id: str, outcome: IngestOutcome) -> None:
        latest = outcome.windows[-1]
        t = latest.throttling
        await self._transition(
            device_id,
            outcome.site,
            "throttling",
            t.throttling,
            reason="thermal throttling: clock below maximum with rising temperature and latency",
            numbers=t.numbers(),
            bundle=latest.bundle_digest,
        )
        b = outcome.baseline
        if b is None or not b.complete:
            return
        recent = await asyncio.to_thread(
            self.tstore.recent_confidence, device_id, b.bundle_digest, self.settings.drift_windows
        )
        finding = evaluate_drift(
            "device",
            device_id,
            b.counts,
            add_counts(recent),
            bound=self.settings.psi_bound,
            min_frames=self.settings.min_frames,
        )
        await self._drift_transition(device_id, outcome.site, finding, b.bundle_digest)

    async def _drift_transition(self, device_id: str, site: str, f: DriftFinding, bundle: str) -> None:
        await self._transition(
            device_id,
            site,
            f"drift:{f.scope}",
            f.above,
            reason=f"confidence drift: PSI {f.psi:.3f} above bound {f.bound:g} ({f.scope} {f.key})",
            numbers={"psi": f.psi, "bound": f.bound, "frames": float(f.frames)},
            bundle=bundle,
        )

    async def _transition(
        self,
        device_id: str,
        site: str,
        what: str,
        bad: bool,
        *,
        reason: str,
        numbers: dict[str, float],
        bundle: str,
    ) -> None:
        key = (what, site, device_id)
        if not bad:
            self._alerting.discard(key)
            return
        if key in self._alerting:
            return
        self._alerting.add(key)
        now = self.clock()
        event = telemetry_pb2.DeviceEvent(
            event_id=str(uuid.uuid4()),
            kind=telemetry_pb2.DeviceEvent.KIND_ALERT,
            bundle_digest=bundle,
            reason=reason,
            numbers={k: v for k, v in numbers.items() if math.isfinite(v)},
        )
        event.at.FromDatetime(now)
        log.warning("telemetry.alert", alert=what, device_id=device_id or None, site=site, reason=reason)
        if device_id:
            payload = {"alert": what, "reason": reason, "numbers": dict(event.numbers), "bundle_digest": bundle}
            await asyncio.to_thread(self.store.events.record_many, device_id, [EventInput("alert", payload, now)], now)
        self.feed.publish_event(device_id, event, site)

    async def evaluate_site_drift(self) -> list[DriftFinding]:
        """PSI per site over recent windows against the sum of its devices' baselines; alerts on entry."""
        now = self.clock()
        rows = await asyncio.to_thread(
            lambda: self.tstore.windows(since=now - self.settings.site_drift_lookback, until=None)
        )
        baselines = await asyncio.to_thread(self.tstore.baselines)
        summary = summarise(rows, "site", baselines, QueryPolicy(self.settings.psi_bound, self.settings.min_frames))
        findings = []
        for row in summary.rows:
            f = DriftFinding("site", row.key, row.drift_psi, self.settings.psi_bound, int(row.frames))
            findings.append(f)
            await self._drift_transition("", row.key, f, "")
        return findings

    # ------------------------------------------------------------------ queries

    async def query(self, request: fleet_pb2.QueryTelemetryRequest) -> fleet_pb2.QueryTelemetryResponse:
        since = timestamp_arg(request.since, "since") if request.HasField("since") else None
        until = timestamp_arg(request.until, "until") if request.HasField("until") else None
        device_id = await asyncio.to_thread(self.tstore.resolve_device, request.device) if request.device else None
        rows = await asyncio.to_thread(
            lambda: self.tstore.windows(
                since=since, until=until, site=request.site or None, device_id=device_id, bundle=request.bundle or None
            )
        )
        gaps = await asyncio.to_thread(
            lambda: self.tstore.frame_gaps(
                since=since, until=until, site=request.site or None, device_id=device_id, bundle=request.bundle or None
            )
        )
        baselines = await asyncio.to_thread(self.tstore.baselines)
        policy = QueryPolicy(self.settings.psi_bound, self.settings.min_frames)
        # Merging is bounded per row (window_bounds) but linear in the rows: never on the event loop.
        out = await asyncio.to_thread(
            functools.partial(summarise, by_precision=request.by_precision),
            rows,
            request.group_by or "device",
            baselines,
            policy,
            gaps,
        )
        if out.skipped_records:
            log.warning("telemetry.query_skipped_records", skipped=out.skipped_records)
            if self.metrics is not None:
                self.metrics.telemetry_skipped_records.inc(out.skipped_records)
        return out

    async def list_review(self, request: fleet_pb2.ListReviewSamplesRequest) -> fleet_pb2.ListReviewSamplesResponse:
        limit = check_request(request)
        device_id = await asyncio.to_thread(self.tstore.resolve_device, request.device) if request.device else None
        rows = await asyncio.to_thread(
            lambda: self.reviews.samples(
                site=request.site or None,
                bundle=request.bundle or None,
                label=request.label or None,
                limit=limit,
                include_jpeg=request.include_jpeg,
                device_id=device_id,
                sample_id=request.sample_id or None,
            )
        )
        rates = await asyncio.to_thread(
            lambda: self.reviews.fp_rates(site=request.site or None, bundle=request.bundle or None, device_id=device_id)
        )
        return listing(rows, rates)

    async def label(self, request: fleet_pb2.LabelReviewSampleRequest, labeled_by: str) -> fleet_pb2.ReviewSampleInfo:
        device_id = await asyncio.to_thread(self.tstore.resolve_device, request.device) if request.device else None
        now = self.clock()
        row = await asyncio.to_thread(
            lambda: self.reviews.label(request.sample_id, request.label, labeled_by, now, device_id=device_id)
        )
        return sample_info(row)

    async def delete(
        self, request: fleet_pb2.DeleteTelemetryRequest, deleted_by: str
    ) -> fleet_pb2.DeleteTelemetryResponse:
        """DeleteTelemetry: the device's windows, telemetry events and review samples in [since, until)."""
        span = deletion.check_request(request)
        device_id = await asyncio.to_thread(self.tstore.resolve_device, span.device)
        deleted = await asyncio.to_thread(self.tstore.delete_range, device_id, span.since, span.until)
        log.info(
            "telemetry.deleted",
            device_id=device_id,
            since=span.since.isoformat(),
            until=span.until.isoformat(),
            deleted_by=deleted_by,
            **deleted,
        )
        return deletion.reply(device_id, deleted)
