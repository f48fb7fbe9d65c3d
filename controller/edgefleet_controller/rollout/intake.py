"""What a new rollout must pass before anything is stored: its target resolved (a published bundle, a
staged config document, or both), its spec parsed, its selector matching enrolled devices, the bundle's
failed-canary record and latency admission, and the admission lines of a config target.

``RolloutIntake`` reads the store (in worker threads) and raises the controller's errors
(``edgefleet_controller.errors``) with what to fix; ``RolloutService`` calls it for CreateRollout, for
Rollout documents (ApplyConfig checks every one before storing any) and, inside the insert transaction,
``refuse_overlap`` (one unfinished rollout per device).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.errors import ContractError
from edgefleet.contract.manifest import ManifestDoc, ManifestKind
from edgefleet.contract.shown import shown
from edgefleet.v1 import fleet_pb2
from edgefleet_controller import errors as cerr
from edgefleet_controller.rollout.admission import Admission, admit
from edgefleet_controller.rollout.configs import ConfigTargets, config_key, resolve_config_ref, staged_document
from edgefleet_controller.rollout.convert import spec_from_dict, spec_from_manifest, spec_from_request, state_from_dict
from edgefleet_controller.rollout.errors import AdmissionInputError, RolloutSpecError
from edgefleet_controller.rollout.facts import hardware_class_of
from edgefleet_controller.rollout.failures import override_line, refusal_message
from edgefleet_controller.rollout.model import RolloutSpec
from edgefleet_controller.rollout.profiles import class_p95
from edgefleet_controller.store import Store
from edgefleet_controller.store import errors as serr
from edgefleet_controller.store.bundle_failures import BundleFailureStore
from edgefleet_controller.store.hardware_profiles import HardwareProfileStore
from edgefleet_controller.store.records import BundleRecord, DeviceRecord
from edgefleet_controller.store.rollouts import RolloutRow, RolloutStore


def new_rollout_id() -> str:
    return f"ro_{secrets.token_hex(8)}"


def describe_selector(spec: RolloutSpec) -> str:
    parts = []
    if spec.selector.sites:
        parts.append(f"sites={list(spec.selector.sites)}")
    if spec.selector.tags:
        parts.append("tags=" + ",".join(f"{k}={v}" for k, v in sorted(spec.selector.tags.items())))
    return " ".join(parts) or "(empty)"


def manifest_config_target(doc: ManifestDoc) -> str:
    """``spec.target.config`` of a Rollout document ("" when none)."""
    target = doc.spec.get("target", {})
    return str(target.get("config", "")) if isinstance(target, Mapping) else ""


def refuse_overlap(
    selected_ids: Collection[str], devices: Sequence[DeviceRecord], unfinished: Sequence[RolloutRow]
) -> None:
    """FAILED_PRECONDITION when a selected device belongs to an unfinished rollout (selected by it or moved
    by it): one rollout per device at a time. Runs inside the insert transaction (``RolloutStore.insert``)."""
    for other in unfinished:
        other_spec = spec_from_dict(other.spec["spec"])
        other_state = state_from_dict(other.state)
        theirs = {d.id for d in devices if other_spec.selector.matches(d.site, d.tags)}
        both = sorted(set(selected_ids) & (theirs | set(other_state.assigned)))
        if both:
            listed = ", ".join(both[:5]) + (f" and {len(both) - 5} more" if len(both) > 5 else "")
            raise cerr.FailedPrecondition(
                f"{len(both)} selected device(s) ({listed}) already belong to unfinished rollout "
                f"{other.id} ({other.name}, {other.phase}); one rollout per device at a time — wait "
                "for it to finish, abort it, or narrow the selector"
            )


@dataclass(frozen=True)
class RolloutIntake:
    """The create checks over the store; ``all_devices`` lists every enrolled device (a worker-thread call)."""

    store: Store
    rollouts: RolloutStore
    failures: BundleFailureStore
    profiles: HardwareProfileStore
    all_devices: Callable[[], list[DeviceRecord]]
    configs: ConfigTargets | None
    thermal_buffer: float

    async def request_spec(
        self, request: fleet_pb2.CreateRolloutRequest
    ) -> tuple[str, BundleRecord | None, RolloutSpec]:
        """(name, bundle, spec) of a CreateRollout request."""
        if not request.bundle and not request.config:
            raise cerr.InvalidArgument(
                "rollout target: give a bundle ('sha256:<64 hex>' or 'name@version'), a staged config document "
                "('SiteConfig/<name>'), or both; got neither"
            )
        bundle = await self.bundle(request.bundle) if request.bundle else None
        config = await self.config_target(request.config, "rollout target: config") if request.config else None
        rollout_id = new_rollout_id()
        try:
            spec = spec_from_request(rollout_id, bundle.digest if bundle else None, request, config)
        except RolloutSpecError as exc:
            raise cerr.InvalidArgument(str(exc)) from None
        name = request.name or (
            f"{bundle.name}-{bundle.version}" if bundle else (config or "").replace("/", "-").lower()
        )
        return name, bundle, spec

    async def bundle(self, ref: str) -> BundleRecord:
        if not ref:
            raise cerr.InvalidArgument(
                "rollout target: bundle must be a digest 'sha256:<64 hex>' or 'name@version', got ''"
            )
        try:
            return await asyncio.to_thread(self.store.bundles.get, ref)
        except serr.NotFound:
            raise cerr.NotFoundError(
                f"rollout target: bundle {shown(ref)} is not published; push it first (fleetctl bundle push)"
            ) from None
        except serr.InvalidArgument as exc:
            raise cerr.InvalidArgument(f"rollout target: {exc}") from None

    async def config_target(self, ref: str, where: str, staged_here: Sequence[str] = ()) -> str:
        """The ``Kind/name`` of a config target: staged in this request (``staged_here``) or staged before
        and not claimed by an unfinished rollout."""
        staged = await asyncio.to_thread(self.rollouts.staged_configs)
        names = {*staged_here, *(s.ref for s in staged)}
        resolved = resolve_config_ref(ref, sorted(names))
        if resolved is None or resolved not in names:
            staged_names = ", ".join(sorted(names)) or "none"
            raise cerr.FailedPrecondition(
                f"{where} {shown(ref)} is not a staged config document (staged: {staged_names}); apply the document "
                "in the same 'fleetctl apply -f' as the Rollout, or stage it first with "
                "'fleetctl apply --stage -f FILE'"
            )
        if resolved not in staged_here:
            found = next(s for s in staged if s.ref == resolved)
            if found.rollout_id is not None:
                try:
                    other = await asyncio.to_thread(self.rollouts.get, found.rollout_id)
                except serr.NotFound:
                    other = None
                if other is not None and not other.terminal:
                    raise cerr.FailedPrecondition(
                        f"{where} {resolved}: its staged revision belongs to unfinished rollout {other.id} "
                        f"({other.name}, {other.phase}); one rollout per staged revision — wait for it or abort it"
                    )
        if self.configs is None:
            raise cerr.FailedPrecondition(f"{where} {resolved}: this controller serves no config rollouts")
        return resolved

    async def manifest_spec(
        self, doc: ManifestDoc, staged_here: Sequence[str] = ()
    ) -> tuple[BundleRecord | None, RolloutSpec]:
        if doc.kind is not ManifestKind.ROLLOUT:
            raise cerr.InvalidArgument(f"{doc.location}: {doc.ref} is not a Rollout document")
        target = doc.spec.get("target", {})
        ref = str(target.get("bundle", ""))
        config_ref = manifest_config_target(doc)
        if not ref and not config_ref:
            raise cerr.InvalidArgument(f"{doc.location}: spec.target needs a bundle, a config, or both; got neither")
        bundle = await self.bundle(ref) if ref else None
        config = (
            await self.config_target(config_ref, f"{doc.location}: spec.target.config", staged_here)
            if config_ref
            else None
        )
        rollout_id = new_rollout_id()
        try:
            spec = spec_from_manifest(rollout_id, bundle.digest if bundle else None, doc, config)
        except RolloutSpecError as exc:
            raise cerr.InvalidArgument(f"{doc.location}: {exc}") from None
        return bundle, spec

    async def admission(self, bundle: BundleRecord, selected: Sequence[DeviceRecord], force: bool) -> Admission:
        try:
            manifest = BundleManifest.from_json_bytes(bundle.manifest)
        except ContractError as exc:
            raise cerr.FailedPrecondition(
                f"bundle {bundle.name}@{bundle.version} ({bundle.digest}): its bundle.json cannot be read for "
                f"latency admission: {exc}"
            ) from None
        profiles = class_p95(await asyncio.to_thread(self.profiles.measurements, [bundle.digest]))
        classes = sorted({hardware_class_of(d) for d in selected})
        try:
            return admit(
                manifest.latency.sla_ms, manifest.canary.headroom, self.thermal_buffer, profiles, classes, force
            )
        except AdmissionInputError as exc:
            raise cerr.FailedPrecondition(str(exc)) from None

    async def failure_lines(self, bundle: BundleRecord, force: bool) -> list[str]:
        """The refusal of a bundle that failed a canary before (FAILED_PRECONDITION), or, forced, the line
        that records the override."""
        failures = await asyncio.to_thread(self.failures.of_bundles, [bundle.digest])
        if not failures:
            return []
        if not force:
            raise cerr.FailedPrecondition(refusal_message(bundle.ref, bundle.digest, failures))
        return [override_line(failures)]

    async def checks(
        self, bundle: BundleRecord | None, spec: RolloutSpec, *, force: bool
    ) -> tuple[list[DeviceRecord], list[DeviceRecord], list[str], bool]:
        """Every create check that needs no write: (all devices, selected devices, admission lines, forced)."""
        if not spec.selector.sites and not spec.selector.tags:
            raise cerr.InvalidArgument(
                "rollout selector must name at least one site or tag, got none; a rollout onto the whole "
                "fleet lists its sites explicitly (e.g. sites: [warehouse-a, farm-b])"
            )
        devices = await asyncio.to_thread(self.all_devices)
        selected = [d for d in devices if spec.selector.matches(d.site, d.tags)]
        if not selected:
            sites = sorted({d.site for d in devices})
            raise cerr.FailedPrecondition(
                f"rollout selector {describe_selector(spec)} matches no enrolled device "
                f"(enrolled sites: {', '.join(sites) or 'none'}); fix the selector or enroll devices first"
            )
        lines: list[str] = []
        forced = False
        if bundle is not None:
            override = await self.failure_lines(bundle, force)
            admission = await self.admission(bundle, selected, force)
            if not admission.admitted:
                raise cerr.FailedPrecondition(
                    f"latency admission refused bundle {bundle.name}@{bundle.version}: "
                    + "; ".join(admission.lines)
                    + "; profile the bundle on that hardware, raise the SLA, or pass force to override"
                )
            lines.extend(admission.lines)
            lines.extend(override)
            forced = admission.forced or bool(override)
        return devices, selected, lines, forced

    async def config_lines(self, spec: RolloutSpec, devices: Sequence[DeviceRecord]) -> tuple[list[str], str]:
        """Admission lines of a config target (how many devices it changes inside and outside the selector)
        and the staged revision's content digest."""
        if spec.config is None:
            return [], ""
        staged = await asyncio.to_thread(self.rollouts.staged_config, *config_key(spec.config))
        if staged is None or self.configs is None:
            return [], ""
        doc = staged_document(staged)
        configs = self.configs
        effective = await asyncio.to_thread(configs.effective, devices, doc)
        changed = [d for d in devices if effective[d.id][0] != effective[d.id][1]]
        inside = [d for d in changed if spec.selector.matches(d.site, d.tags)]
        outside = len(changed) - len(inside)
        line = (
            f"config {spec.config} (staged {staged.content_digest}): changes the effective config of "
            f"{len(inside)} selected device(s), canaried in waves"
        )
        if outside:
            line += f"; {outside} device(s) outside the selector get it without a canary when the rollout completes"
        return [line], staged.content_digest
