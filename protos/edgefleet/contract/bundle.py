"""The engine bundle format: bundle.json (the manifest), bundle specs, and building bundle directories.

A bundle directory holds ``bundle.json``, ``bundle.sig`` and artifact files under ``artifacts/`` named by
role (``artifacts/model.onnx``, ``artifacts/model.int8.onnx``, ``artifacts/calibration.cache``,
``artifacts/golden.npz``; an extra artifact with role R from a file ``x.S`` lands at ``artifacts/R.S``).

Decisions, written down:
- bundle.json is canonical JSON (sorted keys, no spaces, UTF-8, trailing newline). Parsing *requires* the
  canonical form, so one manifest has exactly one digest: ``sha256:`` + hex sha256 of the bytes.
- An artifact's ``sha256`` field holds bare hex; ``ArtifactRef.digest`` is the ``sha256:<hex>`` form used
  for content addressing.
- Unknown fields are refused (typos must not silently drop a setting); ``calibration`` and the
  ``metrics`` of a precision variant are free-form metadata objects.
- ``golden.npz`` holds ``input.<name>`` arrays ``[K, *shape with batch 1]`` and ``output.<name>`` arrays
  ``[K, ...]``; case ``i`` is run as ``{name: arr[i]}``. It is written with fixed zip timestamps so that the
  same spec, model and ``created_at`` build a byte-identical bundle.

Building (which runs onnxruntime) lives in ``bundle_builder.py``, signing in ``signing.py``, verification,
packing and unpacking in ``bundle_archive.py``; this module needs neither onnxruntime nor cryptography.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import yaml

from edgefleet.contract.canonical import canonical_json
from edgefleet.contract.digests import sha256_digest
from edgefleet.contract.errors import (
    BundleError,
    BundleFormatError,
    DigestMismatchError,
    MissingArtifactError,
    UnlistedFileError,
    UnsupportedSchemaError,
)

SCHEMA_VERSION = 1
MANIFEST_NAME = "bundle.json"
SIGNATURE_NAME = "bundle.sig"
ARTIFACTS_DIR = "artifacts"
MODEL_ROLE = "model"
GOLDEN_ROLE = "golden"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_ARTIFACTS = 256

KNOWN_PROVIDERS = ("tensorrt", "cuda", "rocm", "openvino", "directml", "coreml", "cpu")
DTYPES = ("float32", "float16", "float64", "uint8", "int8", "int32", "int64", "bool")
PRECISIONS = ("fp32", "fp16", "int8")
MEDIA_TYPES = {
    ".onnx": "application/vnd.onnx",
    ".npz": "application/x-npz",
    ".cache": "application/vnd.tensorrt.calibration",
    ".plan": "application/vnd.tensorrt.engine",
    ".engine": "application/vnd.tensorrt.engine",
    ".json": "application/json",
}
DEFAULT_MEDIA_TYPE = "application/octet-stream"

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ROLE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_ARTIFACT_PATH_RE = re.compile(r"^artifacts/[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_CREATED_AT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# semver.org's recommended regular expression, SemVer 2.0.0.
_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_HASH_CHUNK = 1024 * 1024

ResizeMode = Literal["letterbox", "stretch"]
ColorOrder = Literal["rgb", "bgr"]
Layout = Literal["nchw", "nhwc"]
TensorDType = Literal["float32", "float16", "uint8"]
PostprocessKind = Literal["classification", "yolov5", "yolov8"]
TENSOR_DTYPES: tuple[TensorDType, ...] = ("float32", "float16", "uint8")
POSTPROCESS_KINDS: tuple[PostprocessKind, ...] = ("classification", "yolov5", "yolov8")
Dim = int | str


def sha256_file(path: Path) -> tuple[str, int]:
    """Hex sha256 and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def is_semver(version: str) -> bool:
    return _SEMVER_RE.match(version) is not None


# --------------------------------------------------------------------------------------------- parsing


_MISSING: Any = object()


class _Doc:
    """A JSON/YAML object being validated; every error names the source file and the dotted field path."""

    def __init__(self, source: str, data: object, path: str = "") -> None:
        self.source = source
        self.path = path
        if not isinstance(data, Mapping):
            raise self._error_at(path or "<root>", "must be an object", data)
        self.data: Mapping[str, object] = data

    def _full(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _error_at(self, path: str, what: str, value: object) -> BundleFormatError:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return BundleFormatError(f"{self.source}: field '{path}' {what}, got {shown}")

    def error(self, key: str, what: str, value: object) -> BundleFormatError:
        return self._error_at(self._full(key), what, value)

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def known(self, *keys: str) -> None:
        unknown = sorted(str(k) for k in self.data if k not in keys)
        if unknown:
            raise BundleFormatError(
                f"{self.source}: unknown field '{self._full(unknown[0])}'; allowed here: {', '.join(keys)}"
            )

    def raw(self, key: str, default: object = _MISSING) -> object:
        if not self.has(key):
            if default is _MISSING:
                raise BundleFormatError(f"{self.source}: field '{self._full(key)}' is required")
            return default
        return self.data[key]

    def sub(self, key: str, *, required: bool = True) -> _Doc:
        value = self.raw(key, _MISSING if required else {})
        return _Doc(self.source, value, self._full(key))

    def string(
        self,
        key: str,
        default: object = _MISSING,
        *,
        choices: Sequence[str] | None = None,
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
    ) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str):
            raise self.error(key, "must be a string", value)
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}", value)
        if pattern is not None and not pattern.match(value):
            raise self.error(key, f"must be {hint or 'match ' + pattern.pattern}", value)
        return value

    def integer(self, key: str, default: object = _MISSING, *, ge: int | None = None, le: int | None = None) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, "must be an integer", value)
        if ge is not None and value < ge:
            raise self.error(key, f"must be >= {ge}", value)
        if le is not None and value > le:
            raise self.error(key, f"must be <= {le}", value)
        return value

    def number(
        self,
        key: str,
        default: object = _MISSING,
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
        lt: float | None = None,
    ) -> float:
        value = self.raw(key, default)
        return _check_number(value, lambda what: self.error(key, what, value), gt=gt, ge=ge, le=le, lt=lt)

    def items(self, key: str, default: object = _MISSING, *, min_len: int = 0) -> list[object]:
        value = self.raw(key, default)
        if not isinstance(value, list | tuple):
            raise self.error(key, "must be a list", value)
        if len(value) < min_len:
            raise self.error(key, f"must have at least {min_len} item(s)", value)
        return list(value)

    def at(self, key: str, index: int) -> str:
        return f"{self._full(key)}[{index}]"


def _element_error(doc: _Doc, key: str, index: int, value: object) -> Callable[[str], BundleFormatError]:
    def fail(what: str) -> BundleFormatError:
        return doc._error_at(doc.at(key, index), what, value)

    return fail


def _check_number(
    value: object,
    fail: Callable[[str], BundleFormatError],
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail("must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise fail("must be finite")
    if gt is not None and not number > gt:
        raise fail(f"must be > {gt:g}")
    if ge is not None and not number >= ge:
        raise fail(f"must be >= {ge:g}")
    if le is not None and not number <= le:
        raise fail(f"must be <= {le:g}")
    if lt is not None and not number < lt:
        raise fail(f"must be < {lt:g}")
    return number


# ------------------------------------------------------------------------------------------ the model


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, dtype, and shape with ``-1`` or a name for dynamic dimensions."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @staticmethod
    def parse(doc: _Doc) -> TensorSpec:
        doc.known("name", "dtype", "shape")
        shape: list[Dim] = []
        for i, dim in enumerate(doc.items("shape")):
            ok_int = isinstance(dim, int) and not isinstance(dim, bool) and dim >= -1 and dim != 0
            ok_str = isinstance(dim, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", dim) is not None
            if not (ok_int or ok_str):
                raise BundleFormatError(
                    f"{doc.source}: field '{doc.at('shape', i)}' must be a positive int, -1 or a dimension "
                    f"name, got {dim!r}"
                )
            shape.append(cast(Dim, dim))
        return TensorSpec(
            name=doc.string("name", pattern=re.compile(r"^\S{1,256}$"), hint="a non-empty name"),
            dtype=doc.string("dtype", choices=DTYPES),
            shape=tuple(shape),
        )


@dataclass(frozen=True)
class Preprocess:
    """How frames become the model input: resize, colour order, normalisation, layout and dtype.

    The input tensor is ``(pixel * scale - mean) / std`` per channel, in ``color`` order; ``size`` is the
    model input's (height, width). ``dtype: uint8`` feeds raw pixels, so its normalisation must be the
    identity (``scale`` then defaults to 1): a spec asking for both is refused, not silently half-applied.
    What it computes is ``edgefleet.contract.processing.preprocess``.
    """

    size: tuple[int, int]
    resize: ResizeMode = "letterbox"
    color: ColorOrder = "rgb"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    scale: float = 1.0 / 255.0
    layout: Layout = "nchw"
    dtype: TensorDType = "float32"
    pad_value: int = 114

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Shape of the batch-of-one tensor this section produces."""
        h, w = self.size
        return (1, 3, h, w) if self.layout == "nchw" else (1, h, w, 3)

    def to_dict(self) -> dict[str, object]:
        return {
            "resize": self.resize,
            "size": list(self.size),
            "color": self.color,
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
            "layout": self.layout,
            "dtype": self.dtype,
            "pad_value": self.pad_value,
        }

    @staticmethod
    def from_dict(obj: object, *, source: str = MANIFEST_NAME) -> Preprocess:
        """Validate a ``preprocess`` mapping on its own (errors name ``preprocess.<field>``)."""
        return Preprocess.parse(_Doc(source, obj, "preprocess"))

    @staticmethod
    def parse(doc: _Doc) -> Preprocess:
        doc.known("resize", "size", "color", "mean", "std", "scale", "layout", "dtype", "pad_value")
        size_raw = doc.items("size", min_len=2)
        if len(size_raw) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 16384 for v in size_raw
        ):
            raise doc.error("size", "must be [height, width] with positive integers", size_raw)

        def triple(key: str, default: tuple[float, float, float], positive: bool) -> tuple[float, float, float]:
            values = doc.items(key, list(default))
            if len(values) != 3:
                raise doc.error(key, "must have 3 values (one per channel)", values)
            out = [
                _check_number(v, _element_error(doc, key, i, v), gt=0.0 if positive else None)
                for i, v in enumerate(values)
            ]
            return (out[0], out[1], out[2])

        dtype = cast(TensorDType, doc.string("dtype", "float32", choices=TENSOR_DTYPES))
        raw_pixels = dtype == "uint8"
        scale = doc.number("scale", 1.0 if raw_pixels else 1.0 / 255.0, gt=0.0)
        mean = triple("mean", (0.0, 0.0, 0.0), positive=False)
        std = triple("std", (1.0, 1.0, 1.0), positive=True)
        if raw_pixels and (scale != 1.0 or mean != (0.0, 0.0, 0.0) or std != (1.0, 1.0, 1.0)):
            raise BundleFormatError(
                f"{doc.source}: section '{doc.path}' has dtype 'uint8' (raw pixels) but normalisation "
                f"scale={scale}, mean={list(mean)}, std={list(std)}; drop scale/mean/std or use dtype float32"
            )
        return Preprocess(
            size=(cast(int, size_raw[0]), cast(int, size_raw[1])),
            resize=cast(ResizeMode, doc.string("resize", "letterbox", choices=("letterbox", "stretch"))),
            color=cast(ColorOrder, doc.string("color", "rgb", choices=("rgb", "bgr"))),
            mean=mean,
            std=std,
            scale=scale,
            layout=cast(Layout, doc.string("layout", "nchw", choices=("nchw", "nhwc"))),
            dtype=dtype,
            pad_value=doc.integer("pad_value", 114, ge=0, le=255),
        )


@dataclass(frozen=True)
class Postprocess:
    """How raw outputs become results: top-k classes, or YOLO decode + NMS.

    What it computes is ``edgefleet.contract.processing.postprocess``.
    """

    kind: PostprocessKind
    top_k: int = 5
    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    # Classification: apply softmax to the outputs (they are logits). Models that already output
    # probabilities (a Softmax node at the end) set it to false.
    softmax: bool = True

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "top_k": self.top_k,
            "conf_threshold": self.conf_threshold,
            "iou_threshold": self.iou_threshold,
            "max_detections": self.max_detections,
            "softmax": self.softmax,
        }

    @staticmethod
    def from_dict(obj: object, *, source: str = MANIFEST_NAME) -> Postprocess:
        """Validate a ``postprocess`` mapping on its own (errors name ``postprocess.<field>``)."""
        return Postprocess.parse(_Doc(source, obj, "postprocess"))

    @staticmethod
    def parse(doc: _Doc) -> Postprocess:
        doc.known("kind", "top_k", "conf_threshold", "iou_threshold", "max_detections", "softmax")
        softmax = doc.raw("softmax", True)
        if not isinstance(softmax, bool):
            raise doc.error("softmax", "must be true or false", softmax)
        return Postprocess(
            softmax=softmax,
            kind=cast(PostprocessKind, doc.string("kind", choices=POSTPROCESS_KINDS)),
            top_k=doc.integer("top_k", 5, ge=1),
            conf_threshold=doc.number("conf_threshold", 0.25, ge=0.0, le=1.0),
            iou_threshold=doc.number("iou_threshold", 0.45, gt=0.0, le=1.0),
            max_detections=doc.integer("max_detections", 100, ge=1),
        )


@dataclass(frozen=True)
class LatencySla:
    """End-to-end (pre + model + post) latency bound at a percentile."""

    sla_ms: float
    percentile: float = 95.0

    def to_dict(self) -> dict[str, object]:
        return {"sla_ms": self.sla_ms, "percentile": self.percentile}

    @staticmethod
    def parse(doc: _Doc) -> LatencySla:
        doc.known("sla_ms", "percentile")
        return LatencySla(
            sla_ms=doc.number("sla_ms", gt=0.0), percentile=doc.number("percentile", 95.0, ge=50.0, lt=100.0)
        )


@dataclass(frozen=True)
class GoldenTolerance:
    """How close a device's outputs on the golden inputs must be to the reference (``np.allclose``)."""

    atol: float = 1e-3
    rtol: float = 1e-3

    def to_dict(self) -> dict[str, object]:
        return {"atol": self.atol, "rtol": self.rtol}

    @staticmethod
    def parse(doc: _Doc) -> GoldenTolerance:
        doc.known("atol", "rtol")
        return GoldenTolerance(atol=doc.number("atol", 1e-3, ge=0.0), rtol=doc.number("rtol", 1e-3, ge=0.0))


@dataclass(frozen=True)
class CanaryDefaults:
    """The bundle's default canary policy; a config manifest may override it per fleet/site/device."""

    min_frames: int = 200
    min_seconds: float = 30.0
    headroom: float = 0.2
    max_p95_ratio: float = 1.10
    psi_max: float = 0.25
    ks_alpha: float = 0.01
    min_agreement: float = 0.9
    golden_tolerance: GoldenTolerance = field(default_factory=GoldenTolerance)

    def to_dict(self) -> dict[str, object]:
        return {
            "min_frames": self.min_frames,
            "min_seconds": self.min_seconds,
            "headroom": self.headroom,
            "max_p95_ratio": self.max_p95_ratio,
            "psi_max": self.psi_max,
            "ks_alpha": self.ks_alpha,
            "min_agreement": self.min_agreement,
            "golden_tolerance": self.golden_tolerance.to_dict(),
        }

    @staticmethod
    def parse(doc: _Doc) -> CanaryDefaults:
        doc.known(
            "min_frames",
            "min_seconds",
            "headroom",
            "max_p95_ratio",
            "psi_max",
            "ks_alpha",
            "min_agreement",
            "golden_tolerance",
        )
        return CanaryDefaults(
            min_frames=doc.integer("min_frames", 200, ge=1),
            min_seconds=doc.number("min_seconds", 30.0, ge=0.0),
            headroom=doc.number("headroom", 0.2, ge=0.0, lt=1.0),
            max_p95_ratio=doc.number("max_p95_ratio", 1.10, ge=1.0),
            psi_max=doc.number("psi_max", 0.25, gt=0.0),
            ks_alpha=doc.number("ks_alpha", 0.01, gt=0.0, lt=1.0),
            min_agreement=doc.number("min_agreement", 0.9, ge=0.0, le=1.0),
            golden_tolerance=GoldenTolerance.parse(doc.sub("golden_tolerance", required=False)),
        )


@dataclass(frozen=True)
class ArtifactRef:
    """One artifact file of a bundle: where it is, its sha256 (bare hex), size and media type."""

    role: str
    path: str
    sha256: str
    size: int
    media_type: str

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size, "media_type": self.media_type}

    @staticmethod
    def parse(role: str, doc: _Doc) -> ArtifactRef:
        doc.known("path", "sha256", "size", "media_type")
        path = doc.string("path", pattern=_ARTIFACT_PATH_RE, hint="'artifacts/<file>' (letters, digits, '._-')")
        if ".." in path.split("/"):
            raise doc.error("path", "must not contain '..'", path)
        return ArtifactRef(
            role=role,
            path=path,
            sha256=doc.string("sha256", pattern=_HEX64_RE, hint="64 lowercase hex digits"),
            size=doc.integer("size", ge=0),
            media_type=doc.string("media_type", pattern=re.compile(r"^[\w.+-]+/[\w.+-]+$"), hint="a media type"),
        )


@dataclass(frozen=True)
class PrecisionVariant:
    """A lower-precision model artifact (e.g. QDQ INT8) and the metrics recorded when it was built."""

    artifact: str
    precision: str
    metrics: Mapping[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"artifact": self.artifact, "precision": self.precision, "metrics": dict(self.metrics)}

    @staticmethod
    def parse(doc: _Doc) -> PrecisionVariant:
        doc.known("artifact", "precision", "metrics")
        return PrecisionVariant(
            artifact=doc.string("artifact", pattern=ROLE_RE, hint="an artifact role"),
            precision=doc.string("precision", choices=PRECISIONS),
            metrics=dict(doc.sub("metrics", required=False).data),
        )


def _parse_labels(doc: _Doc) -> tuple[str, ...]:
    labels = doc.items("labels", [])
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label:
            raise BundleFormatError(
                f"{doc.source}: field '{doc.at('labels', i)}' must be a non-empty string, got {label!r}"
            )
    return tuple(cast(list[str], labels))


def _parse_providers(doc: _Doc) -> tuple[str, ...]:
    providers = doc.items("providers", ["tensorrt", "cuda", "cpu"], min_len=1)
    for i, provider in enumerate(providers):
        if not isinstance(provider, str) or provider not in KNOWN_PROVIDERS:
            raise BundleFormatError(
                f"{doc.source}: field '{doc.at('providers', i)}' must be one of "
                f"{', '.join(KNOWN_PROVIDERS)}, got {provider!r}"
            )
    if len(set(providers)) != len(providers):
        raise doc.error("providers", "must not repeat a provider", providers)
    return tuple(cast(list[str], providers))


def _parse_tensors(doc: _Doc, key: str) -> tuple[TensorSpec, ...]:
    specs = tuple(
        TensorSpec.parse(_Doc(doc.source, item, doc.at(key, i))) for i, item in enumerate(doc.items(key, min_len=1))
    )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise doc.error(key, "must not repeat a tensor name", names)
    return specs


def _parse_calibration(doc: _Doc) -> Mapping[str, object] | None:
    return dict(doc.sub("calibration").data) if doc.has("calibration") else None


def _parse_variants(doc: _Doc) -> Mapping[str, PrecisionVariant] | None:
    if not doc.has("precision_variants"):
        return None
    variants = doc.sub("precision_variants")
    out: dict[str, PrecisionVariant] = {}
    for name in sorted(variants.data, key=str):
        if not isinstance(name, str) or not ROLE_RE.match(name):
            raise variants.error(str(name), "name must match [a-z0-9][a-z0-9._-]*", name)
        out[name] = PrecisionVariant.parse(variants.sub(name))
    return out


def _check_postprocess_fits(
    source: str, post: Postprocess, outputs: Sequence[TensorSpec], labels: Sequence[str]
) -> None:
    """Where the output shape is static, it must agree with the labels and the decode kind."""
    if not labels:
        return
    shape = outputs[0].shape
    expected: tuple[int, int] | None = None
    if post.kind == "classification" and len(shape) == 2:
        expected = (1, len(labels))
    elif post.kind == "yolov8" and len(shape) == 3:
        expected = (1, 4 + len(labels))
    elif post.kind == "yolov5" and len(shape) == 3:
        expected = (2, 5 + len(labels))
    if expected is None:
        return
    axis, size = expected
    dim = shape[axis]
    if isinstance(dim, int) and dim != -1 and dim != size:
        raise BundleFormatError(
            f"{source}: output '{outputs[0].name}' has {dim} values on axis {axis} but postprocess "
            f"'{post.kind}' with {len(labels)} labels needs {size}; fix 'labels' or 'postprocess.kind'"
        )


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
        obj = _load_json(data, source)
        schema = obj.get("schema_version") if isinstance(obj, dict) else None
        if schema != SCHEMA_VERSION:
            if isinstance(schema, int) and not isinstance(schema, bool):
                raise UnsupportedSchemaError(
                    f"{source}: schema_version {schema} is not supported (this edgefleet reads "
                    f"{SCHEMA_VERSION}); upgrade edgefleet or rebuild the bundle"
                )
            raise BundleFormatError(
                f"{source}: field 'schema_version' must be the integer {SCHEMA_VERSION}, got {schema!r}"
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
        doc = _Doc(source, obj)
        doc.known(
            "schema_version",
            "name",
            "version",
            "created_at",
            "inputs",
            "outputs",
            "preprocess",
            "postprocess",
            "labels",
            "latency",
            "canary",
            "providers",
            "artifacts",
            "calibration",
            "precision_variants",
        )
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
            name=doc.string("name", pattern=_NAME_RE, hint="a DNS label (a-z, 0-9, '-', at most 63)"),
            version=doc.string("version", pattern=_SEMVER_RE, hint="a SemVer 2.0 version like 1.2.3"),
            created_at=created_at,
            inputs=_parse_tensors(doc, "inputs"),
            outputs=_parse_tensors(doc, "outputs"),
            preprocess=Preprocess.parse(doc.sub("preprocess")),
            postprocess=Postprocess.parse(doc.sub("postprocess")),
            labels=_parse_labels(doc),
            latency=LatencySla.parse(doc.sub("latency")),
            canary=CanaryDefaults.parse(doc.sub("canary")),
            providers=_parse_providers(doc),
            artifacts=artifacts,
            calibration=_parse_calibration(doc),
            precision_variants=_parse_variants(doc),
        )
        for name, variant in (manifest.precision_variants or {}).items():
            if variant.artifact not in artifacts:
                raise BundleFormatError(
                    f"{source}: field 'precision_variants.{name}.artifact' names no artifact, "
                    f"got {variant.artifact!r} (artifacts: {', '.join(sorted(artifacts))})"
                )
        _check_postprocess_fits(source, manifest.postprocess, manifest.outputs, manifest.labels)
        return manifest

    def artifact(self, role: str) -> ArtifactRef:
        try:
            return self.artifacts[role]
        except KeyError:
            raise BundleFormatError(
                f"{MANIFEST_NAME}: bundle {self.ref} has no artifact '{role}' "
                f"(it has: {', '.join(sorted(self.artifacts))})"
            ) from None


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _load_json(data: bytes, source: str) -> object:
    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except UnicodeDecodeError as exc:
        raise BundleFormatError(f"{source}: is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise BundleFormatError(f"{source}: is not valid JSON: {exc}") from None


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


# ---------------------------------------------------------------------------------------- bundle files


class BundleFile(NamedTuple):
    """One file of a bundle directory, for streaming uploads."""

    path: str
    sha256: str
    size: int

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


def iter_bundle_files(bundle_dir: Path | str) -> Iterator[BundleFile]:
    """Yield bundle.json, bundle.sig (when present), then every artifact in path order, hashed from disk."""
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    names = [MANIFEST_NAME]
    if (root / SIGNATURE_NAME).is_file():
        names.append(SIGNATURE_NAME)
    names.extend(sorted(a.path for a in manifest.artifacts.values()))
    for name in names:
        path = root / name
        if not path.is_file():
            raise MissingArtifactError(f"{path}: listed in {MANIFEST_NAME} but missing")
        sha, size = sha256_file(path)
        yield BundleFile(name, sha, size)


def check_bundle_files(bundle_dir: Path | str, manifest: BundleManifest) -> None:
    """Check that the directory holds exactly the manifest's files, each with the recorded size and sha256.

    Raises ``UnlistedFileError`` for anything extra (symlinks included), ``MissingArtifactError`` for an
    absent artifact, ``DigestMismatchError`` for a wrong size or hash.
    """
    root = Path(bundle_dir)
    expected = {a.path for a in manifest.artifacts.values()} | {MANIFEST_NAME, SIGNATURE_NAME}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or (not path.is_dir() and rel not in expected):
            raise UnlistedFileError(
                f"{root}: holds '{rel}', which {MANIFEST_NAME} does not list; bundles are immutable, "
                "remove it or rebuild the bundle"
            )
        if path.is_dir() and rel != ARTIFACTS_DIR:
            raise UnlistedFileError(f"{root}: holds directory '{rel}', which {MANIFEST_NAME} does not list")
    for role, ref in sorted(manifest.artifacts.items()):
        path = root / ref.path
        if not path.is_file():
            raise MissingArtifactError(f"{root}: artifact '{role}' ({ref.path}) is missing")
        size = path.stat().st_size
        if size != ref.size:
            raise DigestMismatchError(
                f"{root}: artifact '{role}' ({ref.path}) is {size} bytes, {MANIFEST_NAME} says {ref.size}"
            )
        sha, _ = sha256_file(path)
        if sha != ref.sha256:
            raise DigestMismatchError(
                f"{root}: artifact '{role}' ({ref.path}) has sha256:{sha}, {MANIFEST_NAME} says "
                f"{ref.digest}; the file was altered or corrupted, fetch the bundle again"
            )


# ------------------------------------------------------------------------------------------ bundle spec


@dataclass(frozen=True)
class BundleSpec:
    """Everything needed to build a bundle except digests: parsed from a ``*.spec.yaml``.

    ``inputs``/``outputs`` are ``None`` when they are to be inferred from the model.
    """

    name: str
    version: str
    model: Path
    preprocess: Preprocess
    postprocess: Postprocess
    latency: LatencySla
    labels: tuple[str, ...] = ()
    canary: CanaryDefaults = field(default_factory=CanaryDefaults)
    providers: tuple[str, ...] = ("tensorrt", "cuda", "cpu")
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    calibration: Mapping[str, object] | None = None
    precision_variants: Mapping[str, PrecisionVariant] | None = None

    @staticmethod
    def from_dict(obj: object, *, source: str, base_dir: Path) -> BundleSpec:
        doc = _Doc(source, obj)
        doc.known(
            "name",
            "version",
            "model",
            "inputs",
            "outputs",
            "preprocess",
            "postprocess",
            "labels",
            "latency",
            "canary",
            "providers",
            "calibration",
            "precision_variants",
        )
        model = Path(doc.string("model", pattern=re.compile(r"^.+$"), hint="a path to an .onnx file"))
        return BundleSpec(
            name=doc.string("name", pattern=_NAME_RE, hint="a DNS label (a-z, 0-9, '-', at most 63)"),
            version=doc.string("version", pattern=_SEMVER_RE, hint="a SemVer 2.0 version like 1.2.3"),
            model=model if model.is_absolute() else base_dir / model,
            inputs=_parse_tensors(doc, "inputs") if doc.has("inputs") else None,
            outputs=_parse_tensors(doc, "outputs") if doc.has("outputs") else None,
            preprocess=Preprocess.parse(doc.sub("preprocess")),
            postprocess=Postprocess.parse(doc.sub("postprocess")),
            labels=_parse_labels(doc),
            latency=LatencySla.parse(doc.sub("latency")),
            canary=CanaryDefaults.parse(doc.sub("canary", required=False)),
            providers=_parse_providers(doc),
            calibration=_parse_calibration(doc),
            precision_variants=_parse_variants(doc),
        )


def load_spec(path: Path | str) -> BundleSpec:
    """Parse a bundle spec YAML file; the model path is relative to the spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleFormatError(f"{path}: spec file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleFormatError(f"{path}: cannot be read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BundleFormatError(f"{path.name}: is not valid YAML: {exc}") from None
    return BundleSpec.from_dict(data, source=path.name, base_dir=path.parent)
