"""Config targets of config rollouts: a device's effective config with a staged document revision in place.

A config rollout targets one config document (``SiteConfig/warehouse-a``) whose new revision is stored
*staged* (``RolloutStore.stage_configs``) instead of live. Each device's target is its effective config
computed exactly as the live one (``edgefleet.contract.manifest.effective_config``, config layering owned by
the contract) over the live documents with the staged revision in place of the live one (``with_staged``;
a staged document with no live version joins the set). So the target differs per device, and a device the
staged revision does not change has target == live.

``StoreConfigTargets`` is the shell the reconciler uses: it reads the live documents from the store, computes
both digests per device, and writes each config's canonical JSON to the blob directory (content-addressed,
written once) so the device can be sent it. Results are cached by (documents, device identity), so an
unchanged fleet costs no recomputation on every reconciler pass.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from edgefleet.contract.manifest import DeviceFacts, EffectiveConfig, ManifestDoc, effective_config
from edgefleet_controller.store import BlobStore, Store
from edgefleet_controller.store.records import ConfigDocRecord, DeviceRecord
from edgefleet_controller.store.rollouts import StagedConfig

CACHE_MAX = 50_000


def config_key(ref: str) -> tuple[str, str]:
    """``("SiteConfig", "warehouse-a")`` for ``"SiteConfig/warehouse-a"``."""
    kind, _, name = ref.partition("/")
    return kind, name


def staged_document(staged: StagedConfig) -> ManifestDoc:
    """The staged revision as a validated ``ManifestDoc``."""
    return ManifestDoc.from_dict(json.loads(staged.doc_json), source=f"staged {staged.ref}")


def live_documents(records: Iterable[ConfigDocRecord]) -> list[ManifestDoc]:
    """The current (live) config documents of the store, as ``ManifestDoc``s."""
    return [
        ManifestDoc.from_dict(json.loads(r.doc_json), source=f"{r.kind}/{r.name}")
        for r in records
        if not r.deleted and r.doc_json is not None
    ]


def with_staged(docs: Sequence[ManifestDoc], staged: ManifestDoc) -> list[ManifestDoc]:
    """``docs`` with the document of the same kind and name as ``staged`` replaced by it (or joined by it)."""
    out = [d for d in docs if (d.kind, d.name) != (staged.kind, staged.name)]
    out.append(staged)
    return out


def resolve_config_ref(ref: str, names: Iterable[str]) -> str | None:
    """``Kind/name`` for ``ref``: itself when it names a kind, else the one of ``names`` (``Kind/name``
    refs) with that name; None when there is none or several."""
    if "/" in ref:
        return ref
    found = [n for n in names if n.split("/", 1)[-1] == ref]
    return found[0] if len(found) == 1 else None


def device_facts(device: DeviceRecord) -> DeviceFacts:
    return DeviceFacts(device_id=device.id, name=device.name, site=device.site, tags=dict(device.tags))


class ConfigTargets(Protocol):
    """Per-device live and target config digests for a config rollout (the reconciler's config port)."""

    def effective(
        self, devices: Sequence[DeviceRecord], staged: ManifestDoc | None
    ) -> Mapping[str, tuple[str, str | None]]:
        """Device id → (live effective config digest, digest with ``staged`` in place; None without it).
        Both configs are available to devices (stored) when this returns."""
        ...


class StoreConfigTargets:
    """``ConfigTargets`` over the store's live documents and the blob directory."""

    def __init__(self, store: Store, blobs: BlobStore) -> None:
        self._store = store
        self._blobs = blobs
        self._lock = threading.Lock()
        self._cache: dict[tuple[object, ...], str] = {}

    def _digest(self, docs_key: tuple[str, ...], docs: Sequence[ManifestDoc], device: DeviceRecord) -> str:
        key = (docs_key, device.id, device.name, device.site, tuple(sorted(device.tags.items())))
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        config: EffectiveConfig = effective_config(docs, device_facts(device))
        if not self._blobs.has(config.digest):
            self._blobs.put_bytes(config.to_json_bytes(), config.digest)
        with self._lock:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[key] = config.digest
        return config.digest

    def effective(
        self, devices: Sequence[DeviceRecord], staged: ManifestDoc | None
    ) -> dict[str, tuple[str, str | None]]:
        live = live_documents(self._store.configs.current())
        live_key = tuple(sorted(f"{d.ref}@{d.content_digest}" for d in live))
        target_docs = with_staged(live, staged) if staged is not None else None
        target_key = (*live_key, f"staged {staged.ref}@{staged.content_digest}") if staged is not None else ()
        out: dict[str, tuple[str, str | None]] = {}
        for device in devices:
            live_digest = self._digest(live_key, live, device)
            target = self._digest(target_key, target_docs, device) if target_docs is not None else None
            out[device.id] = (live_digest, target)
        return out
