"""Benchmark of the quantization candidates on a real YOLOv8n export: FP32 vs S8S8 vs U8S8 QDQ on this CPU,
which one the device serves, and each candidate's agreement with FP32.

``run(quick=False) -> list[dict]`` returns the house rows; ``python -m bench --only bench_quantization`` (from
the repository root) prints them; the face drawings come from ``edgefleet_testing.calibration_images``.
Nothing is downloaded: the model is nudenet's Ultralytics YOLOv8n export from its pinned wheel
(``edgefleet_testing.real_models``: symbolic dims, dynamic batch, 320x320, 18 classes); calibration and
evaluation images are rendered into a temporary directory: face-like drawings, which this detector finds
(about two FP32 boxes per image), and, in the calibration set, some document photos.

How:
- ``build_precision_bundle`` (the publisher's path, ``precision="int8"``) builds the bundle with its variants
  ``fp32``, ``int8`` (QDQ S8S8) and ``int8-u8s8`` (QDQ U8S8). The accuracy bound is opened (100%) and the
  minimum box count set to 0 so every candidate is carried and measured here; the device's own bound (1%)
  is then applied by ``choose_variant``, as a device would.
- Latency: model-only, batch 1, CPU provider, FP32, S8S8 and U8S8 timed in ONE run, interleaved with a
  rotating first variant, medians, twice: through the runtime's engines (``choose_variant`` with the accuracy
  bound lifted, so all three are timed: the rows' figures) and through the builder's
  ``edgefleet_pipeline.precision.measure_latency`` (in parentheses). ``ratio`` = FP32 p50 / candidate p50.
- Device choice: ``edge_runtime.precision.choose_variant`` on the built bundle — the runtime's engines, its
  own interleaved measurement and rule (lowest p50, ≥ 1.05× over FP32 to replace it) — once with the
  device's 1% accuracy bound (what it serves) and once on speed alone (which candidate wins the race); each
  pick is checked against the other run's figures.
- Agreement: mAP@0.5 of each candidate's detections against FP32's (``edgefleet_pipeline.accuracy``), with the
  number of FP32 boxes it rests on; a figure resting on fewer than ``MIN_BOXES`` boxes is printed as what it
  is and not judged. The drawings are not photographs: the figure is how faithfully each quantization
  reproduces FP32 on this model, not the model's accuracy.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from benchlib import Row, row, run_alone

from edge_runtime.precision import choose_variant
from edgefleet.contract.bundle import read_manifest
from edgefleet.contract.bundle_spec import BundleSpec
from edgefleet.contract.hardware import hardware_class
from edgefleet.contract.processing.preprocess import preprocess
from edgefleet_pipeline.accuracy import evaluate_variant
from edgefleet_pipeline.calibration import load_image_set, read_image
from edgefleet_pipeline.precision import measure_latency
from edgefleet_pipeline.precision_bundle import build_precision_bundle
from edgefleet_pipeline.quantize import model_input_name
from edgefleet_pipeline.synthetic_documents import write_document_set
from edgefleet_testing.calibration_images import write_faces
from edgefleet_testing.real_models import yolov8n_spec

VARIANTS = {"fp32": "FP32", "int8": "S8S8 (QDQ, int8 activations)", "int8-u8s8": "U8S8 (QDQ, uint8 activations)"}
MIN_BOXES = 20
AGREEMENT_GOAL = 0.99  # the builder's and device's default 1% loss bound
SAME_AS_FASTEST = 1.15  # the device's pick must be within 15% of the fastest servable p50 measured here


def run(quick: bool = False) -> list[Row]:
    runs = 30 if quick else 150
    with tempfile.TemporaryDirectory(prefix="bench-quantization-") as tmp:
        work = Path(tmp)
        # Calibration: the target environment's kind of frames (face-like drawings, which this detector
        # finds) plus documents for variety; evaluation: held-out faces, so the mAP rests on real FP32 boxes.
        write_faces(work / "calibration", 24 if quick else 80, seed=101)
        write_document_set(work / "calibration", 8 if quick else 40, seed=102)
        write_faces(work / "eval", 16 if quick else 48, seed=202)
        spec = BundleSpec.from_dict(yolov8n_spec(), source="yolov8n spec", base_dir=work)
        build_precision_bundle(
            spec,
            work / "bundle",
            calibration_dir=work / "calibration",
            eval_dir=work / "eval",
            precision="int8",
            max_accuracy_loss=1.0,
            min_eval_boxes=0,
            latency_runs=10,
        )
        bundle_dir = work / "bundle"
        manifest = read_manifest(bundle_dir)
        declared = dict(manifest.precision_variants or {})
        paths = {
            name: bundle_dir / manifest.artifact(declared[name].artifact).path for name in VARIANTS if name in declared
        }
        evaluation = load_image_set(work / "eval", purpose="evaluation", recommended=0)
        x = preprocess(read_image(evaluation.paths[0]), spec.preprocess)[0]
        figures = measure_latency(paths, {model_input_name(paths["fp32"]): x}, runs=runs)
        device_runs = max(20, runs // 3)
        choice = choose_variant(bundle_dir, manifest, providers=("cpu",), runs=device_runs)
        # The same choice on speed alone (accuracy bound lifted): which candidate wins the race here.
        by_speed = choose_variant(bundle_dir, manifest, providers=("cpu",), runs=device_runs, max_accuracy_loss=1.0)
        reports = {
            name: evaluate_variant(paths["fp32"], path, evaluation, spec.preprocess, spec.postprocess, precision=name)
            for name, path in paths.items()
            if name != "fp32"
        }
    return _rows(figures, choice, by_speed, reports, runs, declared)


def _rows(figures: Any, choice: Any, by_speed: Any, reports: Any, runs: int, declared: Any) -> list[Row]:
    hw = hardware_class()
    device = by_speed.figures  # the runtime's engines, all three variants interleaved in one run
    rows: list[Row] = []
    for name, label in VARIANTS.items():
        if name == "fp32":
            continue
        if name not in device:
            rows.append(row(f"YOLOv8n {label}: not in the bundle", "missing", "fp32", 0.0, "carried", False))
            continue
        metrics = declared[name].metrics
        how = f"{metrics.get('calibration_method', '?')}, reduce_range {metrics.get('reduce_range', '?')}"
        speedup = device["fp32"].p50_ms / device[name].p50_ms
        rows.append(
            row(
                f"YOLOv8n (Ultralytics export, 320): {label} vs FP32 p50 ({hw}, runtime engines, "
                f"{device[name].runs} interleaved runs; {how})",
                f"{name} p50 {device[name].p50_ms:.3f} ms (builder's measure_latency: {figures[name].p50_ms:.3f} ms)",
                f"fp32 p50 {device['fp32'].p50_ms:.3f} ms (builder's: {figures['fp32'].p50_ms:.3f} ms)",
                speedup,
                "measured, not assumed: the device serves the fastest servable variant",
                True,
            )
        )
    rows.append(_choice_row("the device serves (1% accuracy bound)", choice, device))
    rows.append(_choice_row("fastest on speed alone (bound lifted)", by_speed, figures))
    for name, report in reports.items():
        boxes = report.reference_boxes or 0
        servable = name not in choice.refused
        verdict = "servable" if servable else "refused by the device"
        judged = boxes >= MIN_BOXES
        rows.append(
            row(
                f"YOLOv8n: {VARIANTS[name]} mAP@0.5 vs FP32 ({report.samples} images, {boxes} FP32 boxes)",
                f"{report.value:.4f} ({verdict})",
                "1.0 (fp32 against itself)",
                report.value,
                f"servable iff >= {AGREEMENT_GOAL} (the 1% bound): the device's verdict agrees"
                if judged
                else f"recorded only: rests on {boxes} < {MIN_BOXES} FP32 boxes",
                servable == (report.value >= AGREEMENT_GOAL) if judged else True,
            )
        )
    return rows


def _choice_row(what: str, choice: Any, figures: Any) -> Row:
    """The device's pick, against the fastest variant it was allowed to pick in ``figures`` (another run)."""
    allowed = {n: f for n, f in figures.items() if n not in choice.refused}
    fastest = min(allowed, key=lambda n: allowed[n].p50_ms)
    device_figures = ", ".join(f"{n} {f.p50_ms:.2f} ms" for n, f in sorted(choice.figures.items())) or "none"
    refused = f"; refused: {'; '.join(choice.refused.values())}" if choice.refused else ""
    return row(
        f"YOLOv8n: variant {what} (edge_runtime.precision.choose_variant on the built bundle, cpu)",
        f"{choice.name} ({choice.speedup:.2f}x vs fp32; device's run: {device_figures}{refused})",
        f"fastest allowed in another run: {fastest} {allowed[fastest].p50_ms:.3f} ms",
        choice.speedup,
        f"the device's pick is within {SAME_AS_FASTEST:.2f}x of the fastest allowed p50",
        figures[choice.name].p50_ms <= SAME_AS_FASTEST * allowed[fastest].p50_ms,
    )


if __name__ == "__main__":
    sys.exit(run_alone(run))
