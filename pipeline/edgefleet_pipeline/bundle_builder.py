"""Building an unsigned bundle directory from a spec: artifacts, golden outputs, bundle.json.

The builder loads the model with onnxruntime (CPU) to infer or check its inputs/outputs and to record the
reference outputs on K golden inputs. Golden inputs are either given or generated from the spec's
preprocess (seeded random images, normalised by the device's own ``edgefleet.contract.processing``), so a
device can prove that its execution provider computes what the publisher's CPU computed, within
``canary.golden_tolerance``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

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
from edgefleet.contract.bundle_sections import ArtifactRef, Dim, Preprocess, TensorSpec
from edgefleet.contract.bundle_spec import BundleSpec, load_spec
from edgefleet.contract.errors import BundleError, BundleFormatError
from edgefleet.contract.golden import GoldenCase, write_golden
from edgefleet.contract.processing.preprocess import Normaliser

GOLDEN_SEED = 20240601
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}

GoldenInputs = Sequence[Mapping[str, NDArray[np.generic]]]


_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _tensor_specs(args: Sequence[ort.NodeArg]) -> tuple[TensorSpec, ...]:
    specs = []
    for arg in args:
        dtype = _ORT_DTYPES.get(arg.type)
        if dtype is None:
            raise BundleFormatError(f"model: tensor '{arg.name}' has unsupported type {arg.type}")
        # Exporters name dynamic dims freely ("DynamicDimension.0", "batch_size"); keep only names that
        # bundle.json accepts and turn the rest into -1.
        shape: list[Dim] = [
            d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and _DIM_NAME.match(d) else -1)
            for d in arg.shape
        ]
        specs.append(TensorSpec(arg.name, dtype, tuple(shape)))
    return tuple(specs)


def _check_declared(kind: str, declared: tuple[TensorSpec, ...], actual: tuple[TensorSpec, ...]) -> None:
    by_name = {t.name: t for t in actual}
    if [t.name for t in declared] != [t.name for t in actual]:
        raise BundleFormatError(
            f"spec: {kind} names {[t.name for t in declared]} differ from the model's {[t.name for t in actual]}"
        )
    for spec in declared:
        real = by_name[spec.name]
        if spec.dtype != real.dtype:
            raise BundleFormatError(
                f"spec: {kind} '{spec.name}' dtype {spec.dtype!r} differs from the model's {real.dtype!r}"
            )
        fixed_mismatch = len(spec.shape) != len(real.shape) or any(
            isinstance(a, int) and a > 0 and isinstance(b, int) and b > 0 and a != b
            for a, b in zip(spec.shape, real.shape, strict=False)
        )
        if fixed_mismatch:
            raise BundleFormatError(
                f"spec: {kind} '{spec.name}' shape {list(spec.shape)} differs from the model's {list(real.shape)}"
            )


def generate_golden_inputs(
    inputs: Sequence[TensorSpec], preprocess: Preprocess, count: int, *, seed: int = GOLDEN_SEED
) -> list[dict[str, NDArray[np.generic]]]:
    """``count`` seeded input sets with batch 1: image inputs get random BGR pixels normalised as a device
    normalises its frames."""
    rng = np.random.default_rng(seed)
    height, width = preprocess.size
    normalise = Normaliser(preprocess)  # the device's own arithmetic (edgefleet.contract.processing)
    cases: list[dict[str, NDArray[np.generic]]] = []
    for _ in range(count):
        case: dict[str, NDArray[np.generic]] = {}
        for spec in inputs:
            if len(spec.shape) == 4:
                pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
                case[spec.name] = normalise.to_tensor(pixels)
            else:
                shape = [1 if i == 0 or not (isinstance(d, int) and d > 0) else d for i, d in enumerate(spec.shape)]
                case[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        cases.append(case)
    return cases


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

    ``extra_artifacts`` maps role → file (e.g. ``{"model.int8": Path("q.onnx")}`` →
    ``artifacts/model.int8.onnx``). On any error the files written so far are removed.
    """
    if not isinstance(spec, BundleSpec):
        spec = load_spec(spec)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out}: exists and is not an empty directory; bundles are built into a fresh one")
    created_dir = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _build(spec, out, dict(extra_artifacts or {}), golden_count, golden_inputs, created_at)
    except BaseException:
        if created_dir:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


def _build(
    spec: BundleSpec,
    out: Path,
    extra: dict[str, Path],
    golden_count: int,
    golden_inputs: GoldenInputs | None,
    created_at: datetime | None,
) -> BundleManifest:
    if not spec.model.is_file():
        raise BundleFormatError(f"spec: field 'model' points to {spec.model}, which does not exist")
    try:
        session = ort.InferenceSession(str(spec.model), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exceptions for a bad model
        raise BundleFormatError(f"spec: model {spec.model} cannot be loaded by onnxruntime: {exc}") from None
    inputs = _tensor_specs(session.get_inputs())
    outputs = _tensor_specs(session.get_outputs())
    if spec.inputs is not None:
        _check_declared("inputs", spec.inputs, inputs)
        inputs = spec.inputs
    if spec.outputs is not None:
        _check_declared("outputs", spec.outputs, outputs)
        outputs = spec.outputs
    for reserved in (MODEL_ROLE, GOLDEN_ROLE):
        if reserved in extra:
            raise BundleFormatError(f"extra artifact role {reserved!r} is reserved for the builder")

    (out / ARTIFACTS_DIR).mkdir()
    artifacts = {MODEL_ROLE: _add_artifact(out, MODEL_ROLE, spec.model)}
    for role in sorted(extra):
        artifacts[role] = _add_artifact(out, role, Path(extra[role]))

    if golden_inputs is None:
        if golden_count < 1:
            raise BundleFormatError(f"golden_count must be >= 1, got {golden_count}")
        golden_inputs = generate_golden_inputs(inputs, spec.preprocess, golden_count)
    output_names = [o.name for o in outputs]
    cases = []
    for case_inputs in golden_inputs:
        try:
            results = session.run(output_names, dict(case_inputs))
        except Exception as exc:  # onnxruntime's errors are untyped
            raise BundleFormatError(f"golden inputs: the model refused them: {exc}") from None
        cases.append(GoldenCase(dict(case_inputs), dict(zip(output_names, results, strict=True))))
    if not cases:
        raise BundleFormatError("golden inputs: at least one case is required")
    golden_path = out / ARTIFACTS_DIR / f"{GOLDEN_ROLE}.npz"
    write_golden(golden_path, cases)
    sha, size = sha256_file(golden_path)
    artifacts[GOLDEN_ROLE] = ArtifactRef(
        GOLDEN_ROLE, f"{ARTIFACTS_DIR}/{golden_path.name}", sha, size, "application/x-npz"
    )

    stamp = (created_at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    manifest = BundleManifest(
        name=spec.name,
        version=spec.version,
        created_at=stamp,
        inputs=inputs,
        outputs=outputs,
        artifacts=dict(sorted(artifacts.items())),
        **spec.declared(),
    )
    # Round-trip through the parser so the builder can never write a manifest the verifier refuses.
    data = manifest.to_json_bytes()
    manifest = BundleManifest.from_json_bytes(data, source=f"{spec.name}: built {MANIFEST_NAME}")
    (out / MANIFEST_NAME).write_bytes(data)
    return manifest
