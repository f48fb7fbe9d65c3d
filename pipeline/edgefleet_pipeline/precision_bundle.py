"""Building a bundle with precision variants: FP32 + QDQ INT8 + TensorRT calibration table, accuracy-gated.

``build_precision_bundle`` is what ``fleetctl bundle build --calibration DIR`` runs:
1. load and hash the calibration set (and the held-out evaluation set, when given);
2. one calibration run → QDQ INT8 model (``quantize.py``) and TensorRT table (``trt_table.py``);
3. score INT8 against FP32 on the evaluation set and refuse above ``max_accuracy_loss`` — before anything
   is written to ``out_dir``;
4. for ``precision="auto"``, time FP32 and INT8 on this machine and prefer the faster (``precision.py``);
5. ``build_bundle`` with ``extra_artifacts`` ``model.int8`` and ``calibration_table``, and bundle.json's
   ``calibration`` and ``precision_variants`` filled in.

Decisions:
- ``precision_variants`` lists ``fp32`` (artifact ``model``) and ``int8`` (artifact ``model.int8``); the
  variant the publisher prefers carries ``"preferred": true`` in its metrics. ``fp32`` with a calibration
  set still ships the TensorRT table (the TensorRT path builds INT8 from the FP32 model and the table).
- Without an evaluation set the calibration images are scored instead; this flatters INT8 (its ranges came
  from those images), so the metrics say ``accuracy_eval_set: calibration`` and a warning is returned.
- ``fp16`` is refused: producing it needs ``onnxconverter_common``, which is not a dependency.
- Latencies measured by the builder are labelled with its hardware class and ``measured_by: builder``;
  they inform the choice on this machine only.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_layout import MODEL_ROLE
from edgefleet.contract.bundle_sections import PrecisionVariant
from edgefleet.contract.bundle_spec import BundleSpec, load_spec
from edgefleet.contract.precision import PrecisionChoice
from edgefleet.contract.processing.preprocess import preprocess
from edgefleet.logging import current_logger
from edgefleet_pipeline.accuracy import AccuracyReport, check_loss, evaluate_variant
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_pipeline.calibration import ImageSet, load_image_set, read_image
from edgefleet_pipeline.errors import PrecisionUnavailableError
from edgefleet_pipeline.precision import choose_precision
from edgefleet_pipeline.quantize import (
    CalibrationMethodName,
    CalibrationRun,
    calibrate,
    model_input_name,
    prepare_for_quantization,
    quantize_int8,
)
from edgefleet_pipeline.trt_table import write_trt_calibration_table

PrecisionRequest = Literal["fp32", "fp16", "int8", "auto"]
PRECISION_REQUESTS: tuple[PrecisionRequest, ...] = ("fp32", "fp16", "int8", "auto")
INT8_ROLE = "model.int8"
TABLE_ROLE = "calibration_table"
DEFAULT_MAX_ACCURACY_LOSS = 0.01


@dataclass(frozen=True)
class PrecisionBuild:
    """What ``build_precision_bundle`` built and measured."""

    manifest: BundleManifest
    calibration: ImageSet | None
    accuracy: AccuracyReport | None
    choice: PrecisionChoice | None
    preferred: str
    warnings: tuple[str, ...]


def build_precision_bundle(
    spec: BundleSpec | Path | str,
    out_dir: Path | str,
    *,
    calibration_dir: Path | str | None,
    eval_dir: Path | str | None = None,
    precision: PrecisionRequest = "int8",
    max_accuracy_loss: float = DEFAULT_MAX_ACCURACY_LOSS,
    method: CalibrationMethodName = "minmax",
    latency_runs: int = 50,
    created_at: datetime | None = None,
) -> PrecisionBuild:
    """Build an unsigned bundle directory at ``out_dir`` with the requested precision variants."""
    if not isinstance(spec, BundleSpec):
        spec = load_spec(spec)
    if precision not in PRECISION_REQUESTS:
        raise PrecisionUnavailableError(f"precision must be one of {', '.join(PRECISION_REQUESTS)}, got {precision!r}")
    if precision == "fp16":
        raise PrecisionUnavailableError(
            "precision fp16: converting a model to FP16 needs onnxconverter_common, which is not installed; "
            "build with --precision fp32 (TensorRT builds FP16 engines from it on the device) or int8"
        )
    if not 0.0 <= max_accuracy_loss <= 1.0:
        raise PrecisionUnavailableError(
            f"--max-accuracy-loss must be a fraction in [0, 1] (0.01 = 1%), got {max_accuracy_loss}"
        )
    if calibration_dir is None:
        if precision != "fp32":
            raise PrecisionUnavailableError(
                f"precision {precision} needs --calibration DIR: 200-500 images from the target environment"
            )
        manifest = build_bundle(spec, out_dir, created_at=created_at)
        return PrecisionBuild(manifest, None, None, None, "fp32", ())

    warnings: list[str] = []
    calib = load_image_set(calibration_dir, purpose="calibration")
    if calib.warning:
        warnings.append(calib.warning)
    if eval_dir is not None:
        evalset = load_image_set(eval_dir, purpose="evaluation", recommended=0)
        eval_label = "held-out"
    else:
        evalset, eval_label = calib, "calibration"
        if precision != "fp32":
            warnings.append(
                "no --eval set: INT8 accuracy was measured on the calibration images, which flatters it; "
                "pass held-out images with --eval DIR"
            )
            current_logger(__name__).warning("pipeline.eval_on_calibration_set", count=calib.count)

    with tempfile.TemporaryDirectory(prefix="edgefleet-precision-") as tmp:
        work = Path(tmp)
        accuracy: AccuracyReport | None = None
        choice: PrecisionChoice | None = None
        extra: dict[str, Path] = {}
        if precision == "fp32":
            prepared = prepare_for_quantization(spec.model, work / "prepared.onnx")
            run = calibrate(prepared, calib, spec.preprocess, method=method, work_dir=work, reference_model=spec.model)
            preferred = "fp32"
        else:
            quantized = quantize_int8(spec.model, calib, spec.preprocess, work / "model.int8.onnx", method=method)
            run = quantized.calibration
            extra[INT8_ROLE] = quantized.path
            accuracy = evaluate_variant(spec.model, quantized.path, evalset, spec.preprocess, spec.postprocess)
            current_logger(__name__).info(
                "pipeline.accuracy_measured",
                metric=accuracy.metric,
                value=accuracy.value,
                loss=accuracy.loss,
                samples=accuracy.samples,
                max_loss=max_accuracy_loss,
            )
            check_loss(accuracy, max_accuracy_loss)
            preferred = "int8"
            if precision == "auto":
                sample = preprocess(read_image(evalset.paths[0]), spec.preprocess)[0]
                choice = choose_precision(
                    {"fp32": spec.model, "int8": quantized.path},
                    {model_input_name(spec.model): sample},
                    runs=latency_runs,
                )
                preferred = choice.chosen
        extra[TABLE_ROLE] = write_trt_calibration_table(run.ranges, work / "calibration.cache", method=method)

        calibration_section = calib.calibration_section(method)
        calibration_section.update(
            {
                "tensors": len(run.ranges),
                "table": TABLE_ROLE,
                "table_format": "tensorrt-native",
                "coverage": round(run.coverage, 4),
            }
        )
        variants = _variants(run, accuracy, choice, preferred, evalset, eval_label)
        spec = dataclasses.replace(spec, calibration=calibration_section, precision_variants=variants)
        manifest = build_bundle(spec, out_dir, extra_artifacts=extra, created_at=created_at)
    current_logger(__name__).info(
        "pipeline.bundle_built",
        bundle=manifest.ref,
        digest=manifest.digest,
        preferred=preferred,
        calibration_images=calib.count,
    )
    return PrecisionBuild(manifest, calib, accuracy, choice, preferred, tuple(warnings))


def _variants(
    run: CalibrationRun,
    accuracy: AccuracyReport | None,
    choice: PrecisionChoice | None,
    preferred: str,
    evalset: ImageSet,
    eval_label: str,
) -> Mapping[str, PrecisionVariant]:
    fp32: dict[str, object] = {"preferred": preferred == "fp32", "reference": True}
    variants = {"fp32": fp32}
    if accuracy is not None:
        int8: dict[str, object] = {
            "preferred": preferred == "int8",
            "calibration_method": run.method,
            "quant_format": "qdq",
            "accuracy_eval_set": eval_label,
            "accuracy_eval_sha256": evalset.sha256,
            **accuracy.to_metrics(),
        }
        variants["int8"] = int8
    if choice is not None:
        for name, figures in choice.figures.items():
            variants[name]["latency"] = {
                **figures.to_dict(),
                "hardware_class": choice.hardware_class,
                "measured_by": "builder",
            }
        variants[choice.chosen]["speedup_vs_fp32"] = round(choice.speedup, 4)
    roles = {"fp32": MODEL_ROLE, "int8": INT8_ROLE}
    return {name: PrecisionVariant(roles[name], name, metrics) for name, metrics in variants.items()}
