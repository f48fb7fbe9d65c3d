"""The rollout reconciler: the shell around the pure planner. Gathers facts, plans, persists, wakes devices.

One pass (``reconcile_once(now)``), for every unfinished rollout: read its stored spec and state and its
queued operator commands, observe the devices it selects or already moved (``DeviceFact``s, rules below),
call ``plan(...)``, and store the next state, the desired-state changes of its steps, the consumed
commands and its events in ONE transaction (``RolloutStore.persist_plan``); then wake the long-polling
devices whose desired state changed. ``AssignBundle`` → desired bundle = target, reason ``rollout <id> wave
<n>``; ``RevertDevice`` → desired bundle = the device's previous bundle (None clears it, as does a previous
bundle the store does not know), reason ``rollback of <id>``. The loop runs a pass every ``interval_s`` and
at once after ``wake()`` (a command, a new rollout, a device report).

Restart safety: the persisted ``RolloutState`` is the only memory. A crash before the commit loses the
whole pass (nothing was assigned); after it, the next pass re-plans from the stored state, and the planner
never assigns a device in ``state.assigned`` again nor reverts one in ``state.reverting``.

Leadership: several controller replicas may share one database; only the holder of the ``rollout-reconciler``
lease (``RolloutStore.acquire_lease``, renewed every pass, ``lease_ttl_s`` long) runs passes. A replica that
lost its lease mid-pass is still fenced by the optimistic ``version`` check on every state write. Clocks of
replicas must agree to within a fraction of the lease TTL (NTP), since expiry compares the writer's ``now``.

Fact rules (``device_fact``), all relative to the rollout's target bundle T:

- ``online``: the device was seen within ``OFFLINE_AFTER`` (120 s) of ``now``.
- ``running_bundle``: the committed bundle it reports; ``update_state``: its ``UpdateState`` name, lowercase
  without prefix (``"committed"``); missing → ``"idle"``.
- The report is about T ("working on T") when its ``candidate_bundle_digest`` is T, or when its desired
  bundle is T and its ``applied_revision`` has reached the desired revision (a device that has not yet
  seen the assignment still reports its previous update, which must not count against T).
- ``succeeded``: it runs T and its update state is ``committed`` (or ``idle``: a restarted device that runs T).
- ``failed``: update state ``failed`` while working on T, or its last canary verdict is FAIL for T.
- ``rolled_back``: update state ``rolled_back`` while working on T (it ran T and went back).
- ``inconclusive_count``: INCONCLUSIVE ``canary_verdict`` events for T received since the assignment, in
  a row (counted back from the newest verdict for T), and at least 1 when the reported last verdict is
  INCONCLUSIVE for T.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from edgefleet_controller.hub import SyncHub
from edgefleet_controller.rollout.convert import spec_from_dict, state_from_dict, state_to_dict
from edgefleet_controller.rollout.model import (
    Abort,
    Approve,
    AssignBundle,
    Command,
    DeviceFact,
    Emit,
    Pause,
    Resume,
    RevertDevice,
    RolloutSpec,
    RolloutState,
    SetPhase,
)
from edgefleet_controller.rollout.planner import plan
from edgefleet_controller.store import Store
from edgefleet_controller.store.errors import Conflict
from edgefleet_controller.store.records import DeviceRecord, EventRecord
from edgefleet_controller.store.rollouts import CommandRow, DesiredChange, DesiredRow, RolloutRow, RolloutStore

log = structlog.get_logger(__name__)

LEASE_NAME = "rollout-reconciler"
OFFLINE_AFTER = timedelta(seconds=120)
DEFAULT_INTERVAL_S = 1.0
DEFAULT_LEASE_TTL_S = 15.0

Clock = Callable[[], datetime]

_COMMANDS: Mapping[str, Callable[[str], Command]] = {
    "pause": Pause,
    "resume": Resume,
    "approve": Approve,
    "abort": Abort,
}


def default_holder() -> str:
    """A lease holder name unique to this process and reconciler instance."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


# ------------------------------------------------------------------ facts (pure)


def _enum_name(value: object, prefix: str) -> str:
    return str(value or "").removeprefix(prefix).lower()


def reported_state(record: DeviceRecord) -> Mapping[str, Any]:
    """The device's last ``ReportedState`` as a dict (``MessageToDict`` field names), or empty."""
    state = record.reported.get("state") if isinstance(record.reported, Mapping) else None
    return state if isinstance(state, Mapping) else {}


def hardware_class_of(record: DeviceRecord) -> str:
    """The hardware class the device reports now, else the one it enrolled with."""
    hardware = reported_state(record).get("hardware")
    reported = hardware.get("hardware_class") if isinstance(hardware, Mapping) else None
    return str(reported) if reported else record.hardware_class


def last_verdict(record: DeviceRecord) -> Mapping[str, Any]:
    verdict = reported_state(record).get("last_verdict")
    return verdict if isinstance(verdict, Mapping) else {}


def device_fact(
    record: DeviceRecord, desired: DesiredRow | None, target: str, now: datetime, inconclusive: int = 0
) -> DeviceFact:
    """One device's ``DeviceFact`` relative to ``target`` (see the module docstring for each rule)."""
    state = reported_state(record)
    update_state = _enum_name(state.get("update_state"), "UPDATE_STATE_") or "idle"
    candidate = state.get("candidate_bundle_digest") or None
    try:
        applied = int(state.get("applied_revision", 0) or 0)
    except (TypeError, ValueError):
        applied = 0
    working_on_target = candidate == target or (
        desired is not None and desired.bundle_digest == target and desired.revision > 0 and applied >= desired.revision
    )
    verdict = last_verdict(record)
    outcome = _enum_name(verdict.get("outcome"), "OUTCOME_") or None
    verdict_on_target = verdict.get("candidate_digest") == target
    if verdict_on_target and outcome == "inconclusive":
        inconclusive = max(inconclusive, 1)
    return DeviceFact(
        device_id=record.id,
        site=record.site,
        tags=dict(record.tags),
        online=record.last_seen is not None and now - record.last_seen <= OFFLINE_AFTER,
        running_bundle=record.running_bundle,
        desired_bundle=desired.bundle_digest if desired is not None else None,
        update_state=update_state,
        last_verdict_outcome=outcome,
        failed=(update_state == "failed" and working_on_target) or (verdict_on_target and outcome == "fail"),
        succeeded=record.running_bundle == target and update_state in ("committed", "idle"),
        rolled_back=update_state == "rolled_back" and working_on_target,
        inconclusive_count=inconclusive,
    )


def inconclusive_counts(
    events: Iterable[EventRecord], target: str, assigned_at: Mapping[str, datetime]
) -> dict[str, int]:
    """Per device, INCONCLUSIVE verdicts for ``target`` in a row, newest backwards, since its assignment."""
    outcomes: dict[str, list[str]] = {}
    for event in sorted(events, key=lambda e: e.id):
        since = assigned_at.get(event.device_id)
        if since is None or event.received_at < since:
            continue
        verdict = event.payload.get("verdict")
        if not isinstance(verdict, Mapping):
            continue
        about = verdict.get("candidate_digest") or event.payload.get("bundle_digest")
        if about != target:
            continue
        outcomes.setdefault(event.device_id, []).append(_enum_name(verdict.get("outcome"), "OUTCOME_"))
    counts: dict[str, int] = {}
    for device_id, seen in outcomes.items():
        run = 0
        for outcome in reversed(seen):
            if outcome != "inconclusive":
                break
            run += 1
        counts[device_id] = run
    return counts


# ------------------------------------------------------------------ the shell


@dataclass(frozen=True)
class Observation:
    """What the reconciler saw of one rollout's devices, for planning and for display."""

    facts: tuple[DeviceFact, ...]
    names: Mapping[str, str]
    verdicts: Mapping[str, Mapping[str, Any]]
    hardware: Mapping[str, str]


@dataclass
class PassReport:
    """What one pass did: ``leader`` False means another replica holds the lease and nothing ran."""

    leader: bool
    planned: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    woken_devices: list[str] = field(default_factory=list)


class Reconciler:
    """Runs planning passes (``reconcile_once``) and, once started, the loop that repeats them."""

    def __init__(
        self,
        store: Store,
        rollouts: RolloutStore,
        hub: SyncHub,
        clock: Clock,
        *,
        holder: str | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if not interval_s > 0 or not lease_ttl_s > interval_s:
            raise ValueError(
                f"reconciler interval_s must be > 0 and lease_ttl_s > interval_s, got {interval_s} and {lease_ttl_s}"
            )
        self.store = store
        self.rollouts = rollouts
        self.hub = hub
        self.clock = clock
        self.holder = holder or default_holder()
        self.interval_s = interval_s
        self.lease_ttl_s = lease_ttl_s
        self._on_change = on_change
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop task (idempotent); call from the running event loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rollout-reconciler")

    async def stop(self) -> None:
        """Stop the loop and give the lease up so another replica takes over at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self.rollouts.release_lease, LEASE_NAME, self.holder, self.clock())

    def wake(self) -> None:
        """Run the next pass now rather than after the interval."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.reconcile_once(self.clock())
            except Exception:
                # a database hiccup must not end the loop; the next pass retries from the stored state
                log.exception("rollout.reconcile_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)

    # ---- one pass --------------------------------------------------------------------------------------

    async def reconcile_once(self, now: datetime) -> PassReport:
        """One pass over every unfinished rollout, if this reconciler holds (or takes) the lease."""
        async with self._lock:
            leader = await asyncio.to_thread(
                self.rollouts.acquire_lease, LEASE_NAME, self.holder, self.lease_ttl_s, now
            )
            if not leader:
                return PassReport(leader=False)
            report = await asyncio.to_thread(self._pass, now)
        if report.woken_devices:
            self.hub.notify(report.woken_devices)
        if report.changed and self._on_change is not None:
            self._on_change()
        return report

    def all_devices(self) -> list[DeviceRecord]:
        devices: list[DeviceRecord] = []
        token: str | None = None
        while True:
            page, token = self.store.list_devices(page_size=1000, page_token=token)
            devices.extend(page)
            if token is None:
                return devices

    def observe(
        self, spec: RolloutSpec, state: RolloutState, devices: Sequence[DeviceRecord], now: datetime
    ) -> Observation:
        """Facts for the devices the rollout selects or already moved (reads the store)."""
        relevant = [d for d in devices if d.id in state.assigned or spec.selector.matches(d.site, d.tags)]
        desired = self.rollouts.desired_rows([d.id for d in relevant])
        assigned_at = {d: a.assigned_at for d, a in state.assigned.items()}
        counts: dict[str, int] = {}
        if assigned_at:
            events = self.rollouts.verdict_events(sorted(assigned_at), min(assigned_at.values()))
            counts = inconclusive_counts(events, spec.bundle_digest, assigned_at)
        facts = tuple(device_fact(d, desired.get(d.id), spec.bundle_digest, now, counts.get(d.id, 0)) for d in relevant)
        return Observation(
            facts=facts,
            names={d.id: d.name for d in relevant},
            verdicts={d.id: last_verdict(d) for d in relevant},
            hardware={d.id: hardware_class_of(d) for d in relevant},
        )

    def _pass(self, now: datetime) -> PassReport:
        report = PassReport(leader=True)
        rows = self.rollouts.unfinished()
        if not rows:
            return report
        devices = self.all_devices()
        for row in rows:
            report.planned.append(row.id)
            try:
                woken = self._reconcile(row, devices, now)
            except Conflict as exc:
                report.conflicts.append(row.id)
                log.info("rollout.plan_conflict", rollout_id=row.id, reason=str(exc))
                continue
            except Exception:
                # one broken rollout must not stall the others
                report.failed.append(row.id)
                log.exception("rollout.plan_failed", rollout_id=row.id)
                continue
            if woken is not None:
                report.changed.append(row.id)
                report.woken_devices.extend(woken)
        return report

    def _reconcile(self, row: RolloutRow, devices: Sequence[DeviceRecord], now: datetime) -> list[str] | None:
        """Plan and persist one rollout; the devices whose desired state changed, or None if nothing did."""
        spec = spec_from_dict(row.spec["spec"])
        state = state_from_dict(row.state)
        commands: list[CommandRow] = self.rollouts.pending_commands(row.id)
        observation = self.observe(spec, state, devices, now)
        result = plan(spec, state, observation.facts, now, commands=[_COMMANDS[c.command](c.reason) for c in commands])
        if not result.steps and not commands and result.next_state == state:
            return None
        assigns: dict[tuple[str, str | None, int], list[str]] = {}
        reverts: dict[str | None, list[str]] = {}
        events: list[tuple[str, Mapping[str, Any]]] = []
        for step in result.steps:
            match step:
                case AssignBundle():
                    assigns.setdefault((step.bundle_digest, step.config_digest, step.wave), []).append(step.device_id)
                case RevertDevice():
                    reverts.setdefault(step.to_bundle, []).append(step.device_id)
                case SetPhase():
                    events.append(("rollout.phase_set", {"phase": str(step.phase), "message": step.message}))
                case Emit():
                    events.append((step.event, dict(step.fields)))
        changes = [
            DesiredChange(tuple(ids), bundle, f"rollout {spec.id} wave {wave}", config)
            for (bundle, config, wave), ids in assigns.items()
        ]
        known = self.rollouts.known_bundles([b for b in reverts if b is not None])
        for to_bundle, ids in reverts.items():
            if to_bundle is None or to_bundle in known:
                changes.append(DesiredChange(tuple(ids), to_bundle, f"rollback of {spec.id}"))
            else:
                # the previous bundle was never published here (the device arrived with it): clearing
                # the desired bundle lets the device keep what it runs
                changes.append(
                    DesiredChange(tuple(ids), None, f"rollback of {spec.id} (previous {to_bundle} unknown here)")
                )
        previous = {a.previous_bundle_digest for a in result.next_state.assigned.values()}
        self.rollouts.persist_plan(
            row.id,
            read_version=row.version,
            state=state_to_dict(result.next_state),
            phase=str(result.next_state.phase),
            now=now,
            changes=changes,
            consumed_commands=[c.id for c in commands],
            events=events,
            previous_bundles={p for p in previous if p is not None and p != spec.bundle_digest},
        )
        for name, fields in events:
            log.info(name, **{"rollout_id": spec.id, **fields})
        return sorted({device_id for change in changes for device_id in change.device_ids})
