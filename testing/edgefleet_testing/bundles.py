"""Signed test bundles for the tests, the demo and the benchmarks: ``make_bundle`` builds, signs and packs a
classifier bundle from a generated model; ``push_requests`` is the ``PushBundle`` stream that uploads an archive."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.contract.bundle_archive import pack_bundle
from edgefleet.contract.bundle_spec import BundleSpec
from edgefleet.contract.bundle_upload import read_archive_for_upload
from edgefleet.contract.signing import SigningKey, sign_bundle
from edgefleet.v1 import fleet_pb2
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_testing.modelgen import make_classifier

__all__ = ["SignedBundle", "make_bundle", "push_requests"]


@dataclass(frozen=True)
class SignedBundle:
    archive: Path
    directory: Path
    digest: str
    version: str
    artifact_digests: dict[str, str]


def make_bundle(
    workdir: Path,
    key: SigningKey,
    *,
    version: str,
    seed: int,
    size: int = 32,
    padding_bytes: int = 0,
    name: str = "classifier",
    labels: Sequence[str] = ("a", "b", "c", "d"),
    sla_ms: int = 500,
    providers: Sequence[str] = ("cpu",),
    watch_golden: bool = True,
    logit_shift: float = 0.0,
    extra_matmuls: int = 0,
    scene_matmuls: int = 0,
) -> SignedBundle:
    """Generate a classifier (size×size, one class per label), build, sign and pack a bundle under ``workdir``;
    ``padding_bytes`` adds a random ``padding`` artifact (seeded by ``seed``) to make downloads as large as a
    test needs.

    Regressed candidates for canary tests: ``logit_shift`` moves the confidence distribution (drift →
    canary FAIL against a same-seed baseline), ``extra_matmuls`` makes the model slower (latency FAIL),
    ``scene_matmuls`` makes it slower on bright frames only (mean input > 0.5), outputs unchanged."""
    # Absolute: the spec's model path is resolved against ``base_dir``, so a relative one would be joined twice.
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model = make_classifier(
        workdir / "model.onnx",
        size=size,
        seed=seed,
        num_classes=len(labels),
        logit_shift=logit_shift,
        extra_matmuls=extra_matmuls,
        scene_matmuls=scene_matmuls,
    )
    spec = BundleSpec.from_dict(
        {
            "name": name,
            "version": version,
            "model": str(model),
            "preprocess": {"size": [size, size], "layout": "nchw", "dtype": "float32", "scale": 1 / 255},
            "postprocess": {"kind": "classification", "top_k": 1},
            "labels": list(labels),
            "latency": {"sla_ms": sla_ms},
            "providers": list(providers),
        },
        source=f"{name}-{version}.spec.yaml",
        base_dir=workdir,
    )
    extra: dict[str, Path] = {}
    if padding_bytes:
        pad = workdir / "padding.bin"
        # Random (incompressible) and reproducible: the same seed gives the same bytes.
        pad.write_bytes(random.Random(seed).randbytes(padding_bytes))
        extra["padding"] = pad
    bundle_dir = workdir / "bundle"
    manifest = build_bundle(spec, bundle_dir, extra_artifacts=extra, golden_count=2 if watch_golden else 1)
    sign_bundle(bundle_dir, key)
    archive = pack_bundle(bundle_dir, workdir / f"{name}-{version}.efb")
    return SignedBundle(
        archive=archive,
        directory=bundle_dir,
        digest=manifest.digest,
        version=version,
        artifact_digests={role: a.digest for role, a in manifest.artifacts.items()},
    )


def push_requests(archive: Path, chunk_bytes: int = 1 << 20) -> list[fleet_pb2.PushBundleRequest]:
    """The ``PushBundle`` messages that upload ``archive``: its header, then every artifact in chunks."""
    upload = read_archive_for_upload(archive)
    out = [
        fleet_pb2.PushBundleRequest(header=fleet_pb2.BundleHeader(manifest=upload.manifest, signature=upload.signature))
    ]
    for digest, data in upload.chunks(chunk_bytes):
        out.append(fleet_pb2.PushBundleRequest(chunk=fleet_pb2.ArtifactChunk(digest=digest, data=data)))
    return out
