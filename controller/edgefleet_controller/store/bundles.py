"""Published bundles and the artifacts they declare: publish (idempotent, immutable per ``name@version``),
look up by digest or ``name@version``, and delete only what no device or unfinished rollout references.

The artifacts' bytes live in the blob directory (``BlobStore``); this module records which bundle declares
which artifact, so a delete can say which blobs nothing uses any more.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Row

from edgefleet.contract.digests import sha256_digest
from edgefleet.contract.shown import shown
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.arguments import check_digest_field, check_now, check_text, is_int
from edgefleet_controller.store.db import AggregateStore, in_chunks
from edgefleet_controller.store.errors import Conflict, InvalidArgument, NotFound, StillReferenced
from edgefleet_controller.store.records import (
    ArtifactRecord,
    ArtifactRef,
    BundleRecord,
    record_from_row,
    record_values,
)

log = structlog.get_logger(__name__)


def _bundle_record(row: Row[Any], artifacts: Iterable[ArtifactRef]) -> BundleRecord:
    return record_from_row(
        BundleRecord,
        row,
        manifest=bytes(row.manifest),
        signature=bytes(row.signature),
        artifacts=tuple(sorted(artifacts)),
    )


def _check_artifacts(artifacts: Sequence[ArtifactRef], bundle_ref: str) -> list[ArtifactRef]:
    refs = [ArtifactRef(*ref) for ref in artifacts]
    roles: set[str] = set()
    for ref in refs:
        check_text("artifact role", ref.role)
        check_digest_field(f"artifact {shown(ref.role)} digest", ref.digest)
        if not is_int(ref.size) or ref.size < 0:
            raise InvalidArgument(f"artifact {shown(ref.role)} size must be >= 0 bytes, got {shown(ref.size)}")
        if ref.role in roles:
            raise InvalidArgument(f"artifact role {shown(ref.role)} appears twice in bundle {bundle_ref}")
        roles.add(ref.role)
    return refs


def _artifact_refs(conn: Connection, digests: Sequence[str]) -> dict[str, list[ArtifactRef]]:
    ba, art = t.bundle_artifacts, t.artifacts
    refs: dict[str, list[ArtifactRef]] = {}
    for chunk in in_chunks(digests):
        rows = conn.execute(
            sa.select(ba.c.bundle_digest, ba.c.role, ba.c.artifact_digest, art.c.size)
            .join(art, art.c.digest == ba.c.artifact_digest)
            .where(ba.c.bundle_digest.in_(chunk))
        )
        for bundle_digest, role, artifact_digest, size in rows:
            refs.setdefault(bundle_digest, []).append(ArtifactRef(role, artifact_digest, size))
    return refs


def _load_bundle(conn: Connection, digest: str) -> BundleRecord | None:
    row = conn.execute(sa.select(t.bundles).where(t.bundles.c.digest == digest)).one_or_none()
    if row is None:
        return None
    return _bundle_record(row, _artifact_refs(conn, [digest]).get(digest, []))


def _digest_of_name(conn: Connection, name: str, version: str) -> str | None:
    return conn.execute(
        sa.select(t.bundles.c.digest).where(t.bundles.c.name == name, t.bundles.c.version == version)
    ).scalar_one_or_none()


def referrers_in(conn: Connection, digest: str) -> list[str]:
    """Who holds bundle ``digest``, as ``conn`` sees it: ``device <id> (desired|running|slot:<name>)`` and
    ``rollout <id> (target|previous)`` entries."""
    desired = conn.execute(
        sa.select(t.desired_state.c.device_id)
        .where(t.desired_state.c.bundle_digest == digest)
        .order_by(t.desired_state.c.device_id)
    ).scalars()
    referrers = [f"device {device_id} (desired)" for device_id in desired]
    held = conn.execute(
        sa.select(t.device_bundle_refs.c.device_id, t.device_bundle_refs.c.source)
        .where(t.device_bundle_refs.c.bundle_digest == digest)
        .order_by(t.device_bundle_refs.c.device_id, t.device_bundle_refs.c.source)
    )
    referrers.extend(f"device {device_id} ({source})" for device_id, source in held)
    # unfinished rollouts: their target, and the bundles their moved devices may be sent back to
    by_rollout = conn.execute(
        sa.select(t.rollout_bundle_refs.c.rollout_id, t.rollout_bundle_refs.c.role)
        .where(t.rollout_bundle_refs.c.bundle_digest == digest)
        .order_by(t.rollout_bundle_refs.c.rollout_id)
    )
    referrers.extend(f"rollout {rollout_id} ({role})" for rollout_id, role in by_rollout)
    return referrers


class BundleStore(AggregateStore):
    """Bundles and artifacts."""

    def put(
        self,
        manifest: bytes,
        signature: bytes,
        *,
        name: str,
        version: str,
        key_id: str,
        artifacts: Sequence[ArtifactRef],
        now: datetime,
    ) -> tuple[BundleRecord, bool]:
        """Record a bundle whose artifacts are already in the blob store. The digest is ``sha256:`` of the
        exact manifest bytes. Returns ``(record, created)``: putting the same bundle again is a no-op;
        another bundle under the same ``name@version`` is a ``Conflict``."""
        check_now(now)
        if not isinstance(manifest, bytes) or not manifest:
            raise InvalidArgument("bundle manifest must be non-empty bytes (the exact bundle.json)")
        if not isinstance(signature, bytes) or not signature:
            raise InvalidArgument("bundle signature must be non-empty bytes")
        check_text("bundle name", name)
        check_text("bundle version", version)
        check_text("bundle key_id", key_id)
        refs = _check_artifacts(artifacts, f"{name}@{version}")
        digest = sha256_digest(manifest)
        size = len(manifest) + sum(ref.size for ref in refs)
        record = BundleRecord(digest, name, version, manifest, signature, key_id, size, now, tuple(sorted(refs)))
        with self._db.transaction() as conn:
            existing = _load_bundle(conn, digest)
            if existing is not None:
                return existing, False
            clash = _digest_of_name(conn, name, version)
            if clash is not None:
                raise Conflict(
                    f"bundle {name}@{version} already exists as {clash} (this one is {digest}); bundles are "
                    "immutable — publish the change under a new version"
                )
            for ref in refs:
                known = conn.execute(
                    sa.select(t.artifacts.c.size).where(t.artifacts.c.digest == ref.digest)
                ).scalar_one_or_none()
                if known is None:
                    conn.execute(t.artifacts.insert().values(digest=ref.digest, size=ref.size, created_at=now))
                elif known != ref.size:
                    raise Conflict(
                        f"artifact {ref.digest} is stored with {known} bytes but bundle {name}@{version} "
                        f"declares {ref.size}; fix the size in bundle.json"
                    )
            conn.execute(t.bundles.insert().values(record_values(record, exclude=("artifacts",))))
            if refs:
                conn.execute(
                    t.bundle_artifacts.insert(),
                    [{"bundle_digest": digest, "role": r.role, "artifact_digest": r.digest} for r in refs],
                )
        return record, True

    def get(self, ref: str) -> BundleRecord:
        """A bundle by ``sha256:<hex>`` digest or ``name@version``."""
        with self._db.read() as conn:
            if isinstance(ref, str) and ref.startswith("sha256:"):
                digest = check_digest_field("bundle digest", ref)
            else:
                name, at, version = ref.rpartition("@") if isinstance(ref, str) else ("", "", "")
                if not at or not name or not version:
                    raise InvalidArgument(
                        f"bundle reference must be 'sha256:<64 hex>' or 'name@version', got {shown(ref)}"
                    )
                found = _digest_of_name(conn, name, version)
                if found is None:
                    raise NotFound("bundle", ref, "list bundles to see what is published")
                digest = found
            record = _load_bundle(conn, digest)
        if record is None:
            raise NotFound("bundle", ref, "list bundles to see what is published")
        return record

    def all(self, name: str | None = None) -> list[BundleRecord]:
        """Every bundle (named ``name``), by name, then oldest first."""
        bundles = t.bundles
        query = sa.select(bundles).order_by(bundles.c.name, bundles.c.created_at, bundles.c.version)
        if name is not None:
            query = query.where(bundles.c.name == name)
        with self._db.read() as conn:
            rows = conn.execute(query).all()
            refs = _artifact_refs(conn, [row.digest for row in rows])
        return [_bundle_record(row, refs.get(row.digest, [])) for row in rows]

    def get_artifact(self, digest: str) -> ArtifactRecord:
        """An artifact some bundle declares (devices may fetch only these)."""
        check_digest_field("artifact digest", digest)
        query = sa.select(t.artifacts).where(t.artifacts.c.digest == digest)
        return record_from_row(
            ArtifactRecord, self._db.read_one(query, "artifact", digest, "no published bundle declares it")
        )

    def referrers(self, digest: str) -> list[str]:
        """Who holds bundle ``digest``: ``device <id> (desired|running|slot:<name>)`` entries."""
        with self._db.read() as conn:
            return referrers_in(conn, digest)

    def delete(self, digest: str) -> list[str]:
        """Delete a bundle nobody references; returns the artifact digests no other bundle uses (their
        blobs can now be deleted). Raises ``StillReferenced`` naming the referrers otherwise."""
        check_digest_field("bundle digest", digest)
        ba = t.bundle_artifacts
        with self._db.transaction() as conn:
            if conn.execute(sa.select(t.bundles.c.digest).where(t.bundles.c.digest == digest)).first() is None:
                raise NotFound("bundle", digest, "list bundles to see what is published")
            referrers = referrers_in(conn, digest)
            if referrers:
                raise StillReferenced(digest, referrers)
            artifact_digests = sorted(
                set(conn.execute(sa.select(ba.c.artifact_digest).where(ba.c.bundle_digest == digest)).scalars())
            )
            conn.execute(ba.delete().where(ba.c.bundle_digest == digest))
            conn.execute(t.bundles.delete().where(t.bundles.c.digest == digest))
            orphans = []
            for artifact_digest in artifact_digests:
                if conn.execute(sa.select(ba.c.role).where(ba.c.artifact_digest == artifact_digest)).first() is None:
                    conn.execute(t.artifacts.delete().where(t.artifacts.c.digest == artifact_digest))
                    orphans.append(artifact_digest)
        log.info("store.bundle_deleted", digest=digest, orphaned_artifacts=len(orphans))
        return orphans
