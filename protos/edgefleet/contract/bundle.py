"""bundle.json, the manifest: ``BundleManifest``, its canonical bytes and digest, and reading it from disk.

Decisions, written down:
- bundle.json is canonical JSON (sorted keys, no spaces, UTF-8, trailing newline). Parsing *requires* the
  canonical form, so one manifest has exactly one digest: ``sha256:`` + hex sha256 of the bytes.
- Unknown fields are refused (typos must not silently drop a setting).

The rest of the format has one module each: the directory layout (``bundle_layout``), reading and writing
fields (``bundle_fields``), the sections (``bundle_sections``), the declared policy (``bundle_policy``), the
files on disk (``bundle_files``), the build spec (``bundle_spec``) and the golden set (``golden``). Building
(which runs onnxruntime) is ``edgefleet_pipeline.bundle_builder``, signing ``signing``, verification, packing
and unpacking ``bundle_archive``; this module needs neither onnxruntime nor cryptography.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from edgefleet.contract.bundle_fields import FieldReader, load_strict_json
from edgefleet.contract.bundle_layout import (
    MANIFEST_NAME,
    MAX_ARTIFACTS,
    MAX_MANIFEST_BYTES,
    MODEL_ROLE,
    ROLE_RE,
    SCHEMA_VERSION,
)
from edgefleet.contract.bundle_policy import CanaryDefaults, LatencySla
from edgefleet.contract.bundle_sections import (
    METADATA_FIELDS,
    SECTION_FIELDS,
    ArtifactRef,
    Postprocess,
    PrecisionVariant,
    Preprocess,
    TensorSpec,
    check_postprocess_fits,
    parse_declared,
    parse_name,
    parse_tensors,
    parse_version,
)
from edgefleet.contract.canonical import canonical_json
from edgefleet.contract.digests import sha256_digest
from edgefleet.contract.errors import BundleError, BundleFormatError, UnsupportedSchemaError
from edgefleet.contract.shown import shown

_CREATED_AT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class BundleManifest:
    """A parsed, validated bundle.json."""

    name: str
    version: str
    created_at: datetime
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocess: Preprocess
    postprocess: Postprocess
    labels: tuple[str, ...]
    latency: LatencySla
    canary: CanaryDefaults
    providers: tuple[str, ...]
    artifacts: Mapping[str, ArtifactRef]
    calibration: Mapping[str, object] | None = None
    precision_variants: Mapping[str, PrecisionVariant] | None = None
    schema_version: int = SCHEMA_VERSION

    @cached_property
    def _bytes(self) -> bytes:
        return canonical_json(self.to_dict(), trailing_newline=True)

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the exact bundle.json bytes."""
        return sha256_digest(self._bytes)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json_bytes(self) -> bytes:
        return self._bytes

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at.astimezone(UTC).strftime(_CREATED_AT_FORMAT),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "preprocess": self.preprocess.to_dict(),
            "postprocess": self.postprocess.to_dict(),
            "labels": list(self.labels),
            "latency": self.latency.to_dict(),
            "canary": self.canary.to_dict(),
            "providers": list(self.providers),
            "artifacts": {role: ref.to_dict() for role, ref in self.artifacts.items()},
        }
        if self.calibration is not None:
            data["calibration"] = dict(self.calibration)
        if self.precision_variants is not None:
            data["precision_variants"] = {k: v.to_dict() for k, v in self.precision_variants.items()}
        return data

    @staticmethod
    def from_json_bytes(data: bytes, *, source: str = MANIFEST_NAME) -> BundleManifest:
        """Parse and validate bundle.json bytes; they must be canonical JSON of schema version 1."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise BundleFormatError(f"{source}: {len(data)} bytes is larger than the {MAX_MANIFEST_BYTES} limit")
        obj = load_strict_json(data, source)
        schema = obj.get("schema_version") if isinstance(obj, dict) else None
        if schema != SCHEMA_VERSION:
            if isinstance(schema, int) and not isinstance(schema, bool):
                raise UnsupportedSchemaError(
                    f"{source}: schema_version {schema} is not supported (this edgefleet reads "
                    f"{SCHEMA_VERSION}); upgrade edgefleet or rebuild the bundle"
                )
            raise BundleFormatError(
                f"{source}: field 'schema_version' must be the integer {SCHEMA_VERSION}, got {shown(schema)}"
            )
        manifest = BundleManifest.from_dict(obj, source=source)
        if manifest.to_json_bytes() != data:
            raise BundleFormatError(
                f"{source}: is not canonical JSON (sorted keys, no spaces, trailing newline); it must be "
                "written by the bundle builder, not edited by hand"
            )
        return manifest

    @staticmethod
    def from_dict(obj: object, *, source: str = MANIFEST_NAME) -> BundleManifest:
        doc = FieldReader(source, obj)
        doc.known("schema_version", "name", "version", "created_at", *SECTION_FIELDS, "artifacts", *METADATA_FIELDS)
        created_raw = doc.string("created_at")
        try:
            created_at = datetime.strptime(created_raw, _CREATED_AT_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise doc.error("created_at", "must be a UTC time like 2025-01-31T12:00:00Z", created_raw) from None
        artifacts_doc = doc.sub("artifacts")
        if len(artifacts_doc.data) > MAX_ARTIFACTS:
            raise BundleFormatError(f"{source}: {len(artifacts_doc.data)} artifacts, more than {MAX_ARTIFACTS}")
        artifacts: dict[str, ArtifactRef] = {}
        for role in sorted(artifacts_doc.data, key=str):
            if not isinstance(role, str) or not ROLE_RE.match(role):
                raise artifacts_doc.error(str(role), "role must match [a-z0-9][a-z0-9._-]*", role)
            artifacts[role] = ArtifactRef.parse(role, artifacts_doc.sub(role))
        if MODEL_ROLE not in artifacts:
            raise BundleFormatError(f"{source}: field 'artifacts.{MODEL_ROLE}' is required (the ONNX model)")
        paths = [a.path for a in artifacts.values()]
        if len(set(paths)) != len(paths):
            raise artifacts_doc.error("path", "must differ between artifacts", sorted(paths))
        manifest = BundleManifest(
            schema_version=doc.integer("schema_version"),
            name=parse_name(doc),
            version=parse_version(doc),
            created_at=created_at,
            inputs=parse_tensors(doc, "inputs"),
            outputs=parse_tensors(doc, "outputs"),
            **parse_declared(doc, canary_required=True),
            artifacts=artifacts,
        )
        for name, variant in (manifest.precision_variants or {}).items():
            if variant.artifact not in artifacts:
                raise BundleFormatError(
                    f"{source}: field 'precision_variants.{name}.artifact' names no artifact, "
                    f"got {shown(variant.artifact)} (artifacts: {', '.join(sorted(artifacts))})"
                )
        check_postprocess_fits(source, manifest.postprocess, manifest.outputs, manifest.labels)
        return manifest

    def artifact(self, role: str) -> ArtifactRef:
        try:
            return self.artifacts[role]
        except KeyError:
            raise BundleFormatError(
                f"{MANIFEST_NAME}: bundle {self.ref} has no artifact '{role}' "
                f"(it has: {', '.join(sorted(self.artifacts))})"
            ) from None


def read_manifest(bundle_dir: Path | str) -> BundleManifest:
    """Read and validate ``bundle_dir/bundle.json`` without checking the signature or artifacts."""
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleFormatError(f"{path}: not found; is {bundle_dir} a bundle directory?") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read: {exc.strerror}") from None
    return BundleManifest.from_json_bytes(data, source=str(path))
