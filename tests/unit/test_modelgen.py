"""Generated test models load in onnxruntime, have the declared shapes and are byte-reproducible."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgefleet_testing.modelgen import YoloLayout, make_classifier, make_yolo_detector


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _op_count(path: Path, op: str) -> int:
    return sum(1 for n in onnx.load(str(path)).graph.node if n.op_type == op)


def test_classifier_runs_with_dynamic_batch(tmp_path: Path) -> None:
    path = make_classifier(tmp_path / "c.onnx", num_classes=7, size=32)
    session = _session(path)
    (inp,) = session.get_inputs()
    assert inp.name == "images"
    assert inp.shape[1:] == [3, 32, 32]
    assert isinstance(inp.shape[0], str)
    for batch in (1, 3):
        x = np.random.default_rng(0).random((batch, 3, 32, 32), dtype=np.float32)
        (logits,) = session.run(["logits"], {"images": x})
        assert logits.shape == (batch, 7)
        assert np.isfinite(logits).all()
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 17


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    a = make_classifier(tmp_path / "a.onnx", seed=3)
    b = make_classifier(tmp_path / "b.onnx", seed=3)
    c = make_classifier(tmp_path / "c.onnx", seed=4)
    assert _sha(a) == _sha(b)
    assert _sha(a) != _sha(c)
    ya = make_yolo_detector(tmp_path / "ya.onnx", size=128, seed=1)
    yb = make_yolo_detector(tmp_path / "yb.onnx", size=128, seed=1)
    assert _sha(ya) == _sha(yb)


def test_extra_matmuls_add_square_matmul_layers(tmp_path: Path) -> None:
    base = make_classifier(tmp_path / "base.onnx")
    slow = make_classifier(tmp_path / "slow.onnx", extra_matmuls=3)
    assert _op_count(base, "MatMul") == 0
    assert _op_count(slow, "MatMul") == 3
    weights = {i.name: i for i in onnx.load(str(slow)).graph.initializer}
    matmul_weights = [weights[n.input[1]] for n in onnx.load(str(slow)).graph.node if n.op_type == "MatMul"]
    assert all(w.dims[0] == w.dims[1] for w in matmul_weights)
    assert _session(slow).run(None, {"images": np.zeros((1, 3, 64, 64), np.float32)})[0].shape == (1, 10)
    yolo = make_yolo_detector(tmp_path / "y.onnx", size=128, extra_matmuls=2)
    assert _op_count(yolo, "MatMul") == 2


def test_scene_matmuls_run_only_on_bright_frames_and_change_no_output(tmp_path: Path) -> None:
    plain = _session(make_classifier(tmp_path / "plain.onnx", size=32, seed=1, num_classes=4))
    scene_path = make_classifier(tmp_path / "scene.onnx", size=32, seed=1, num_classes=4, scene_matmuls=40)
    scene = _session(scene_path)
    (branch,) = [n for n in onnx.load(str(scene_path)).graph.node if n.op_type == "If"]
    busy = next(a.g for a in branch.attribute if a.name == "then_branch")
    assert sum(n.op_type == "MatMul" for n in busy.node) == 40
    rng = np.random.default_rng(2)
    timings = {}
    for level in (0.1, 0.9):
        x = np.clip(rng.normal(level, 0.05, (2, 3, 32, 32)), 0.0, 1.0).astype(np.float32)
        np.testing.assert_allclose(scene.run(None, {"images": x})[0], plain.run(None, {"images": x})[0], atol=1e-5)
        best = []
        for _ in range(5):
            started = time.perf_counter()
            scene.run(None, {"images": x})
            best.append(time.perf_counter() - started)
        timings[level] = min(best)
    assert timings[0.9] > 3 * timings[0.1], timings
    with pytest.raises(ValueError, match="scene_matmuls must be >= 0, got -1"):
        make_classifier(tmp_path / "bad.onnx", scene_matmuls=-1)


def _softmax_confidence(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    confidence: np.ndarray = (e / e.sum(axis=1, keepdims=True)).max(axis=1)
    return confidence


def test_logit_shift_moves_confidence_distribution(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = (rng.random((64, 3, 64, 64), dtype=np.float32) * rng.random((64, 3, 1, 1), dtype=np.float32)).astype(np.float32)
    base = _session(make_classifier(tmp_path / "base.onnx")).run(None, {"images": x})[0]
    shifted = _session(make_classifier(tmp_path / "shift.onnx", logit_shift=3.0)).run(None, {"images": x})[0]
    assert np.median(_softmax_confidence(shifted)) < np.median(_softmax_confidence(base)) - 0.1


@pytest.mark.parametrize("layout", ["v8", "v5"])
def test_yolo_output_layout_and_plausible_boxes(tmp_path: Path, layout: YoloLayout) -> None:
    size, classes = 256, 3
    path = make_yolo_detector(
        tmp_path / f"y{layout}.onnx",
        layout=layout,
        num_classes=classes,
        size=size,
    )
    session = _session(path)
    x = np.random.default_rng(0).random((2, 3, size, size), dtype=np.float32)
    (out,) = session.run(["output0"], {"images": x})
    anchors = (size // 32) ** 2
    if layout == "v8":
        assert out.shape == (2, 4 + classes, anchors)
        per_box = out[0].T
    else:
        assert out.shape == (2, anchors, 5 + classes)
        per_box = out[0]
    cx, cy, w, h = per_box[:, 0], per_box[:, 1], per_box[:, 2], per_box[:, 3]
    assert ((cx >= 0) & (cx <= size) & (cy >= 0) & (cy <= size)).all()
    assert ((w > 0) & (h > 0)).all()
    scores = per_box[:, 4:]
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores.std() > 0.05


def test_yolo_multiple_anchors_multiply_anchor_count(tmp_path: Path) -> None:
    path = make_yolo_detector(tmp_path / "y.onnx", size=64, anchors=((16.0, 16.0), (48.0, 32.0)))
    (out,) = _session(path).run(None, {"images": np.zeros((1, 3, 64, 64), np.float32)})
    assert out.shape == (1, 8, 2 * 4)


def test_invalid_arguments_name_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size must be a multiple of 32, got 100"):
        make_yolo_detector(tmp_path / "y.onnx", size=100)
    with pytest.raises(ValueError, match="num_classes must be > 0, got 0"):
        make_classifier(tmp_path / "c.onnx", num_classes=0)
