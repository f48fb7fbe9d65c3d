"""Static INT8 quantization with onnxruntime: one calibration run, a QDQ model, and the ranges it used.

Steps: ``quant_pre_process`` (ONNX shape inference, symbolic too when sympy is installed) → one calibration
run with ``create_calibrator`` + ``collect_data`` + ``compute_data`` over the calibration images → the ranges
are saved with ORT's own ``save_tensors_data`` and handed to ``quantize_static(calibration_cache_path=...)``,
which then skips its own calibration. The same ranges feed the TensorRT calibration table
(``trt_table.py``), so the QDQ model and the table come from the SAME run over the same images.

Decisions:
- ``quant_pre_process`` runs with ``skip_optimization=True`` by default: ORT's optimizer renames about a
  third of the tensors of a Conv+BN network (fusions), and the TensorRT table must name the tensors of the
  FP32 model the TensorRT path builds from — the bundle's ``model`` artifact, unchanged. ORT still fuses and
  optimises the QDQ model when a session loads it. ``optimize=True`` is there for models that quantize badly
  unfused; the table then covers only the names both graphs share (``CalibrationRun.coverage`` says how many).
- The float tail stays float: nodes between the last Conv/MatMul/Gemm and the graph outputs (a YOLO
  head's Sigmoid/Split/Mul/Add/Concat decode, a classifier's Softmax) are excluded from quantization. One
  INT8 scale for a Concat of box pixels (0..640) and class scores (0..1) rounds every score to 0; in a
  trial the generated YOLOv8 detector's INT8 mAP@0.5 against FP32 was 0.0 with the tail quantized.
- QDQ format, per-channel weights, ``QInt8`` weights. Activations default to ``QInt8`` (S8S8): onnxruntime
  recommends S8S8 for QDQ on x86 and ARM, and TensorRT consumes only signed INT8. ``uint8`` (U8S8) stays
  available for older x86 CPUs without VNNI, where it can be faster.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgefleet.contract.bundle_sections import Preprocess
from edgefleet.logging import current_logger
from edgefleet_pipeline.calibration import ImageSet, ImageSetReader
from edgefleet_pipeline.errors import QuantizationError

CalibrationMethodName = Literal["minmax", "entropy", "percentile"]
ActivationType = Literal["int8", "uint8"]
CALIBRATION_METHODS: tuple[CalibrationMethodName, ...] = ("minmax", "entropy", "percentile")
_ORT_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
_ACTIVATION_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


@dataclass(frozen=True)
class CalibrationRun:
    """The ranges one calibration run measured: ``{tensor: (lowest, highest)}`` and how they were found."""

    method: CalibrationMethodName
    ranges: Mapping[str, tuple[float, float]]
    images: int
    model_tensors: int
    tensors_data: Any  # onnxruntime.quantization.calibrate.TensorsData, kept for quantize_static

    @property
    def coverage(self) -> float:
        """Share of the FP32 model's node outputs (and inputs) that have a range."""
        return len(self.ranges) / self.model_tensors if self.model_tensors else 0.0


@dataclass(frozen=True)
class QuantizedModel:
    """The QDQ INT8 model written by ``quantize_int8`` and the calibration run behind it."""

    path: Path
    calibration: CalibrationRun
    activation_type: ActivationType


def model_input_name(model_path: Path) -> str:
    """The single graph input that is not an initializer; calibration feeds one image tensor."""
    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise QuantizationError(
            f"{model_path}: has {len(inputs)} inputs {inputs}; INT8 calibration from images needs exactly one"
        )
    return inputs[0]


def _graph_tensor_names(model_path: Path) -> set[str]:
    model = onnx.load(str(model_path), load_external_data=False)
    names = {o for node in model.graph.node for o in node.output if o}
    names.update(i.name for i in model.graph.input)
    return names


_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def float_tail_nodes(model_path: Path) -> list[str]:
    """Names of the nodes reachable backwards from the graph outputs without crossing a weighted op."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output if out}
    tail: list[str] = []
    seen: set[int] = set()
    stack = [o.name for o in graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.op_type in _WEIGHTED_OPS or id(node) in seen:
            continue
        seen.add(id(node))
        if node.name:
            tail.append(node.name)
        stack.extend(i for i in node.input if i)
    return sorted(tail)


def prepare_for_quantization(model_path: Path, out_path: Path, *, optimize: bool = False) -> Path:
    """``quant_pre_process``: shape inference (symbolic when sympy is installed), optional optimization."""
    try:
        quant_pre_process(
            str(model_path),
            str(out_path),
            skip_optimization=not optimize,
            skip_symbolic_shape=importlib.util.find_spec("sympy") is None,
        )
    except Exception as exc:  # onnxruntime/onnx raise untyped errors for graphs they cannot infer
        raise QuantizationError(f"{model_path}: quantization pre-processing failed: {exc}") from None
    return out_path


def calibrate(
    model_path: Path,
    images: ImageSet,
    pre: Preprocess,
    *,
    method: CalibrationMethodName = "minmax",
    work_dir: Path,
    reference_model: Path | None = None,
) -> CalibrationRun:
    """One calibration run over ``images`` on the CPU; ``reference_model`` (default: ``model_path``) is the
    graph whose tensor names the coverage is counted against."""
    if method not in _ORT_METHODS:
        raise QuantizationError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    reader = ImageSetReader(images, pre, model_input_name(model_path))
    try:
        calibrator = create_calibrator(
            Path(model_path),
            None,
            augmented_model_path=str(work_dir / "augmented.onnx"),
            calibrate_method=_ORT_METHODS[method],
            providers=["CPUExecutionProvider"],
        )
        calibrator.collect_data(reader)
        tensors_data = calibrator.compute_data()
    except Exception as exc:  # onnxruntime's errors are untyped
        raise QuantizationError(f"{model_path}: calibration ({method}) failed: {exc}") from None
    ranges: dict[str, tuple[float, float]] = {}
    for name, data in tensors_data.data.items():
        low, high = data.range_value
        # ORT keeps each bound as a 1-element array (per-tensor calibration).
        ranges[name] = (float(np.min(low)), float(np.max(high)))
    reference = _graph_tensor_names(reference_model or model_path)
    return CalibrationRun(
        method=method,
        ranges={k: v for k, v in sorted(ranges.items()) if k in reference},
        images=images.count,
        model_tensors=len(reference),
        tensors_data=tensors_data,
    )


def quantize_int8(
    model_path: Path | str,
    images: ImageSet,
    pre: Preprocess,
    out_path: Path | str,
    *,
    method: CalibrationMethodName = "minmax",
    activation_type: ActivationType = "int8",
    per_channel: bool = True,
    optimize: bool = False,
    keep_float_tail: bool = True,
) -> QuantizedModel:
    """Write the QDQ INT8 model of ``model_path`` to ``out_path`` from one calibration run over ``images``."""
    model_path, out_path = Path(model_path), Path(out_path)
    if activation_type not in _ACTIVATION_TYPES:
        raise QuantizationError(f"activation type must be int8 or uint8, got {activation_type!r}")
    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as tmp:
        work = Path(tmp)
        prepared = prepare_for_quantization(model_path, work / "prepared.onnx", optimize=optimize)
        run = calibrate(prepared, images, pre, method=method, work_dir=work, reference_model=model_path)
        excluded = float_tail_nodes(prepared) if keep_float_tail else []
        cache = work / "ranges.json"
        save_tensors_data(run.tensors_data, cache)
        # ORT's quantizer warns on the root logger for every per-channel BatchNorm weight it cannot split
        # ("Axis 1 is out-of-range"); harmless and noisy, so it is silenced for this call only.
        root = logging.getLogger()
        previous_level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_static(
                str(prepared),
                str(out_path),
                None,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=_ACTIVATION_TYPES[activation_type],
                weight_type=QuantType.QInt8,
                calibrate_method=_ORT_METHODS[method],
                calibration_cache_path=str(cache),
                nodes_to_exclude=excluded,
            )
        except Exception as exc:  # onnxruntime's errors are untyped
            raise QuantizationError(f"{model_path}: static INT8 quantization failed: {exc}") from None
        finally:
            root.setLevel(previous_level)
    current_logger(__name__).info(
        "quantize.int8_written",
        model=str(model_path),
        out=str(out_path),
        method=method,
        images=images.count,
        tensors=len(run.ranges),
        coverage=round(run.coverage, 4),
        float_tail=len(excluded),
    )
    return QuantizedModel(path=out_path, calibration=run, activation_type=activation_type)
