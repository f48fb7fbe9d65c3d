"""The sections of bundle.json and of a bundle spec: identity, tensors, pre/post-processing, artifacts,
precision variants, labels and providers; each a frozen type with a validating ``parse`` and a ``to_dict``
that writes its fields (``bundle_fields.section_dict``).

- An artifact's ``sha256`` field holds bare hex; ``ArtifactRef.digest`` is the ``sha256:<hex>`` form used
  for content addressing.
- ``calibration`` and the ``metrics`` of a precision variant are free-form metadata objects.
- What ``Preprocess`` / ``Postprocess`` compute is ``edgefleet.contract.processing``; these types only say
  what a bundle declares.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict, cast

from edgefleet.contract.bundle_fields import FieldReader, check_number, element_error, section_dict
from edgefleet.contract.bundle_layout import ARTIFACT_PATH_RE, MANIFEST_NAME, ROLE_RE
from edgefleet.contract.bundle_policy import CanaryDefaults, LatencySla
from edgefleet.contract.errors import BundleFormatError
from edgefleet.contract.shown import shown

KNOWN_PROVIDERS = ("tensorrt", "cuda", "rocm", "openvino", "directml", "coreml", "cpu")
#: A bundle that names no ``providers`` (bundle.json or spec) tries these, in this order.
DEFAULT_PROVIDERS = ("tensorrt", "cuda", "cpu")
DTYPES = ("float32", "float16", "float64", "uint8", "int8", "int32", "int64", "bool")
PRECISIONS = ("fp32", "fp16", "int8")

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
# semver.org's recommended regular expression, SemVer 2.0.0.
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)

ResizeMode = Literal["letterbox", "stretch"]
ColorOrder = Literal["rgb", "bgr"]
Layout = Literal["nchw", "nhwc"]
TensorDType = Literal["float32", "float16", "uint8"]
PostprocessKind = Literal["classification", "yolov5", "yolov8"]
TENSOR_DTYPES: tuple[TensorDType, ...] = ("float32", "float16", "uint8")
POSTPROCESS_KINDS: tuple[PostprocessKind, ...] = ("classification", "yolov5", "yolov8")
Dim = int | str


#: The sections bundle.json and a bundle spec share, in the order their "allowed here" messages list them;
#: bundle.json adds its identity, dates and ``artifacts``, a spec its ``model`` path.
SECTION_FIELDS = ("inputs", "outputs", "preprocess", "postprocess", "labels", "latency", "canary", "providers")
#: Free-form build metadata both may carry, listed last.
METADATA_FIELDS = ("calibration", "precision_variants")


def is_semver(version: str) -> bool:
    return SEMVER_RE.match(version) is not None


def parse_name(doc: FieldReader) -> str:
    """The bundle's ``name``: a DNS label."""
    return doc.string("name", pattern=NAME_RE, hint="a DNS label (a-z, 0-9, '-', at most 63)")


def parse_version(doc: FieldReader) -> str:
    """The bundle's ``version``: SemVer 2.0."""
    return doc.string("version", pattern=SEMVER_RE, hint="a SemVer 2.0 version like 1.2.3")


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, dtype, and shape with ``-1`` or a name for dynamic dimensions."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict[str, object]:
        return section_dict(self)

    @staticmethod
    def parse(doc: FieldReader) -> TensorSpec:
        doc.known("name", "dtype", "shape")
        shape: list[Dim] = []
        for i, dim in enumerate(doc.items("shape")):
            ok_int = isinstance(dim, int) and not isinstance(dim, bool) and dim >= -1 and dim != 0
            ok_str = isinstance(dim, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", dim) is not None
            if not (ok_int or ok_str):
                raise BundleFormatError(
                    f"{doc.source}: field '{doc.at('shape', i)}' must be a positive int, -1 or a dimension "
                    f"name, got {shown(dim)}"
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
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Shape of the batch-of-one tensor this section produces."""
        h, w = self.size
        return (1, 3, h, w) if self.layout == "nchw" else (1, h, w, 3)

    def to_dict(self) -> dict[str, object]:
        return section_dict(self)

    @staticmethod
    def from_dict(obj: object, *, source: str = MANIFEST_NAME) -> Preprocess:
        """Validate a ``preprocess`` mapping on its own (errors name ``preprocess.<field>``)."""
        return Preprocess.parse(FieldReader(source, obj, "preprocess"))

    @staticmethod
    def parse(doc: FieldReader) -> Preprocess:
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
                check_number(v, element_error(doc, key, i, v), gt=0.0 if positive else None)
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


def describe_size(pre: Preprocess) -> str:
    """``size`` as people read it, axes named: ``48x192 (height x width)`` is 48 high and 192 wide."""
    return f"{pre.height}x{pre.width} (height x width)"


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
    # Classification: apply softmax to the outputs (they are logits); false for outputs that are already
    # probabilities. bundle.json always holds a bool (absent reads as true, what bundles before the build
    # checks meant). Only a spec holds None, "decide at build": the builder runs the model and resolves it
    # (``edgefleet_pipeline.semantics``), so a device never sees None.
    softmax: bool | None = True

    def to_dict(self) -> dict[str, object]:
        return section_dict(self)

    @staticmethod
    def from_dict(obj: object, *, source: str = MANIFEST_NAME) -> Postprocess:
        """Validate a ``postprocess`` mapping of bundle.json on its own (errors name ``postprocess.<field>``)."""
        return Postprocess.parse(FieldReader(source, obj, "postprocess"))

    @staticmethod
    def parse(doc: FieldReader, *, softmax_default: bool | None = True) -> Postprocess:
        """``softmax_default``: what an absent ``softmax`` means: true in bundle.json, None (decide at build)
        in a spec."""
        doc.known("kind", "top_k", "conf_threshold", "iou_threshold", "max_detections", "softmax")
        softmax = doc.raw("softmax", softmax_default)
        if softmax is not None and not isinstance(softmax, bool):
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
        return section_dict(self, omit=("role",))  # the role is the key bundle.json files it under

    @staticmethod
    def parse(role: str, doc: FieldReader) -> ArtifactRef:
        doc.known("path", "sha256", "size", "media_type")
        path = doc.string("path", pattern=ARTIFACT_PATH_RE, hint="'artifacts/<file>' (letters, digits, '._-')")
        if ".." in path.split("/"):
            raise doc.error("path", "must not contain '..'", path)
        return ArtifactRef(
            role=role,
            path=path,
            sha256=doc.string("sha256", pattern=HEX64_RE, hint="64 lowercase hex digits"),
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
        return section_dict(self)

    @staticmethod
    def parse(doc: FieldReader) -> PrecisionVariant:
        doc.known("artifact", "precision", "metrics")
        return PrecisionVariant(
            artifact=doc.string("artifact", pattern=ROLE_RE, hint="an artifact role"),
            precision=doc.string("precision", choices=PRECISIONS),
            metrics=dict(doc.sub("metrics", required=False).data),
        )


def parse_labels(doc: FieldReader) -> tuple[str, ...]:
    labels = doc.items("labels", [])
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label:
            raise BundleFormatError(
                f"{doc.source}: field '{doc.at('labels', i)}' must be a non-empty string, got {shown(label)}"
            )
    return tuple(cast(list[str], labels))


def parse_providers(doc: FieldReader) -> tuple[str, ...]:
    providers = doc.items("providers", DEFAULT_PROVIDERS, min_len=1)
    for i, provider in enumerate(providers):
        if not isinstance(provider, str) or provider not in KNOWN_PROVIDERS:
            raise BundleFormatError(
                f"{doc.source}: field '{doc.at('providers', i)}' must be one of "
                f"{', '.join(KNOWN_PROVIDERS)}, got {shown(provider)}"
            )
    if len(set(providers)) != len(providers):
        raise doc.error("providers", "must not repeat a provider", providers)
    return tuple(cast(list[str], providers))


def parse_tensors(doc: FieldReader, key: str) -> tuple[TensorSpec, ...]:
    specs = tuple(
        TensorSpec.parse(FieldReader(doc.source, item, doc.at(key, i)))
        for i, item in enumerate(doc.items(key, min_len=1))
    )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise doc.error(key, "must not repeat a tensor name", names)
    return specs


def parse_calibration(doc: FieldReader) -> Mapping[str, object] | None:
    return dict(doc.sub("calibration").data) if doc.has("calibration") else None


def parse_variants(doc: FieldReader) -> Mapping[str, PrecisionVariant] | None:
    if not doc.has("precision_variants"):
        return None
    variants = doc.sub("precision_variants")
    out: dict[str, PrecisionVariant] = {}
    for name in sorted(variants.data, key=str):
        if not isinstance(name, str) or not ROLE_RE.match(name):
            raise variants.error(str(name), "name must match [a-z0-9][a-z0-9._-]*", name)
        out[name] = PrecisionVariant.parse(variants.sub(name))
    return out


class DeclaredSections(TypedDict):
    """The sections bundle.json and a bundle spec both declare, parsed: keyword arguments for either type
    (listed by name; ``parse_declared`` parses them in the order their errors are reported)."""

    calibration: Mapping[str, object] | None
    canary: CanaryDefaults
    labels: tuple[str, ...]
    latency: LatencySla
    postprocess: Postprocess
    precision_variants: Mapping[str, PrecisionVariant] | None
    preprocess: Preprocess
    providers: tuple[str, ...]


def parse_declared(doc: FieldReader, *, canary_required: bool, softmax_default: bool | None = True) -> DeclaredSections:
    """Parse the shared sections in the order their errors are reported (a spec may omit ``canary``, and
    leaves an absent ``postprocess.softmax`` to the build: ``softmax_default=None``)."""
    return DeclaredSections(
        preprocess=Preprocess.parse(doc.sub("preprocess")),
        postprocess=Postprocess.parse(doc.sub("postprocess"), softmax_default=softmax_default),
        labels=parse_labels(doc),
        latency=LatencySla.parse(doc.sub("latency")),
        canary=CanaryDefaults.parse(doc.sub("canary", required=canary_required)),
        providers=parse_providers(doc),
        calibration=parse_calibration(doc),
        precision_variants=parse_variants(doc),
    )


def check_postprocess_fits(
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
            f"{shown(post.kind)} with {len(labels)} labels needs {size}; fix 'labels' or 'postprocess.kind'"
        )
