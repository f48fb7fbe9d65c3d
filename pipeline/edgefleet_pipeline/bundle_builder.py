"""Building an unsigned bundle directory from a spec: artifacts, golden outputs, bundle.json.

The builder first runs ``edgefleet_pipeline.semantics.resolve_semantics``: it loads the model with
onnxruntime (CPU), infers or checks its inputs/outputs, checks the spec's preprocess and postprocess against
what the model computes on K golden inputs, and resolves ``postprocess.softmax``; only then is anything copied.
Golden inputs are either given or generated from the spec's preprocess (seeded random images, normalised by
the device's own ``edgefleet.contract.processing``), and their reference outputs are recorded so a device can
prove that its execution provider computes what the publisher's CPU computed, within
``canary.golden_tolerance``. bundle.json gets the resolved spec: its ``postprocess.softmax`` is always a bool.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_files import sha256_file
from edgefleet.contract.bundle_layout import (
    ARTIFACTS_DIR,
    DEFAULT_MEDIA_TYPE,
    GOLDEN_ROLE,
    MANIFEST_NAME,
    MEDIA_TYPES,
    MODEL_ROLE,
    ROLE_RE,
)
from edgefleet.contract.bundle_sections import ArtifactRef
from edgefleet.contract.bundle_spec import BundleSpec, load_spec
from edgefleet.contract.errors import BundleError, BundleFormatError
from edgefleet.contract.golden import write_golden
from edgefleet.logging import current_logger
from edgefleet_pipeline.semantics import (
    GOLDEN_SEED,
    GoldenInputs,
    SemanticReport,
    generate_golden_inputs,
    resolve_semantics,
)

__all__ = ["GOLDEN_SEED", "build_bundle", "generate_golden_inputs"]


def _media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix, DEFAULT_MEDIA_TYPE)


def _add_artifact(out_dir: Path, role: str, source: Path) -> ArtifactRef:
    if not ROLE_RE.match(role):
        raise BundleFormatError(f"artifact role {role!r} is invalid: use [a-z0-9][a-z0-9._-]*")
    if not source.is_file():
        raise BundleFormatError(f"artifact '{role}': {source} is not a file")
    rel = f"{ARTIFACTS_DIR}/{role}{source.suffix}"
    target = out_dir / rel
    if target.exists():
        raise BundleFormatError(f"artifact '{role}': {rel} is already taken by another artifact")
    shutil.copyfile(source, target)
    sha, size = sha256_file(target)
    return ArtifactRef(role=role, path=rel, sha256=sha, size=size, media_type=_media_type(target))


def build_bundle(
    spec: BundleSpec | Path | str,
    out_dir: Path | str,
    *,
    extra_artifacts: Mapping[str, Path] | None = None,
    golden_count: int = 4,
    golden_inputs: GoldenInputs | None = None,
    created_at: datetime | None = None,
) -> BundleManifest:
    """Write an unsigned bundle directory at ``out_dir`` (absent or empty) and return its manifest.

    ``resolve_semantics`` runs first, before anything is written: a spec it refuses leaves ``out_dir`` as it
    was. ``extra_artifacts`` maps role → file (e.g. ``{"model.int8": Path("q.onnx")}`` →
    ``artifacts/model.int8.onnx``). On any error the files written so far are removed.
    """
    if not isinstance(spec, BundleSpec):
        spec = load_spec(spec)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out}: exists and is not an empty directory; bundles are built into a fresh one")
    extra = dict(extra_artifacts or {})
    for reserved in (MODEL_ROLE, GOLDEN_ROLE):
        if reserved in extra:
            raise BundleFormatError(f"extra artifact role {reserved!r} is reserved for the builder")
    report = resolve_semantics(spec, golden_inputs=golden_inputs, golden_count=golden_count)
    log = current_logger(__name__)
    for note in report.notes:
        log.info("bundle.semantics_decided", bundle=f"{spec.name}@{spec.version}", note=note)
    for warning in report.warnings:
        log.warning("bundle.semantics_doubtful", bundle=f"{spec.name}@{spec.version}", warning=warning)
    created_dir = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _build(report, out, extra, created_at)
    except BaseException:
        if created_dir:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


def _build(report: SemanticReport, out: Path, extra: dict[str, Path], created_at: datetime | None) -> BundleManifest:
    spec = report.spec
    assert spec.resolved, "resolve_semantics leaves nothing to decide"
    (out / ARTIFACTS_DIR).mkdir()
    artifacts = {MODEL_ROLE: _add_artifact(out, MODEL_ROLE, spec.model)}
    for role in sorted(extra):
        artifacts[role] = _add_artifact(out, role, Path(extra[role]))

    golden_path = out / ARTIFACTS_DIR / f"{GOLDEN_ROLE}.npz"
    write_golden(golden_path, list(report.cases))
    sha, size = sha256_file(golden_path)
    artifacts[GOLDEN_ROLE] = ArtifactRef(
        GOLDEN_ROLE, f"{ARTIFACTS_DIR}/{golden_path.name}", sha, size, "application/x-npz"
    )

    stamp = (created_at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    manifest = BundleManifest(
        name=spec.name,
        version=spec.version,
        created_at=stamp,
        inputs=report.inputs,
        outputs=report.outputs,
        artifacts=dict(sorted(artifacts.items())),
        **spec.declared(),
    )
    # Round-trip through the parser so the builder can never write a manifest the verifier refuses.
    data = manifest.to_json_bytes()
    manifest = BundleManifest.from_json_bytes(data, source=f"{spec.name}: built {MANIFEST_NAME}")
    (out / MANIFEST_NAME).write_bytes(data)
    return manifest
