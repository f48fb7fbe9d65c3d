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
lease (``LeaseStore.acquire``, renewed every pass, ``lease_ttl_s`` long) runs passes. A replica that
lost its lease mid-pass is still fenced by the optimistic ``version`` check on every state write. Clocks of
replicas must agree to within a fraction of the lease TTL (NTP), since expiry compares the writer's ``now``.

Facts (``DeviceFact``) come from ``rollout.facts`` (its docstring has the rules).

Config rollouts: the rollout's staged revision (``RolloutStore.staged_config``, claimed at create) gives
each device its target (``configs.ConfigTargets``: effective config with the staged revision in place),
and ``live_config_digest`` (the same without it) is where a revert sends the device. Once a config rollout
is completed its staged revision becomes a live version (``ConfigStore.apply``), then every
device's config is recomputed (the ``on_configs_changed`` hook: the controller's config assignment, so
devices the document affects outside the selector get it as a normal config change), then the staged row
is dropped; an aborted rollout's staged revision is dropped. Both steps are idempotent and retried on the
next pass, so a crash between them loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, assert_never

import structlog

from edgefleet.contract.manifest import ManifestDoc
from edgefleet_controller.clock import Clock
from edgefleet_controller.hub import SyncHub
from edgefleet_controller.loops import stop_loop
from edgefleet_controller.rollout.configs import ConfigTargets, config_key, staged_document
from edgefleet_controller.rollout.convert import spec_from_dict, state_from_dict, state_to_dict
from edgefleet_controller.rollout.facts import (
    accepted_assignments,
    device_fact,
    hardware_class_of,
    inconclusive_counts,
    shown_verdicts,
    verdicts_under,
)
from edgefleet_controller.rollout.model import (
    COMMANDS,
    AssignBundle,
    DeviceFact,
    Emit,
    RevertDevice,
    RolloutPhase,
    RolloutSpec,
    RolloutState,
    SetPhase,
)
from edgefleet_controller.rollout.planner import plan
from edgefleet_controller.store import Store
from edgefleet_controller.store.errors import Conflict, NotFound
from edgefleet_controller.store.leases import LeaseStore
from edgefleet_controller.store.records import ConfigDocInput, DeviceRecord
from edgefleet_controller.store.rollouts import (
    CommandRow,
    DesiredChange,
    DesiredRow,
    RolloutRow,
    RolloutStore,
    StagedConfig,
)

log = structlog.get_logger(__name__)

LEASE_NAME = "rollout-reconciler"
DEFAULT_INTERVAL_S = 1.0
DEFAULT_LEASE_TTL_S = 15.0


def default_holder() -> str:
    """A lease holder name unique to this process and reconciler instance."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class ReconcilerSettings:
    """How the reconciler runs: the lease holder name (None: ``default_holder()``), the seconds between passes
    and the lease's lifetime, which must outlast a pass interval."""

    holder: str | None = None
    interval_s: float = DEFAULT_INTERVAL_S
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S

    def __post_init__(self) -> None:
        if not self.interval_s > 0 or not self.lease_ttl_s > self.interval_s:
            raise ValueError(
                "reconciler interval_s must be > 0 and lease_ttl_s > interval_s, "
                f"got {self.interval_s} and {self.lease_ttl_s}"
            )


# ------------------------------------------------------------------ the shell


@dataclass(frozen=True)
class Observation:
    """What the reconciler saw of one rollout's devices, for planning and for display."""

    facts: tuple[DeviceFact, ...]
    names: Mapping[str, str]
    #: the reported last verdict of each device whose verdict counts under this rollout's assignment
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
    #: staged config revisions promoted to live ("SiteConfig/a") or discarded, by rollouts that ended
    promoted: list[str] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)


ConfigsChanged = Callable[[], Awaitable[object]]


class Reconciler:
    """Runs planning passes (``reconcile_once``) and, once started, the loop that repeats them."""

    def __init__(
        self,
        store: Store,
        rollouts: RolloutStore,
        leases: LeaseStore,
        hub: SyncHub,
        clock: Clock,
        *,
        settings: ReconcilerSettings = ReconcilerSettings(),
        on_change: Callable[[], None] | None = None,
        configs: ConfigTargets | None = None,
        on_configs_changed: ConfigsChanged | None = None,
    ) -> None:
        self.store = store
        self.rollouts = rollouts
        self.leases = leases
        self.hub = hub
        self.clock = clock
        self.holder = settings.holder or default_holder()
        self.interval_s = settings.interval_s
        self.lease_ttl_s = settings.lease_ttl_s
        self._on_change = on_change
        self.configs = configs
        self.on_configs_changed = on_configs_changed
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
        await stop_loop(task)
        await asyncio.to_thread(self.leases.release, LEASE_NAME, self.holder, self.clock())

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
            leader = await asyncio.to_thread(self.leases.acquire, LEASE_NAME, self.holder, self.lease_ttl_s, now)
            if not leader:
                return PassReport(leader=False)
            report = await asyncio.to_thread(self._pass, now)
            await self._settle_staged(report, now)
        if report.woken_devices:
            self.hub.notify(report.woken_devices)
        if report.changed and self._on_change is not None:
            self._on_change()
        return report

    def all_devices(self) -> list[DeviceRecord]:
        devices: list[DeviceRecord] = []
        token: str | None = None
        while True:
            page, token = self.store.devices.page(page_size=1000, page_token=token)
            devices.extend(page)
            if token is None:
                return devices

    def staged_for(self, spec: RolloutSpec) -> StagedConfig | None:
        """The staged revision this config rollout claimed (None: bundle-only, or already promoted/dropped)."""
        if spec.config is None:
            return None
        staged = self.rollouts.staged_config(*config_key(spec.config))
        return staged if staged is not None and staged.rollout_id == spec.id else None

    def _configs(
        self,
        spec: RolloutSpec,
        state: RolloutState,
        devices: Sequence[DeviceRecord],
        desired: Mapping[str, DesiredRow],
    ) -> dict[str, tuple[str | None, str | None]]:
        """Device id → (live config, target config) of a config rollout (empty for a bundle-only one)."""
        if spec.config is None:
            return {}
        computed: Mapping[str, tuple[str, str | None]] = {}
        if not state.phase.terminal:
            staged = self.staged_for(spec)
            if staged is None and not state.phase.aborting:
                raise RuntimeError(
                    f"rollout {spec.id}: its staged {spec.config} is gone; abort the rollout (fleetctl rollout "
                    "abort) so its devices go back to their live config"
                )
            if self.configs is None:
                raise RuntimeError(f"rollout {spec.id}: this controller has no config targets to plan {spec.config}")
            doc: ManifestDoc | None = staged_document(staged) if staged is not None else None
            computed = self.configs.effective(devices, doc)
        out: dict[str, tuple[str | None, str | None]] = {}
        for device in devices:
            live, target = computed.get(device.id, (None, None))
            assignment = state.assigned.get(device.id)
            if assignment is not None:
                # the rollout's current target for the device: its desired config while that desired state
                # still belongs to the rollout (a config change mid-rollout moves it), else what it assigned
                row = desired.get(device.id)
                mine = row is not None and row.rollout_id == spec.id and device.id not in state.reverting
                target = row.config_digest if mine and row is not None else assignment.config_digest
            out[device.id] = (live, target)
        return out

    def observe(
        self, spec: RolloutSpec, state: RolloutState, devices: Sequence[DeviceRecord], now: datetime
    ) -> Observation:
        """Facts for the devices the rollout selects or already moved (reads the store)."""
        relevant = [d for d in devices if d.id in state.assigned or spec.selector.matches(d.site, d.tags)]
        desired = self.rollouts.desired_rows([d.id for d in relevant])
        accepted = {
            d: accepted_assignments(spec.id, a, desired.get(d), d in state.reverting) for d, a in state.assigned.items()
        }
        assigned_at = {d: a.assigned_at for d, a in state.assigned.items()}
        counts: dict[str, int] = {}
        recorded: dict[str, Mapping[str, Any]] = {}
        if assigned_at:
            events = self.rollouts.verdict_events(sorted(assigned_at), min(assigned_at.values()))
            counts = inconclusive_counts(events, accepted, assigned_at)
            recorded = verdicts_under(events, accepted)
        configs = self._configs(spec, state, relevant, desired)
        facts = tuple(
            device_fact(
                d,
                desired.get(d.id),
                spec.bundle_digest,
                now,
                counts.get(d.id, 0),
                assignment=state.assigned.get(d.id),
                accepted=accepted.get(d.id, frozenset()),
                live_config=configs.get(d.id, (None, None))[0],
                target_config=configs.get(d.id, (None, None))[1],
            )
            for d in relevant
        )
        return Observation(
            facts=facts,
            names={d.id: d.name for d in relevant},
            verdicts=shown_verdicts(relevant, recorded, accepted),
            hardware={d.id: hardware_class_of(d) for d in relevant},
        )

    def config_overrides(self) -> dict[str, tuple[str, ManifestDoc]]:
        """Device id → (rollout id, staged document) for every device a config rollout has moved and not sent
        back, while its staged revision is held (running, or completed and not yet made live): the
        controller's config assignment computes their config with that document in place, so a config change
        mid-rollout (or in the moment between completion and promotion) does not undo the rollout's target."""
        out: dict[str, tuple[str, ManifestDoc]] = {}
        for staged in self.rollouts.staged_configs():
            if staged.rollout_id is None:
                continue
            try:
                row = self.rollouts.get(staged.rollout_id)
            except NotFound:
                continue
            state = state_from_dict(row.state)
            if state.phase.aborting:
                continue
            doc = staged_document(staged)
            for device_id in set(state.assigned) - state.reverting:
                out[device_id] = (row.id, doc)
        return out

    async def _settle_staged(self, report: PassReport, now: datetime) -> None:
        """Promote the staged revision of every completed config rollout to live, drop those of aborted ones."""
        staged = await asyncio.to_thread(self.rollouts.staged_configs)
        for item in staged:
            if item.rollout_id is None:
                continue
            try:
                row = await asyncio.to_thread(self.rollouts.get, item.rollout_id)
            except NotFound:
                continue  # a claim by a rollout this database does not hold: leave it for an operator
            if row.phase == RolloutPhase.COMPLETED:
                doc = ConfigDocInput(item.kind, item.name, item.site, item.doc_json, item.content_digest)
                by = f"rollout {item.rollout_id}"
                await asyncio.to_thread(self.store.configs.apply, [doc], by, now)
                if self.on_configs_changed is not None:
                    await self.on_configs_changed()
                report.promoted.append(item.ref)
            elif RolloutPhase(row.phase).aborting:
                report.discarded.append(item.ref)
            else:
                continue
            await asyncio.to_thread(self.rollouts.drop_staged, item.kind, item.name, item.rollout_id)
            log.info(
                "rollout.config_promoted" if row.phase == RolloutPhase.COMPLETED else "rollout.config_discarded",
                rollout_id=item.rollout_id,
                config=item.ref,
                content_digest=item.content_digest,
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
        result = plan(spec, state, observation.facts, now, commands=[COMMANDS[c.command](c.reason) for c in commands])
        if not result.steps and not commands and result.next_state == state:
            return None
        assigns: dict[tuple[str | None, str | None, int], dict[str, str]] = {}
        reverts: dict[tuple[str | None, str | None, bool], dict[str, str]] = {}
        events: list[tuple[str, Mapping[str, Any]]] = []
        for step in result.steps:
            match step:
                case AssignBundle():
                    key = (step.bundle_digest, step.config_digest, step.wave)
                    assigns.setdefault(key, {})[step.device_id] = step.assignment_id
                case RevertDevice():
                    back = (step.to_bundle, step.to_config, step.keep_bundle)
                    reverts.setdefault(back, {})[step.device_id] = step.assignment_id
                case SetPhase():
                    events.append(("rollout.phase_set", {"phase": str(step.phase), "message": step.message}))
                case Emit():
                    events.append((step.event, dict(step.fields)))
                case _:
                    assert_never(step)
        changes = [
            DesiredChange(
                tuple(ids),
                bundle,
                f"rollout {spec.id} wave {wave}",
                config,
                assignment_ids={d: a for d, a in ids.items() if a},
                keep_bundle=bundle is None,
            )
            for (bundle, config, wave), ids in assigns.items()
        ]
        known = self.rollouts.known_bundles([b for b, _, keep in reverts if b is not None and not keep])
        for (to_bundle, to_config, keep), ids in reverts.items():
            reason = f"rollback of {spec.id}"
            bundle = to_bundle
            if not keep and to_bundle is not None and to_bundle not in known:
                # the previous bundle was never published here (the device arrived with it): clearing
                # the desired bundle lets the device keep what it runs
                reason, bundle = f"rollback of {spec.id} (previous {to_bundle} unknown here)", None
            if keep and to_config is None:
                continue  # nothing of the device's to take back
            ids_given = {d: a for d, a in ids.items() if a}
            changes.append(DesiredChange(tuple(ids), bundle, reason, to_config, ids_given, keep_bundle=keep))
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
            previous_bundles={p for p in previous if p is not None and p != spec.bundle_digest}
            if spec.bundle_digest
            else (),
        )
        for name, fields in events:
            log.info(name, **{"rollout_id": spec.id, **fields})
        return sorted({device_id for change in changes for device_id in change.device_ids})
