"""Public fakes of the update driver's ports, and a tiny bundle publisher, for tests and the crash drill.

They do real work on real files (copying blobs, hashing, recording calls) so tests never monkeypatch:

- ``publish_bundle`` writes a bundle's artifacts and a ``bundle.json`` into a blob directory as
  content-addressed blobs (``<blob_dir>/<hex>``) and records it in ``<blob_dir>/catalog.json``.
- ``DirectoryFetcher`` serves those blobs with resume offsets, optionally failing mid-file like a flaky link.
- ``ManifestVerifier`` checks a bundle directory holds exactly the files of a known manifest, byte-exact.
- ``RecordingSwitcher``, ``ScriptedEvaluator``, ``RecordingConfigs`` and ``RecordingReporter`` record what
  they were asked to do.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.update.errors import EngineSwitchError, FetchError, FetchInterrupted
from edge_runtime.update.events import CanaryPassed, CanaryStarted, DesiredBundleChanged, TrialPassed, UpdateEvent
from edge_runtime.update.record import ArtifactRef, UpdateRecord
from edgefleet.contract.digests import sha256_digest
from edgefleet.contract.errors import BundleFormatError, DigestMismatchError, SignatureError

CATALOG = "catalog.json"


@dataclass(frozen=True)
class PublishedBundle:
    """A bundle as the controller would describe it to a device."""

    digest: str
    artifacts: tuple[ArtifactRef, ...]

    def desired(self) -> DesiredBundleChanged:
        return DesiredBundleChanged(self.digest, self.artifacts)

    @property
    def manifest(self) -> dict[str, str]:
        return {a.name: a.digest for a in self.artifacts}


def publish_bundle(blob_dir: Path, name: str, files: Mapping[str, bytes]) -> PublishedBundle:
    """Store ``files`` plus a generated ``bundle.json`` as blobs; the bundle digest is that of bundle.json."""
    blob_dir.mkdir(parents=True, exist_ok=True)
    refs = [ArtifactRef(n, sha256_digest(data), len(data)) for n, data in sorted(files.items())]
    for ref, data in zip(refs, (files[r.name] for r in refs), strict=True):
        (blob_dir / ref.digest.removeprefix("sha256:")).write_bytes(data)
    manifest = json.dumps({"name": name, "artifacts": {r.name: r.digest for r in refs}}, sort_keys=True).encode()
    digest = sha256_digest(manifest)
    (blob_dir / digest.removeprefix("sha256:")).write_bytes(manifest)
    bundle = PublishedBundle(digest, (ArtifactRef("bundle.json", digest, len(manifest)), *refs))
    catalog = load_catalog(blob_dir)
    catalog[digest] = bundle
    (blob_dir / CATALOG).write_text(
        json.dumps({d: [a.to_dict() for a in b.artifacts] for d, b in catalog.items()}, sort_keys=True)
    )
    return bundle


def load_catalog(blob_dir: Path) -> dict[str, PublishedBundle]:
    """Every bundle ``publish_bundle`` stored in ``blob_dir``, by digest."""
    path = blob_dir / CATALOG
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {d: PublishedBundle(d, tuple(ArtifactRef.from_dict(a) for a in arts)) for d, arts in raw.items()}


class DirectoryFetcher:
    """Fetches blobs from ``blob_dir``; ``fail_after_bytes`` makes each call fail after that many bytes."""

    def __init__(self, blob_dir: Path, *, fail_after_bytes: int | None = None) -> None:
        self.blob_dir = blob_dir
        self.fail_after_bytes = fail_after_bytes
        self.calls: list[tuple[str, int]] = []

    def fetch(
        self,
        digest: str,
        dest_path: Path,
        expected_size: int,
        resume_from: int,
        *,
        cancel: threading.Event | None = None,
    ) -> None:
        self.calls.append((digest, resume_from))
        if cancel is not None and cancel.is_set():
            raise FetchInterrupted(f"fetch of {digest} cancelled before it started")
        source = self.blob_dir / digest.removeprefix("sha256:")
        if not source.exists():
            raise FetchError(f"blob {digest} not found in {self.blob_dir}")
        with source.open("rb") as src, dest_path.open("r+b" if resume_from else "wb") as dst:
            src.seek(resume_from)
            dst.seek(resume_from)
            dst.truncate()
            budget = self.fail_after_bytes
            data = src.read(expected_size - resume_from)
            if budget is not None and len(data) > budget:
                dst.write(data[:budget])
                dst.flush()
                os.fsync(dst.fileno())
                raise FetchError(f"connection dropped after {budget} bytes of {digest}")
            dst.write(data)
            dst.flush()
            os.fsync(dst.fileno())


class ManifestVerifier:
    """Accepts a bundle directory only if it holds exactly the files of its manifest, byte-exact.

    ``manifests`` maps a bundle digest to ``{artifact name: sha256 digest}``; the directory's name is the
    digest's hex, as in ``BundleSlots``. An unknown bundle fails like an unknown signing key would.
    """

    def __init__(self, manifests: Mapping[str, Mapping[str, str]]) -> None:
        self.manifests = {d: dict(m) for d, m in manifests.items()}
        self.verified: list[str] = []

    def verify(self, bundle_dir: Path) -> None:
        digest = f"sha256:{bundle_dir.name}"
        manifest = self.manifests.get(digest)
        if manifest is None:
            raise SignatureError(f"bundle {digest} is not signed by a trusted publisher (unknown manifest)")
        present = sorted(p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file())
        if present != sorted(manifest):
            raise BundleFormatError(f"bundle {digest}: files {present} differ from the manifest {sorted(manifest)}")
        for name, expected in manifest.items():
            actual = sha256_digest((bundle_dir / name).read_bytes())
            if actual != expected:
                raise DigestMismatchError(f"bundle {digest}: {name} has sha256 {actual}, expected {expected}")
        self.verified.append(digest)


@dataclass
class RecordingSwitcher:
    """Remembers what is staged and served, with which config; ``fail_stage`` digests fail to load."""

    fail_stage: set[str] = field(default_factory=set)
    serving: str | None = None
    serving_dir: Path | None = None
    serving_config: str | None = None
    staged: str | None = None
    staged_dir: Path | None = None
    staged_config: str | None = None
    calls: list[tuple[str, str | None]] = field(default_factory=list)
    released: int = 0

    def stage(self, digest: str, bundle_dir: Path, config: str | None = None) -> None:
        self.calls.append(("stage", digest))
        if digest in self.fail_stage:
            raise EngineSwitchError(f"bundle {digest} failed to load: scripted failure")
        self.staged, self.staged_dir, self.staged_config = digest, bundle_dir, config

    def swap_to_candidate(self, digest: str, config: str | None = None) -> None:
        self.calls.append(("swap_to_candidate", digest))
        if self.staged == digest:
            self.serving, self.serving_dir, self.serving_config = digest, self.staged_dir, config
            self.staged = None
        elif self.serving == digest:
            self.serving_config = config  # a config that keeps the engine
        else:
            raise EngineSwitchError(f"cannot serve {digest}: it is not staged (staged: {self.staged})")

    def swap_to_committed(self, digest: str | None, bundle_dir: Path | None, config: str | None = None) -> None:
        self.calls.append(("swap_to_committed", digest))
        self.serving, self.serving_dir, self.serving_config = digest, bundle_dir, config

    def release_previous(self) -> None:
        self.calls.append(("release_previous", self.serving))
        self.released += 1


@dataclass
class RecordingConfigs:
    """A ``ConfigApplier`` that records which config is in force and which one was committed."""

    in_force: str | None = None
    committed: str | None = None
    calls: list[tuple[str, str | None]] = field(default_factory=list)

    def use(self, digest: str | None) -> None:
        self.calls.append(("use", digest))
        self.in_force = digest

    def commit(self, digest: str | None) -> None:
        self.calls.append(("commit", digest))
        if digest is not None:
            self.committed = digest

    def saved(self) -> tuple[str, str] | None:
        return None


@dataclass
class ScriptedEvaluator:
    """Returns scripted verdicts at once: ``canary`` events for a canary run, ``watch`` for the watch window.

    ``canary_by_digest`` overrides the canary script per bundle.
    """

    canary: Sequence[UpdateEvent] = (CanaryStarted(), CanaryPassed("scripted pass"))
    watch: Sequence[UpdateEvent] = (TrialPassed(),)
    canary_by_digest: Mapping[str, Sequence[UpdateEvent]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def start_canary(self, digest: str, bundle_dir: Path) -> Sequence[UpdateEvent]:
        self.calls.append(("start_canary", digest))
        return list(self.canary_by_digest.get(digest, self.canary))

    def start_watch(self, digest: str, bundle_dir: Path, *, paired: bool = True) -> Sequence[UpdateEvent]:
        self.calls.append(("start_watch" if paired else "start_watch_unpaired", digest))
        return list(self.watch)

    def stop(self, digest: str) -> None:
        self.calls.append(("stop", digest))


@dataclass
class RecordingReporter:
    reports: list[UpdateRecord] = field(default_factory=list)
    alerts: list[tuple[str, str, dict[str, float]]] = field(default_factory=list)

    def report(self, record: UpdateRecord) -> None:
        self.reports.append(record)

    def report_alert(self, bundle_digest: str, reason: str, numbers: Mapping[str, float]) -> None:
        self.alerts.append((bundle_digest, reason, dict(numbers)))


def manifests_of(bundles: Iterable[PublishedBundle]) -> dict[str, dict[str, str]]:
    """The ``ManifestVerifier`` input for ``bundles``."""
    return {b.digest: b.manifest for b in bundles}
