"""PushBundle over real gRPC: ``deduplicated_artifacts`` lists the bundle's artifacts the controller already
stored (sent bytes verified, then discarded; or not sent at all), as ``fleet.proto`` promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.contract.bundle_archive import read_archive_manifest
from edgefleet.contract.signing import generate_keypair
from edgefleet_testing.bundles import push_requests
from edgefleet_testing.controller import connected, publish_bundle, running_controller

pytestmark = pytest.mark.integration


def artifact_digests(archive: Path) -> list[str]:
    manifest, _ = read_archive_manifest(archive)
    return list(dict.fromkeys(a.digest for a in manifest.artifacts.values()))


async def test_push_reports_the_artifacts_already_stored(tmp_path: Path) -> None:
    key = generate_keypair("pub")
    first = publish_bundle(tmp_path / "w", key, version="1.0.0")
    # Same model (same seed), one more artifact: the model is shared, the extra is new.
    second = publish_bundle(tmp_path / "w", key, version="1.1.0", extra={"labels": b"cat\ndog\n"})
    first_digests, second_digests = artifact_digests(first), artifact_digests(second)
    shared = [d for d in second_digests if d in first_digests]
    new = [d for d in second_digests if d not in first_digests]
    assert shared and new  # the case is meaningful: something shared, something new

    async with running_controller(tmp_path / "data") as ctrl, connected(ctrl) as c:
        await c.trust(key)
        fresh = await c.push(first)
        assert fresh.created
        assert list(fresh.deduplicated_artifacts) == []

        again = await c.push(first)
        assert not again.created
        assert list(again.deduplicated_artifacts) == first_digests

        partly = await c.push(second)
        assert partly.created
        assert list(partly.deduplicated_artifacts) == shared

        # A client that skips what the controller already has: not sent, still listed as deduplicated.
        third = publish_bundle(tmp_path / "w", key, version="1.2.0", extra={"labels": b"cat\ndog\nfox\n"})
        skipped = set(second_digests)
        requests = [r for r in push_requests(third) if not r.HasField("chunk") or r.chunk.digest not in skipped]
        reply = await c.fleet.PushBundle(iter(requests), metadata=c.admin)
        assert reply.created
        assert list(reply.deduplicated_artifacts) == [d for d in artifact_digests(third) if d in skipped]
        assert len(reply.deduplicated_artifacts) < len(artifact_digests(third))
