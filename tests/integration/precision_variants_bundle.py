"""A bundle with every precision candidate the builder can ship — ``fp32`` (the reference, artifact ``model``),
``int8`` (S8S8 QDQ, ``model.int8``), ``int8-u8s8`` (U8S8 QDQ, ``model.int8-u8s8``), ``fp16`` (``model.fp16``) —
plus ``int8-lossy``, a variant whose recorded accuracy loss is above the bound (never timed or served).

Assembled from the pipeline's own parts (``quantize.quantize_int8`` with both activation types, onnxconverter-
common's FP16 conversion, ``bundle_builder.build_bundle`` with ``extra_artifacts`` and ``precision_variants``)
on a generated classifier calibrated on synthetic document images: the device-side tests exercise the choice
among several variants without depending on the builder's candidate search. The accuracy figures are declared
(the builder measures them; here they only gate eligibility). Each servable variant's golden tolerance is the
builder's own (``precision_bundle.variant_golden_tolerance`` on the golden inputs the bundle carries), unless
``golden_tolerances=False`` builds a bundle as they were before it was recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import yaml
from onnxconverter_common import float16  # type: ignore[import-untyped]

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_spec import BundleSpec
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_pipeline.calibration import load_image_set
from edgefleet_pipeline.precision_bundle import GOLDEN_TOLERANCE_KEY, variant_golden_tolerance
from edgefleet_pipeline.quantize import quantize_int8
from edgefleet_pipeline.semantics import resolve_semantics
from edgefleet_pipeline.synthetic_documents import write_document_set
from edgefleet_testing.modelgen import make_classifier

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ("fp16", "fp32", "int8", "int8-lossy", "int8-u8s8")


def build_variant_bundle(
    work: Path,
    *,
    golden_atol: float = 1e-3,
    size: int = 64,
    extra_matmuls: int = 2,
    golden_tolerances: bool = True,
) -> tuple[Path, BundleManifest]:
    """Build the bundle under ``work/bundle``; ``golden_atol``: the bundle's golden atol and rtol;
    ``golden_tolerances``: record each servable variant's golden tolerance as the builder does."""
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = make_classifier(work / "model.onnx", num_classes=4, size=size, seed=0, extra_matmuls=extra_matmuls)
    raw: dict[str, Any] = yaml.safe_load((REPO / "examples/bundles/classifier-v1.spec.yaml").read_text())
    raw.update(model=str(model), labels=["0", "90", "180", "270"], providers=["cpu"])
    raw["postprocess"] = {**raw["postprocess"], "top_k": 1, "softmax": True}
    raw["latency"] = {"sla_ms": 500, "percentile": 95}
    raw["preprocess"] = {**raw["preprocess"], "size": [size, size]}
    raw["canary"] = {**raw["canary"], "golden_tolerance": {"atol": golden_atol, "rtol": golden_atol}}
    write_document_set(work / "calibration", 12, seed=1, size=(96, 96))
    images = load_image_set(work / "calibration", purpose="calibration", recommended=0)
    plain = BundleSpec.from_dict(raw, source="variants.spec.yaml", base_dir=work)
    pre = plain.preprocess
    s8s8 = quantize_int8(model, images, pre, work / "model.int8.onnx", activation_type="int8").path
    u8s8 = quantize_int8(model, images, pre, work / "model.int8-u8s8.onnx", activation_type="uint8").path
    fp16 = work / "model.fp16.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(str(model)), keep_io_types=True), str(fp16))

    golden = resolve_semantics(plain).cases
    tolerance = {
        artifact: {GOLDEN_TOLERANCE_KEY: variant_golden_tolerance(path, golden, plain.canary.golden_tolerance)}
        if golden_tolerances
        else {}
        for artifact, path in (("model.int8", s8s8), ("model.int8-u8s8", u8s8), ("model.fp16", fp16))
    }

    def gated(artifact: str, **metrics: object) -> dict[str, object]:
        return {"accuracy_loss": 0.002, "accuracy_eval_set": "calibration", **tolerance[artifact], **metrics}

    raw["precision_variants"] = {
        "fp32": {"artifact": "model", "precision": "fp32", "metrics": {"reference": True}},
        "int8": {
            "artifact": "model.int8",
            "precision": "int8",
            "metrics": gated("model.int8", activation_type="int8", quant_format="qdq"),
        },
        "int8-u8s8": {
            "artifact": "model.int8-u8s8",
            "precision": "int8",
            "metrics": gated("model.int8-u8s8", activation_type="uint8", quant_format="qdq"),
        },
        "int8-lossy": {
            "artifact": "model.int8",
            "precision": "int8",
            "metrics": gated("model.int8", accuracy_loss=0.05, activation_type="int8", quant_format="qdq"),
        },
        "fp16": {"artifact": "model.fp16", "precision": "fp16", "metrics": gated("model.fp16")},
    }
    spec = BundleSpec.from_dict(raw, source="variants.spec.yaml", base_dir=work)
    manifest = build_bundle(
        spec,
        work / "bundle",
        extra_artifacts={"model.int8": s8s8, "model.int8-u8s8": u8s8, "model.fp16": fp16},
        golden_inputs=[case.inputs for case in golden],  # the inputs the tolerances were measured on
    )
    return work / "bundle", manifest
