"""The rollout service: what the FleetService rollout RPCs delegate to (create, get, list, watch, pause,
resume, approve, abort), plus the reconciler it owns (``start``/``stop``/``reconcile_once``).

Create validates before anything is stored: the bundle exists (digest or ``name@version``); a config
target is refused (config documents take effect through ApplyConfig); the selector names at least one
site or tag and matches at least one enrolled device; waves, gates and on_abort parse; latency admission
(``admit``) passes for the hardware classes of the selected devices, with the bundle's ``latency.sla_ms``
and canary ``headroom`` and the profiles table (refused → FAILED_PRECONDITION with the arithmetic, unless
``force``: then the lines are kept on the rollout, marked forced); and no selected device belongs to an
unfinished rollout (one active rollout per device; checked inside the insert transaction).

Operator commands are queued in the database (so any replica may accept them) and applied by the
reconciler. This replica runs a pass at once when it holds the lease, so the reply already shows the
effect; otherwise the leader applies it within its interval. A command that cannot apply to the stored
phase is refused with FAILED_PRECONDITION instead of being queued.

Errors are the controller's (``edgefleet_controller.errors``), so the interceptor maps them to statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import structlog

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.errors import ContractError
from edgefleet.contract.manifest import ManifestDoc, ManifestKind
from edgefleet.v1 import fleet_pb2
from edgefleet_controller import errors as cerr
from edgefleet_controller.hub import SyncHub
from edgefleet_controller.rollout.admission import Admission, admit
from edgefleet_controller.rollout.convert import (
    phase_from_proto,
    rollout_message,
    spec_from_dict,
    spec_from_manifest,
    spec_from_request,
    spec_to_dict,
    state_from_dict,
    state_to_dict,
)
from edgefleet_controller.rollout.errors import AdmissionInputError, RolloutSpecError
from edgefleet_controller.rollout.model import RolloutPhase, RolloutSpec, RolloutState
from edgefleet_controller.rollout.reconciler import (
    DEFAULT_INTERVAL_S,
    DEFAULT_LEASE_TTL_S,
    Clock,
    PassReport,
    Reconciler,
    hardware_class_of,
)
from edgefleet_controller.store import Store
from edgefleet_controller.store import errors as serr
from edgefleet_controller.store.records import BundleRecord, DeviceRecord
from edgefleet_controller.store.rollouts import RolloutRow, RolloutStore

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


def new_rollout_id() -> str:
    return f"ro_{secrets.token_hex(8)}"


def _describe_selector(spec: RolloutSpec) -> str:
    parts = []
    if spec.selector.sites:
        parts.append(f"sites={list(spec.selector.sites)}")
    if spec.selector.tags:
        parts.append("tags=" + ",".join(f"{k}={v}" for k, v in sorted(spec.selector.tags.items())))
    return " ".join(parts) or "(empty)"


class RolloutService:
    """Rollout operations over the store; owns the reconciler. Store calls run in worker threads."""

    def __init__(
        self,
        store: Store,
        hub: SyncHub,
        clock: Clock,
        *,
        holder: str | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        thermal_buffer: float = 0.0,
        watch_poll_s: float = WATCH_POLL_S,
    ) -> None:
        self.store = store
        self.rollouts = RolloutStore(store)
        self.clock = clock
        self.thermal_buffer = thermal_buffer
        self.watch_poll_s = watch_poll_s
        self._changed = asyncio.Event()
        self.reconciler = Reconciler(
            store,
            self.rollouts,
            hub,
            clock,
            holder=holder,
            interval_s=interval_s,
            lease_ttl_s=lease_ttl_s,
            on_change=self._signal_change,
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

    async def _bundle(self, ref: str) -> BundleRecord:
        if not ref:
            raise cerr.InvalidArgument(
                "rollout target: bundle must be a digest 'sha256:<64 hex>' or 'name@version', got ''"
            )
        try:
            return await asyncio.to_thread(self.store.get_bundle, ref)
        except serr.NotFound:
            raise cerr.NotFoundError(
                f"rollout target: bundle {ref!r} is not published; push it first (fleetctl bundle push)"
            ) from None
        except serr.InvalidArgument as exc:
            raise cerr.InvalidArgument(f"rollout target: {exc}") from None

    async def create(self, request: fleet_pb2.CreateRolloutRequest, *, requested_by: str = "") -> fleet_pb2.Rollout:
        """Validate and store a new rollout, then start it (see the module docstring for the checks)."""
        if request.config:
            raise cerr.Unimplemented(
                f"rollout target: config {request.config!r}: config rollouts are not served by this version; "
                "apply config documents with fleetctl apply (they take effect through the config layers)"
            )
        bundle = await self._bundle(request.bundle)
        rollout_id = new_rollout_id()
        try:
            spec = spec_from_request(rollout_id, bundle.digest, request)
        except RolloutSpecError as exc:
            raise cerr.InvalidArgument(str(exc)) from None
        name = request.name or f"{bundle.name}-{bundle.version}"
        return await self._create(name, bundle, spec, force=request.force, requested_by=requested_by)

    async def check_manifest(self, doc: ManifestDoc) -> None:
        """Everything ``create_from_manifest`` checks before storing, without storing: ApplyConfig runs it
        for every Rollout document first, so a bad one refuses the whole request and changes nothing."""
        await self._manifest_spec(doc)

    async def _manifest_spec(self, doc: ManifestDoc) -> tuple[BundleRecord, RolloutSpec]:
        if doc.kind is not ManifestKind.ROLLOUT:
            raise cerr.InvalidArgument(f"{doc.location}: {doc.ref} is not a Rollout document")
        target = doc.spec.get("target", {})
        if target.get("config"):
            raise cerr.Unimplemented(
                f"{doc.location}: spec.target.config {target['config']!r}: config rollouts are not served by "
                "this version; apply config documents with fleetctl apply"
            )
        bundle = await self._bundle(str(target.get("bundle", "")))
        rollout_id = new_rollout_id()
        try:
            spec = spec_from_manifest(rollout_id, bundle.digest, doc)
        except RolloutSpecError as exc:
            raise cerr.InvalidArgument(f"{doc.location}: {exc}") from None
        return bundle, spec

    async def create_from_manifest(self, doc: ManifestDoc, *, requested_by: str = "") -> fleet_pb2.Rollout:
        """Create the rollout a validated ``kind: Rollout`` manifest document describes."""
        bundle, spec = await self._manifest_spec(doc)
        return await self._create(
            doc.name, bundle, spec, force=bool(doc.spec.get("force", False)), requested_by=requested_by
        )

    async def _admission(self, bundle: BundleRecord, selected: Sequence[DeviceRecord], force: bool) -> Admission:
        try:
            manifest = BundleManifest.from_json_bytes(bundle.manifest)
        except ContractError as exc:
            raise cerr.FailedPrecondition(
                f"bundle {bundle.name}@{bundle.version} ({bundle.digest}): its bundle.json cannot be read for "
                f"latency admission: {exc}"
            ) from None
        profiles = await asyncio.to_thread(self.rollouts.profiles_for, bundle.digest)
        classes = sorted({hardware_class_of(d) for d in selected})
        try:
            return admit(
                manifest.latency.sla_ms, manifest.canary.headroom, self.thermal_buffer, profiles, classes, force
            )
        except AdmissionInputError as exc:
            raise cerr.FailedPrecondition(str(exc)) from None

    async def _create(
        self, name: str, bundle: BundleRecord, spec: RolloutSpec, *, force: bool, requested_by: str
    ) -> fleet_pb2.Rollout:
        if not spec.selector.sites and not spec.selector.tags:
            raise cerr.InvalidArgument(
                "rollout selector must name at least one site or tag, got none; a rollout onto the whole "
                "fleet lists its sites explicitly (e.g. sites: [warehouse-a, farm-b])"
            )
        devices = await asyncio.to_thread(self.reconciler.all_devices)
        selected = [d for d in devices if spec.selector.matches(d.site, d.tags)]
        if not selected:
            sites = sorted({d.site for d in devices})
            raise cerr.FailedPrecondition(
                f"rollout selector {_describe_selector(spec)} matches no enrolled device "
                f"(enrolled sites: {', '.join(sites) or 'none'}); fix the selector or enroll devices first"
            )
        admission = await self._admission(bundle, selected, force)
        if not admission.admitted:
            raise cerr.FailedPrecondition(
                f"latency admission refused bundle {bundle.name}@{bundle.version}: "
                + "; ".join(admission.lines)
                + "; profile the bundle on that hardware, raise the SLA, or pass force to override"
            )
        selected_ids = {d.id for d in selected}

        def check_overlap(unfinished: Sequence[RolloutRow]) -> None:
            for other in unfinished:
                other_spec = spec_from_dict(other.spec["spec"])
                other_state = state_from_dict(other.state)
                theirs = {d.id for d in devices if other_spec.selector.matches(d.site, d.tags)}
                both = sorted(selected_ids & (theirs | set(other_state.assigned)))
                if both:
                    shown = ", ".join(both[:5]) + (f" and {len(both) - 5} more" if len(both) > 5 else "")
                    raise cerr.FailedPrecondition(
                        f"{len(both)} selected device(s) ({shown}) already belong to unfinished rollout "
                        f"{other.id} ({other.name}, {other.phase}); one rollout per device at a time — wait "
                        "for it to finish, abort it, or narrow the selector"
                    )

        now = self.clock()
        document: dict[str, Any] = {
            "spec": spec_to_dict(spec),
            "bundle_ref": f"{bundle.name}@{bundle.version}",
            "admission": list(admission.lines),
            "forced": admission.forced,
            "requested_by": requested_by,
        }
        state = RolloutState()
        row = await asyncio.to_thread(
            lambda: self.rollouts.insert(
                rollout_id=spec.id,
                name=name,
                bundle_digest=bundle.digest,
                spec=document,
                state=state_to_dict(state),
                phase=str(state.phase),
                now=now,
                check=check_overlap,
            )
        )
        log.info(
            "rollout.created",
            rollout_id=row.id,
            name=name,
            bundle=bundle.digest,
            devices=len(selected),
            forced=admission.forced,
            by=requested_by,
        )
        await self._kick()
        return await self.get(row.id)

    # ---- read ------------------------------------------------------------------------------------------

    async def _row(self, rollout_id: str) -> RolloutRow:
        if not rollout_id:
            raise cerr.InvalidArgument("rollout id must be given, e.g. 'ro_3f9a…'; got ''")
        try:
            return await asyncio.to_thread(self.rollouts.get, rollout_id)
        except serr.NotFound:
            raise cerr.NotFoundError(f"rollout {rollout_id!r} not found; list rollouts to see the ids") from None

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
