"""``ConfigService``: operator config manifests and what they make of each device.

ApplyConfig validates a whole document set (and every device's merged config) before anything is stored, so
a bad layer changes nothing; documents a Rollout of the same request targets are staged and go live through
that rollout. Each device's effective config is stored as a content-addressed blob and made desired when it
changed.

Store calls are synchronous transactions run in worker threads (``asyncio.to_thread``); the clock is injected.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.errors import ManifestError
from edgefleet.contract.manifest import (
    DeviceFacts,
    EffectiveConfig,
    ManifestDoc,
    ManifestKind,
    check_document_set,
    config_layers,
    effective_config,
    parse_manifests,
)
from edgefleet.contract.precedence import ResolvedConfig, resolve_policy
from edgefleet_controller import errors as cerr
from edgefleet_controller.clock import Clock
from edgefleet_controller.devices.desired import DesiredStates
from edgefleet_controller.devices.directory import DeviceDirectory
from edgefleet_controller.rollout.configs import resolve_config_ref, with_staged
from edgefleet_controller.rollout.service import RolloutService
from edgefleet_controller.store import BlobStore
from edgefleet_controller.store import errors as serr
from edgefleet_controller.store.configs import ConfigStore
from edgefleet_controller.store.records import ConfigDocInput, DeviceRecord

log = structlog.get_logger("edgefleet.controller")


@dataclass(frozen=True)
class ManifestFile:
    name: str
    content: str


@dataclass
class ApplyOutcome:
    revision: int
    results: list[str]
    devices_changed: int = 0
    rollout_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeviceConfig:
    """``config``: the operator config the device receives (no defaults, no bundle policy); ``resolved``:
    the policy it runs with, per key, over the desired (else running) bundle."""

    device: DeviceRecord
    config: EffectiveConfig
    resolved: ResolvedConfig


def facts_of(device: DeviceRecord) -> DeviceFacts:
    return DeviceFacts(device_id=device.id, name=device.name, site=device.site, tags=dict(device.tags))


def stored_documents(docs: Sequence[ManifestDoc]) -> list[ConfigDocInput]:
    return [
        ConfigDocInput(
            kind=str(d.kind),
            name=d.name,
            site=d.site,
            doc_json=json.dumps(d.to_dict(), sort_keys=True, separators=(",", ":")),
            content_digest=d.content_digest,
        )
        for d in docs
    ]


@dataclass(eq=False)
class ConfigService:
    store: ConfigStore
    blobs: BlobStore
    directory: DeviceDirectory
    desired: DesiredStates
    rollouts: RolloutService
    clock: Clock

    async def config_documents(self) -> list[ManifestDoc]:
        records = await asyncio.to_thread(self.store.current)
        docs = []
        for r in records:
            if r.deleted or r.doc_json is None:
                continue
            docs.append(ManifestDoc.from_dict(json.loads(r.doc_json), source=f"{r.kind}/{r.name}"))
        return docs

    # ------------------------------------------------------------------ apply

    async def apply(
        self, files: Sequence[ManifestFile], *, stage: bool, dry_run: bool, applied_by: str
    ) -> ApplyOutcome:
        docs: list[ManifestDoc] = []
        for f in files:
            docs.extend(parse_manifests(f.content, source=f.name or "<request>"))
        if not docs:
            raise cerr.InvalidArgument("ApplyConfig: no manifest documents in the request")
        config_docs = [d for d in docs if d.kind != ManifestKind.ROLLOUT]
        rollout_docs = [d for d in docs if d.kind == ManifestKind.ROLLOUT]
        # Config documents a Rollout of this request targets (or all of them, with ``stage``) are stored
        # staged, not live: they take effect through that rollout, device by device.
        refs = [d.ref for d in config_docs]
        targeted = {resolve_config_ref(RolloutService.manifest_config_target(d), refs) for d in rollout_docs}
        staged_docs = [d for d in config_docs if stage or d.ref in targeted]
        live_docs = [d for d in config_docs if d not in staged_docs]
        claimed = {s.ref: s.rollout_id for s in await self.rollouts.staged() if s.rollout_id}
        for d in live_docs:
            if d.ref in claimed:
                raise cerr.FailedPrecondition(
                    f"{d.location}: {d.ref} has a revision staged for rollout {claimed[d.ref]}, which makes it live "
                    "when it completes; wait for it or abort it before applying another live version"
                )
        current = {(d.kind, d.name): d for d in await self.config_documents()}
        merged = dict(current)
        for d in live_docs:
            merged[(d.kind, d.name)] = d
        try:
            check_document_set(list(merged.values()))
            for d in staged_docs:
                check_document_set(with_staged(list(merged.values()), d))
        except ManifestError as exc:
            raise cerr.InvalidArgument(str(exc)) from None
        devices = await self.directory.all_devices()
        # Validate every device's merged config before anything is stored: a bad layer changes nothing.
        for device in devices:
            effective_config(list(merged.values()), facts_of(device))
            for d in staged_docs:
                effective_config(with_staged(list(merged.values()), d), facts_of(device))
        results = []
        for d in live_docs:
            old = current.get((d.kind, d.name))
            status = (
                "created" if old is None else ("unchanged" if old.content_digest == d.content_digest else "configured")
            )
            results.append(f"{d.kind}/{d.name} {status}")
        # Rollout documents are checked (target bundle or staged config, strategy, admission) before anything
        # is stored.
        for d in rollout_docs:
            await self.rollouts.check_manifest(d, staged_here=[c.ref for c in staged_docs])
        if dry_run:
            results.extend(f"{d.ref} valid (not staged: dry run)" for d in staged_docs)
            results.extend(f"Rollout/{d.name} valid (not created: dry run)" for d in rollout_docs)
            revision = await asyncio.to_thread(self.store.revision)
            return ApplyOutcome(revision, results)
        inputs = stored_documents(live_docs)
        if staged_docs:
            outcomes = await self.rollouts.stage_configs(stored_documents(staged_docs), applied_by)
            results.extend(
                f"{d.ref} {outcome} (live when a Rollout of it completes)"
                for d, outcome in zip(staged_docs, outcomes, strict=True)
            )
        revision = await asyncio.to_thread(lambda: self.store.apply(inputs, applied_by, self.clock()))
        changed = await self.assign_configs(devices, list(merged.values()))
        rollout_ids = []
        for d in rollout_docs:
            rollout = await self.rollouts.create_from_manifest(d, requested_by=applied_by)
            rollout_ids.append(rollout.id)
            results.append(f"Rollout/{d.name} created as {rollout.id}")
        log.info(
            "config.applied",
            revision=revision,
            documents=len(inputs),
            staged=len(staged_docs),
            devices_changed=len(changed),
        )
        return ApplyOutcome(revision, results, len(changed), rollout_ids)

    # ------------------------------------------------------------------ effective config

    async def _policy_bundle(self, rec: DeviceRecord) -> BundleManifest | None:
        """The bundle whose declared policy sits under the device's config: desired, else running."""
        desired = await self.desired.desired_of(rec.id)
        for digest in (desired.bundle_digest, rec.running_bundle):
            if not digest:
                continue
            try:
                return BundleManifest.from_json_bytes((await self.desired.pieces.bundle(digest)).manifest)
            except serr.NotFound:
                continue  # deleted since: the next one, or no bundle layer
        return None

    async def device_config(self, device: str) -> DeviceConfig:
        """The config of a device (id or name): what it receives, and the policy resolved by
        ``precedence.resolve_policy`` over its desired (else running) bundle."""
        rec = await self.directory.find_device(device)
        docs = await self.config_documents()
        facts = facts_of(rec)
        config = effective_config(docs, facts)
        resolved = resolve_policy(config_layers(docs, facts), bundle=await self._policy_bundle(rec))
        return DeviceConfig(rec, config, resolved)

    # ------------------------------------------------------------------ assignment

    async def _store_config(self, config: EffectiveConfig) -> str:
        data = config.to_json_bytes()
        digest, _ = await asyncio.to_thread(self.blobs.put_bytes, data)
        if digest != config.digest:
            raise RuntimeError(f"effective config digest {config.digest} differs from its blob digest {digest}")
        return digest

    async def assign_configs(
        self, devices: Sequence[DeviceRecord], docs: Sequence[ManifestDoc] | None = None
    ) -> list[str]:
        """Compute each device's effective config; give a new desired revision to those that changed.

        A device a running config rollout has moved keeps that rollout's target: its config is computed with
        the rollout's staged revision in place (``RolloutService.config_overrides``), and the change stays the
        rollout's (``rollout_id``), so its outcome under the new assignment still counts for the rollout."""
        if docs is None:
            docs = await self.config_documents()
        overrides = await self.rollouts.config_overrides()
        changed: list[str] = []
        by_target: dict[tuple[str, str | None], list[str]] = {}
        desired = await self.desired.desired_of_many([d.id for d in devices])
        for device in devices:
            override = overrides.get(device.id)
            layered = with_staged(docs, override[1]) if override is not None else docs
            config = effective_config(layered, facts_of(device))
            current = desired.get(device.id)
            if current is None or current.config_digest != config.digest:
                await self._store_config(config)
                by_target.setdefault((config.digest, override[0] if override else None), []).append(device.id)
        for (digest, rollout_id), ids in by_target.items():
            now = self.clock()
            reason = "config applied" if rollout_id is None else f"config applied (rollout {rollout_id} target kept)"
            await self.desired.assign(ids, config_digest=digest, reason=reason, now=now, rollout_id=rollout_id)
            changed.extend(ids)
        self.desired.notify(changed)
        return changed

    async def assign_all_configs(self) -> list[str]:
        """Every device's config recomputed (after a config rollout made its staged revision live)."""
        return await self.assign_configs(await self.directory.all_devices())
