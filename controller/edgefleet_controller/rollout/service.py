"""The rollout service: what the FleetService rollout RPCs delegate to (create, get, list, watch, pause,
resume, approve, abort), plus the reconciler it owns (``start``/``stop``/``reconcile_once``).

Create validates before anything is stored (the checks live in ``rollout.intake``): the target is a bundle
(digest or ``name@version``), a staged config document (``Kind/name``, staged with ApplyConfig ``stage`` or in
the same apply as the Rollout document), or both; the selector names at least one site or tag and matches at
least one enrolled device; waves, gates and on_abort parse; a bundle that failed a canary before (a
``BundleFailure`` recorded from a device's report under an assignment) is refused with FAILED_PRECONDITION
quoting the newest failure (device, rollout, reasons) unless ``force`` — then an admission line records the
override and the rollout is marked forced; latency admission (``admit``) passes for the hardware classes of
the selected devices, with the bundle's ``latency.sla_ms`` and canary ``headroom`` and the profiles table
(refused → FAILED_PRECONDITION with the arithmetic, unless ``force``: then the lines are kept on the rollout,
marked forced; a config-only rollout has no bundle to admit); and no selected device belongs to an unfinished
rollout (one active rollout per device; checked inside the insert transaction, which also claims the staged
config revision: one rollout per staged revision).

A config target's document must be staged and unclaimed; devices outside the selector that the document
affects get the revision only when the rollout completes (as a normal config change, no canary): an
admission line says how many.

Operator commands are queued in the database (so any replica may accept them) and applied by the
reconciler. This replica runs a pass at once when it holds the lease, so the reply already shows the
effect; otherwise the leader applies it within its interval. A command that cannot apply to the stored
phase is refused with FAILED_PRECONDITION instead of being queued.

Errors are the controller's (``edgefleet_controller.errors``), so the interceptor maps them to statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog

from edgefleet.contract.manifest import ManifestDoc
from edgefleet.contract.shown import shown
from edgefleet.v1 import fleet_pb2
from edgefleet_controller import errors as cerr
from edgefleet_controller.clock import Clock
from edgefleet_controller.hub import SyncHub
from edgefleet_controller.rollout.configs import ConfigTargets, config_key
from edgefleet_controller.rollout.convert import (
    phase_from_proto,
    rollout_message,
    spec_from_dict,
    spec_to_dict,
    state_from_dict,
    state_to_dict,
)
from edgefleet_controller.rollout.errors import RolloutSpecError
from edgefleet_controller.rollout.facts import reported_state
from edgefleet_controller.rollout.failures import (
    failure_from_report,
    failure_from_rollback,
    failure_from_verdict,
)
from edgefleet_controller.rollout.intake import RolloutIntake, manifest_config_target, refuse_overlap
from edgefleet_controller.rollout.model import RolloutPhase, RolloutSpec, RolloutState
from edgefleet_controller.rollout.profiles import profile_summaries
from edgefleet_controller.rollout.reconciler import ConfigsChanged, PassReport, Reconciler, ReconcilerSettings
from edgefleet_controller.store import Store
from edgefleet_controller.store import errors as serr
from edgefleet_controller.store.bundle_failures import BundleFailure, BundleFailureStore
from edgefleet_controller.store.hardware_profiles import HardwareProfileStore
from edgefleet_controller.store.leases import LeaseStore
from edgefleet_controller.store.records import BundleRecord, ConfigDocInput, DeviceRecord
from edgefleet_controller.store.rollouts import RolloutRow, RolloutStore, StagedConfig

log = structlog.get_logger(__name__)

#: How often a watcher re-reads the rollout even without a local change (device reports, other replicas).
WATCH_POLL_S = 2.0

_APPLIES: dict[str, frozenset[RolloutPhase]] = {
    "pause": frozenset({RolloutPhase.PENDING, RolloutPhase.RUNNING, RolloutPhase.WAITING_APPROVAL}),
    "resume": frozenset({RolloutPhase.PAUSED}),
    "approve": frozenset({RolloutPhase.WAITING_APPROVAL}),
    "abort": frozenset(
        {RolloutPhase.PENDING, RolloutPhase.RUNNING, RolloutPhase.PAUSED, RolloutPhase.WAITING_APPROVAL}
    ),
}


class RolloutService:
    """Rollout operations over the store; owns the reconciler. Store calls run in worker threads."""

    def __init__(
        self,
        store: Store,
        hub: SyncHub,
        clock: Clock,
        *,
        reconciler: ReconcilerSettings = ReconcilerSettings(),
        thermal_buffer: float = 0.0,
        watch_poll_s: float = WATCH_POLL_S,
        configs: ConfigTargets | None = None,
        on_configs_changed: ConfigsChanged | None = None,
    ) -> None:
        self.store = store
        self.rollouts = RolloutStore(store.db, store.desired)
        self.failures = BundleFailureStore(store.db)
        self.profiles = HardwareProfileStore(store.db)
        self.clock = clock
        self.watch_poll_s = watch_poll_s
        self._changed = asyncio.Event()
        self._failures_seen: set[tuple[str, str, str]] = set()
        self.reconciler = Reconciler(
            store,
            self.rollouts,
            LeaseStore(store.db),
            hub,
            clock,
            settings=reconciler,
            on_change=self._signal_change,
            configs=configs,
            on_configs_changed=on_configs_changed,
        )
        self.intake = RolloutIntake(
            store, self.rollouts, self.failures, self.profiles, self.reconciler.all_devices, configs, thermal_buffer
        )

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reconciler loop (call from the running event loop)."""
        self.reconciler.start()

    async def stop(self) -> None:
        """Stop the reconciler loop and release its lease."""
        await self.reconciler.stop()
        self._signal_change()

    def wake(self) -> None:
        """Ask for a pass now (call after device reports or verdict events)."""
        self.reconciler.wake()

    async def reconcile_once(self, now: datetime | None = None) -> PassReport:
        """One reconciler pass at ``now`` (default: the clock)."""
        return await self.reconciler.reconcile_once(now if now is not None else self.clock())

    def _signal_change(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _kick(self) -> None:
        report = await self.reconcile_once()
        if not report.leader:
            self.reconciler.wake()
        self._signal_change()

    # ---- create ----------------------------------------------------------------------------------------

    async def create(self, request: fleet_pb2.CreateRolloutRequest, *, requested_by: str = "") -> fleet_pb2.Rollout:
        """Validate and store a new rollout, then start it (see the module docstring for the checks)."""
        name, bundle, spec = await self.intake.request_spec(request)
        return await self._create(name, bundle, spec, force=request.force, requested_by=requested_by)

    async def check_manifest(self, doc: ManifestDoc, staged_here: Sequence[str] = ()) -> None:
        """Everything ``create_from_manifest`` checks before storing, without storing: ApplyConfig runs it
        for every Rollout document first, so a bad one refuses the whole request and changes nothing.
        ``staged_here``: the ``Kind/name`` of config documents the same request stages."""
        bundle, spec = await self.intake.manifest_spec(doc, staged_here)
        await self.intake.checks(bundle, spec, force=bool(doc.spec.get("force", False)))

    manifest_config_target = staticmethod(manifest_config_target)

    async def create_from_manifest(self, doc: ManifestDoc, *, requested_by: str = "") -> fleet_pb2.Rollout:
        """Create the rollout a validated ``kind: Rollout`` manifest document describes."""
        bundle, spec = await self.intake.manifest_spec(doc)
        return await self._create(
            doc.name, bundle, spec, force=bool(doc.spec.get("force", False)), requested_by=requested_by
        )

    async def _create(
        self, name: str, bundle: BundleRecord | None, spec: RolloutSpec, *, force: bool, requested_by: str
    ) -> fleet_pb2.Rollout:
        devices, selected, lines, forced = await self.intake.checks(bundle, spec, force=force)
        config_lines, content_digest = await self.intake.config_lines(spec, devices)
        selected_ids = {d.id for d in selected}

        def check_overlap(unfinished: Sequence[RolloutRow]) -> None:
            refuse_overlap(selected_ids, devices, unfinished)

        now = self.clock()
        document: dict[str, Any] = {
            "spec": spec_to_dict(spec),
            "bundle_ref": bundle.ref if bundle else "",
            "config_content_digest": content_digest,
            "admission": [*lines, *config_lines],
            "forced": forced,
            "requested_by": requested_by,
        }
        state = RolloutState()
        try:
            row = await asyncio.to_thread(
                lambda: self.rollouts.insert(
                    rollout_id=spec.id,
                    name=name,
                    bundle_digest=bundle.digest if bundle else "",
                    spec=document,
                    state=state_to_dict(state),
                    phase=str(state.phase),
                    now=now,
                    check=check_overlap,
                    claim_config=config_key(spec.config) if spec.config else None,
                )
            )
        except serr.Conflict as exc:
            raise cerr.FailedPrecondition(f"rollout {shown(name)}: {exc}") from None
        log.info(
            "rollout.created",
            rollout_id=row.id,
            name=name,
            bundle=bundle.digest if bundle else None,
            config=spec.config,
            devices=len(selected),
            forced=forced,
            by=requested_by,
        )
        await self._kick()
        return await self.get(row.id)

    # ---- staged configs and failures (ApplyConfig and device reports call these) ---------------------

    async def stage_configs(self, docs: Sequence[ConfigDocInput], staged_by: str) -> list[str]:
        """Store config documents staged; FAILED_PRECONDITION when one is staged for an unfinished rollout."""
        try:
            return await asyncio.to_thread(self.rollouts.stage_configs, docs, staged_by, self.clock())
        except serr.Conflict as exc:
            raise cerr.FailedPrecondition(str(exc)) from None

    async def staged(self) -> list[StagedConfig]:
        return await asyncio.to_thread(self.rollouts.staged_configs)

    async def config_overrides(self) -> dict[str, tuple[str, ManifestDoc]]:
        """See ``Reconciler.config_overrides``."""
        return await asyncio.to_thread(self.reconciler.config_overrides)

    def profile_summaries(
        self, bundle_digests: Sequence[str] | None = None, hardware_class: str | None = None
    ) -> list[Mapping[str, Any]]:
        """ListProfiles: per (bundle, hardware class), what admission reads (``rollout.profiles``). Reads the
        store: call through ``asyncio.to_thread``."""
        return profile_summaries(self.profiles.measurements(bundle_digests, hardware_class))

    async def bundle_failures(self, digest: str) -> list[BundleFailure]:
        return await asyncio.to_thread(self.failures.of_bundles, [digest])

    async def _record_failure(self, failure: BundleFailure | None) -> None:
        if failure is None:
            return
        key = (failure.bundle_digest, failure.device_id, failure.assignment_id)
        if key in self._failures_seen:
            return
        known = await asyncio.to_thread(self.rollouts.known_bundles, [failure.bundle_digest])
        if failure.bundle_digest not in known:
            return  # a digest no one published here: nothing to refuse later
        desired = await asyncio.to_thread(self.rollouts.desired_rows, [failure.device_id])
        row = desired.get(failure.device_id)
        if row is not None and row.assignment_id == failure.assignment_id and row.rollout_id:
            failure = replace(failure, rollout_id=row.rollout_id)
        if await asyncio.to_thread(self.failures.record, failure):
            log.info(
                "rollout.bundle_failure_recorded",
                bundle=failure.bundle_digest,
                device_id=failure.device_id,
                rollout_id=failure.rollout_id,
                kind=failure.kind,
            )
        if len(self._failures_seen) > 100_000:
            self._failures_seen.clear()
        self._failures_seen.add(key)

    async def note_report(self, device: DeviceRecord, state: Mapping[str, Any]) -> None:
        """Record the bundle failure a device's reported state shows (a FAIL verdict or a rollback)."""
        await self._record_failure(
            failure_from_report(state, device_id=device.id, device_name=device.name, at=self.clock())
        )

    async def note_verdict(self, device: DeviceRecord, verdict: Mapping[str, Any], at: datetime) -> None:
        """Record the bundle failure a device's canary verdict event shows."""
        await self._record_failure(failure_from_verdict(verdict, device_id=device.id, device_name=device.name, at=at))

    async def note_rollback(
        self, device: DeviceRecord, bundle_digest: str, reason: str, revision: int, at: datetime
    ) -> None:
        """Record the bundle failure a device's rollback event shows, under the assignment it acted on: the
        one its report names while it reports the rollback, else its desired state's when the event's
        revision is the current one."""
        state = reported_state(device)
        assignment = ""
        if str(state.get("update_state") or "").endswith("ROLLED_BACK"):
            assignment = str(state.get("assignment_id") or "")
        if not assignment:
            desired = (await asyncio.to_thread(self.rollouts.desired_rows, [device.id])).get(device.id)
            if desired is not None and desired.revision == revision and desired.assignment_id:
                assignment = desired.assignment_id
        failure = failure_from_rollback(
            bundle_digest,
            reason,
            assignment,
            running_bundle=device.running_bundle,
            device_id=device.id,
            device_name=device.name,
            at=at,
        )
        await self._record_failure(failure)

    # ---- read ------------------------------------------------------------------------------------------

    async def _row(self, rollout_id: str) -> RolloutRow:
        if not rollout_id:
            raise cerr.InvalidArgument("rollout id must be given, e.g. 'ro_3f9a…'; got ''")
        try:
            return await asyncio.to_thread(self.rollouts.get, rollout_id)
        except serr.NotFound:
            raise cerr.NotFoundError(f"rollout {shown(rollout_id)} not found; list rollouts to see the ids") from None

    def _message(self, row: RolloutRow, devices: Sequence[DeviceRecord], now: datetime) -> fleet_pb2.Rollout:
        spec = spec_from_dict(row.spec["spec"])
        state = state_from_dict(row.state)
        seen = self.reconciler.observe(spec, state, devices, now)
        return rollout_message(
            name=row.name,
            spec=spec,
            state=state,
            created_at=row.created_at,
            updated_at=row.updated_at,
            admission=row.spec.get("admission", ()),
            forced=bool(row.spec.get("forced", False)),
            facts=seen.facts,
            names=seen.names,
            verdicts=seen.verdicts,
            config_content_digest=str(row.spec.get("config_content_digest", "")),
        )

    async def get(self, rollout_id: str) -> fleet_pb2.Rollout:
        """The rollout with every assigned or selected device's status."""
        row = await self._row(rollout_id)
        now = self.clock()

        def build() -> fleet_pb2.Rollout:
            return self._message(row, self.reconciler.all_devices(), now)

        return await asyncio.to_thread(build)

    async def watch(self, rollout_id: str) -> AsyncIterator[fleet_pb2.Rollout]:
        """The rollout now, then after every change, until it reaches a terminal phase."""
        last: fleet_pb2.Rollout | None = None
        while True:
            changed = self._changed
            current = await self.get(rollout_id)
            if current != last:
                yield current
                last = current
            if RolloutPhase(state_phase(current)).terminal:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self.watch_poll_s)

    # ---- operator commands -----------------------------------------------------------------------------

    async def _command(self, rollout_id: str, command: str, reason: str, requested_by: str) -> fleet_pb2.Rollout:
        row = await self._row(rollout_id)
        phase = RolloutPhase(row.phase)
        allowed = _APPLIES[command]
        if phase not in allowed:
            raise cerr.FailedPrecondition(
                f"rollout {rollout_id} is {phase}; {command} applies only to a rollout that is "
                f"{' or '.join(sorted(str(p) for p in allowed))}"
            )
        await asyncio.to_thread(
            self.rollouts.enqueue_command, rollout_id, command, reason, self.clock(), requested_by or None
        )
        log.info(f"rollout.{command}_requested", rollout_id=rollout_id, reason=reason, by=requested_by)
        await self._kick()
        return await self.get(rollout_id)

    async def pause(self, rollout_id: str, reason: str = "", *, requested_by: str = "") -> fleet_pb2.Rollout:
        return await self._command(rollout_id, "pause", reason, requested_by)

    async def resume(self, rollout_id: str, reason: str = "", *, requested_by: str = "") -> fleet_pb2.Rollout:
        return await self._command(rollout_id, "resume", reason, requested_by)

    async def approve(self, rollout_id: str, reason: str = "", *, requested_by: str = "") -> fleet_pb2.Rollout:
        return await self._command(rollout_id, "approve", reason, requested_by)

    async def abort(self, rollout_id: str, reason: str = "", *, requested_by: str = "") -> fleet_pb2.Rollout:
        return await self._command(rollout_id, "abort", reason, requested_by)

    # ``list`` last: inside the class body its name would shadow the builtin in later annotations
    async def list(self, phases: Sequence[int] = ()) -> fleet_pb2.ListRolloutsResponse:
        """Rollouts oldest first; only those in ``phases`` (proto ``RolloutPhase`` values) when given."""
        try:
            wanted = {str(phase_from_proto(p)) for p in phases}
        except RolloutSpecError as exc:
            raise cerr.InvalidArgument(f"ListRolloutsRequest.phases: {exc}") from None
        now = self.clock()

        def build() -> fleet_pb2.ListRolloutsResponse:
            rows = self.rollouts.list_rollouts(wanted)
            devices = self.reconciler.all_devices() if rows else []
            return fleet_pb2.ListRolloutsResponse(rollouts=[self._message(row, devices, now) for row in rows])

        return await asyncio.to_thread(build)


def state_phase(message: fleet_pb2.Rollout) -> str:
    """The model phase value of a wire ``Rollout``."""
    return str(phase_from_proto(message.phase))
