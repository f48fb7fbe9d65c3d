"""What the controller hears: the ``ReportedState`` sent on every Sync, and ``ReportEvent`` for changes.

``AgentReporter.report`` is the driver's ``StateReporter`` port (called from the update worker thread on
every journaled transition). It keeps the latest record, queues one ``KIND_UPDATE_STATE`` event per state
change (plus ``KIND_ROLLBACK`` when entering ``rolled_back``) and wakes the agent so the pending long-poll
is re-issued with the new state at once. ``report_verdict`` (the canary evaluator's port) keeps the latest
final canary or watch verdict as ``last_verdict`` (sent in ``ReportedState``) and queues one
``KIND_CANARY_VERDICT`` event carrying it. ``report_precision`` (the switcher's listener) queues one
``KIND_PRECISION_CHOSEN`` event per load: the precision variant chosen, why, and its measured p50s.

Assignments: every verdict is stamped with the assignment of the record it was decided under
(``CanaryVerdict.assignment_id``), both in ``last_verdict`` and in its event, so the controller counts a
verdict only for the assignment that asked for it, and with the candidate's and the committed config
digests (``candidate_config_digest`` / ``baseline_config_digest``: a candidate is (bundle, config)).
``ReportedState.assignment_id`` is the record's.

Events are queued in memory (bounded; the oldest are dropped past ``max_events`` with a count) with a
unique ``event_id`` each, so re-sending after a reconnect is idempotent on the controller. ``EventSender``
sends them in batches and forgets a batch only once the controller accepted it. "Durably enough": a crash
loses queued events, but the journal and the next Sync's ``ReportedState`` carry the truth.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from edge_runtime.agent.client import ControllerLink
from edge_runtime.agent.refusals import DETAILS_CHARS, RefusalLog, refusal_of
from edge_runtime.agent.retry import Sleep, transient_retry
from edge_runtime.update.record import UpdateRecord, UpdateState
from edgefleet.contract.request_bounds import MAX_REQUEST_BYTES
from edgefleet.contract.shown import shown
from edgefleet.v1 import common_pb2, device_pb2, telemetry_pb2

log = structlog.get_logger(__name__)

MAX_EVENTS = 10_000
BATCH = 100
#: The most event bytes one ReportEvent call carries: the controller's request limit less 64 KiB to spare.
REPORT_MAX_BYTES = MAX_REQUEST_BYTES - 64 * 1024


def wire_state(state: UpdateState) -> common_pb2.UpdateState.ValueType:
    """``UpdateState`` → ``edgefleet.v1.UpdateState`` (the names match by design)."""
    return common_pb2.UpdateState.Value(f"UPDATE_STATE_{state.value.upper()}")


def _timestamp(at: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at.astimezone(UTC))
    return ts


def transition_digest(before: UpdateRecord | None, record: UpdateRecord) -> str:
    """The bundle an update-state event is about.

    In progress: the candidate. Failed or rolled back: the candidate that was just abandoned (the record
    before the transition still names it), else the latest rejection. Settled otherwise (committed, idle):
    the committed bundle. A rejection from an earlier update is never named by a later commit's event.
    """
    if record.candidate:
        return record.candidate
    if record.state in (UpdateState.FAILED, UpdateState.ROLLED_BACK):
        if before is not None and before.candidate:
            return before.candidate
        if record.rejected:
            return record.rejected
    return record.committed or ""


class AgentReporter:
    """Latest update record + queued events; thread-safe."""

    def __init__(self, *, wake: Callable[[], None] = lambda: None, max_events: int = MAX_EVENTS) -> None:
        self._lock = threading.Lock()
        self._record: UpdateRecord | None = None
        self._events: deque[telemetry_pb2.DeviceEvent] = deque()
        self._max = max_events
        self.dropped = 0
        self.revision = 0
        self._wake = wake
        self._last_verdict: common_pb2.CanaryVerdict | None = None

    def set_wake(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    @property
    def record(self) -> UpdateRecord | None:
        return self._record

    @property
    def last_verdict(self) -> common_pb2.CanaryVerdict | None:
        return self._last_verdict

    def report_verdict(self, verdict: common_pb2.CanaryVerdict) -> None:
        """Keep ``verdict`` (stamped with the current assignment) as the last one and queue it as a
        ``KIND_CANARY_VERDICT`` event."""
        stamped = common_pb2.CanaryVerdict()
        stamped.CopyFrom(verdict)
        with self._lock:
            record = self._record
        if record is not None and not stamped.assignment_id:
            stamped.assignment_id = record.assignment_id or ""
        if record is not None and record.candidate is not None:
            # The machine knows which configs the candidate and the baseline are (a config change that kept
            # the engine is invisible in the engines the evaluator compared).
            config = record.candidate_config if record.candidate_config is not None else record.committed_config
            stamped.candidate_config_digest = config or ""
            stamped.baseline_config_digest = record.committed_config or ""
        verdict = stamped
        event = telemetry_pb2.DeviceEvent(
            event_id=str(uuid.uuid4()),
            kind=telemetry_pb2.DeviceEvent.KIND_CANARY_VERDICT,
            bundle_digest=verdict.candidate_digest,
            reason="; ".join(verdict.reasons),
            revision=self.revision,
            at=verdict.decided_at if verdict.HasField("decided_at") else _timestamp(datetime.now(UTC)),
        )
        event.verdict.CopyFrom(verdict)
        with self._lock:
            self._last_verdict = verdict
            self._append(event)
        self._wake()

    def report_alert(self, bundle_digest: str, reason: str, numbers: Mapping[str, float]) -> None:
        """Queue a ``KIND_ALERT`` event: something the operator should hear about that rolled nothing back
        (thermal throttling not attributed to the bundle, an SLA the host misses with either bundle)."""
        self._report_numbers(telemetry_pb2.DeviceEvent.KIND_ALERT, bundle_digest, reason, numbers)

    def report_precision(self, bundle_digest: str, reason: str, numbers: Mapping[str, float]) -> None:
        """Queue a ``KIND_PRECISION_CHOSEN`` event: which precision variant of ``bundle_digest`` this device
        serves and why (its measured figures in ``numbers``)."""
        self._report_numbers(telemetry_pb2.DeviceEvent.KIND_PRECISION_CHOSEN, bundle_digest, reason, numbers)

    def _report_numbers(
        self,
        kind: telemetry_pb2.DeviceEvent.Kind.ValueType,
        bundle_digest: str,
        reason: str,
        numbers: Mapping[str, float],
    ) -> None:
        """Queue an event of ``kind`` about ``bundle_digest`` that carries its figures in ``numbers``."""
        event = telemetry_pb2.DeviceEvent(
            event_id=str(uuid.uuid4()),
            kind=kind,
            bundle_digest=bundle_digest,
            reason=reason,
            revision=self.revision,
            at=_timestamp(datetime.now(UTC)),
        )
        event.numbers.update(numbers)
        with self._lock:
            self._append(event)
        self._wake()

    def _append(self, event: telemetry_pb2.DeviceEvent) -> None:
        if len(self._events) >= self._max:
            self._events.popleft()
            self.dropped += 1
        self._events.append(event)

    def report(self, record: UpdateRecord) -> None:
        with self._lock:
            before = self._record
            self._record = record
            if before is None or before.state != record.state or before.failure != record.failure:
                self._queue_transition(before, record)
        self._wake()

    def _queue_transition(self, before: UpdateRecord | None, record: UpdateRecord) -> None:
        digest = transition_digest(before, record)
        kinds = [telemetry_pb2.DeviceEvent.KIND_UPDATE_STATE]
        if record.state == UpdateState.ROLLED_BACK and (before is None or before.state != record.state):
            kinds.append(telemetry_pb2.DeviceEvent.KIND_ROLLBACK)
        for kind in kinds:
            event = telemetry_pb2.DeviceEvent(
                event_id=str(uuid.uuid4()),
                kind=kind,
                bundle_digest=digest,
                from_state=wire_state(before.state) if before else common_pb2.UPDATE_STATE_UNSPECIFIED,
                to_state=wire_state(record.state),
                reason=record.failure or "",
                revision=self.revision,
                at=_timestamp(record.updated_at),
            )
            self._append(event)

    def pending(self, limit: int = BATCH) -> list[telemetry_pb2.DeviceEvent]:
        """The oldest queued events, at most ``limit`` and ``REPORT_MAX_BYTES`` of them (at least one), so a
        ReportEvent call always fits the controller's request limit."""
        with self._lock:
            taken: list[telemetry_pb2.DeviceEvent] = []
            budget = REPORT_MAX_BYTES
            for event in list(self._events)[:limit]:
                size = event.ByteSize() + 8  # its field framing in the request
                if taken and size > budget:
                    break
                taken.append(event)
                budget -= size
            return taken

    def acknowledge(self, sent: list[telemetry_pb2.DeviceEvent]) -> None:
        ids = {e.event_id for e in sent}
        with self._lock:
            while self._events and self._events[0].event_id in ids:
                self._events.popleft()

    def has_pending(self) -> bool:
        with self._lock:
            return bool(self._events)


@dataclass(eq=False, repr=False, kw_only=True)
class EventSender:
    """Sends the reporter's queued events with ``ReportEvent``; retries transient failures with backoff. A
    device refused (``refusals``: credential rejected, disabled) keeps its events and tries again after the
    refusal's backoff, logging one line per kind of refusal; any other refusal waits ``refused_backoff_s``."""

    link: ControllerLink
    reporter: AgentReporter
    timeout_s: float = 15.0
    retry_sleep: Sleep | None = None
    unauth_backoff_s: float = 300.0
    refused_backoff_s: float = 60.0
    wakeup: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def run(self) -> None:
        refusals = RefusalLog("ReportEvent", self.unauth_backoff_s, self.refused_backoff_s)
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.reporter.has_pending():
                batch = self.reporter.pending()
                try:
                    async for attempt in transient_retry(sleep=self.retry_sleep):
                        with attempt:
                            await self.link.device.ReportEvent(
                                device_pb2.ReportEventRequest(events=batch),
                                metadata=self.link.metadata,
                                timeout=self.timeout_s,
                            )
                except grpc.aio.AioRpcError as exc:
                    refused = refusal_of(exc)
                    if refused is not None:
                        await asyncio.sleep(refusals.note(refused))
                        continue
                    details = shown(exc.details() or "", DETAILS_CHARS)
                    log.warning("agent.events_refused", code=exc.code().name, details=details, events=len(batch))
                    await asyncio.sleep(self.refused_backoff_s)
                    continue
                refusals.clear()
                self.reporter.acknowledge(batch)
                log.debug("agent.events_sent", events=len(batch))
