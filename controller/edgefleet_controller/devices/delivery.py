"""What a device is sent for its desired state: the bundle's manifest, signature and artifact list (by bundle
digest) and the effective config's JSON (by config digest). Both are content-addressed, so the copies kept in
memory are never stale; only a deleted bundle is forgotten."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Generic, TypeVar

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_sections import ArtifactRef as BundleArtifact
from edgefleet_controller.store import BlobStore
from edgefleet_controller.store.bundles import BundleStore
from edgefleet_controller.store.records import DesiredState

#: Content-addressed pieces kept in memory (bundles and configs in use at once are few).
PIECES_MAX = 256


@dataclass(frozen=True)
class BundlePieces:
    manifest: bytes
    signature: bytes
    artifacts: tuple[BundleArtifact, ...]

    @property
    def digests(self) -> frozenset[str]:
        return frozenset(a.digest for a in self.artifacts)


@dataclass(frozen=True)
class Delivery:
    """A desired state with what the device needs to act on it (bundle pieces, config JSON) filled in."""

    desired: DesiredState
    bundle: BundlePieces | None
    config_json: bytes | None


V = TypeVar("V")


class BoundedCache(Generic[V]):
    """A dict that drops its oldest entry when full."""

    def __init__(self, limit: int = PIECES_MAX) -> None:
        self._limit = limit
        self._items: dict[str, V] = {}

    def get(self, key: str) -> V | None:
        return self._items.get(key)

    def put(self, key: str, value: V) -> None:
        if len(self._items) >= self._limit:
            self._items.pop(next(iter(self._items)))
        self._items[key] = value

    def pop(self, key: str) -> None:
        self._items.pop(key, None)


class DeliveryPieces:
    def __init__(self, bundles: BundleStore, blobs: BlobStore) -> None:
        self.bundles = bundles
        self.blobs = blobs
        self._bundles: BoundedCache[BundlePieces] = BoundedCache()
        self._configs: BoundedCache[bytes] = BoundedCache()

    async def bundle(self, bundle_digest: str) -> BundlePieces:
        pieces = self._bundles.get(bundle_digest)
        if pieces is None:
            bundle = await asyncio.to_thread(self.bundles.get, bundle_digest)
            manifest = BundleManifest.from_json_bytes(bundle.manifest)
            pieces = BundlePieces(bundle.manifest, bundle.signature, tuple(manifest.artifacts.values()))
            self._bundles.put(bundle_digest, pieces)
        return pieces

    def forget_bundle(self, bundle_digest: str) -> None:
        self._bundles.pop(bundle_digest)

    async def config_json(self, config_digest: str) -> bytes | None:
        data = self._configs.get(config_digest)
        if data is None:
            if not self.blobs.has(config_digest):
                return None
            data = await asyncio.to_thread(self.blobs.path(config_digest).read_bytes)
            self._configs.put(config_digest, data)
        return data

    async def delivery(self, desired: DesiredState) -> Delivery:
        bundle = await self.bundle(desired.bundle_digest) if desired.bundle_digest else None
        config = await self.config_json(desired.config_digest) if desired.config_digest else None
        return Delivery(desired, bundle, config)

    async def may_fetch(self, desired: DesiredState, digest: str) -> bool:
        """Whether ``digest`` is part of this desired state: its config, or an artifact of its bundle."""
        if digest == desired.config_digest:
            return True
        if desired.bundle_digest:
            return digest in (await self.bundle(desired.bundle_digest)).digests
        return False
