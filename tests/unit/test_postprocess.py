"""Post-processing: spec validation, top-k classification, YOLO v5/v8 decode, NMS, letterbox undo."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from edgefleet.contract.bundle_sections import Postprocess
from edgefleet.contract.errors import BundleFormatError
from edgefleet.contract.processing.postprocess import (
    Classification,
    classify,
    classify_scored,
    detect,
    greedy_nms,
    nms,
    postprocess_scored,
    softmax,
    xywh_to_xyxy,
)
from edgefleet.contract.processing.preprocess import FrameTransform

IDENTITY = FrameTransform(1.0, 1.0, 0.0, 0.0, 640, 640)
LABELS = ("person", "car", "dog")


def v8_tensor(rows: list[tuple[float, float, float, float, list[float]]]) -> NDArray[np.float32]:
    """[1, 4+C, A] from (cx, cy, w, h, class scores) rows."""
    return np.array([[cx, cy, w, h, *cls] for cx, cy, w, h, cls in rows], np.float32).T[None]


def v5_tensor(rows: list[tuple[float, float, float, float, float, list[float]]]) -> NDArray[np.float32]:
    """[1, A, 5+C] from (cx, cy, w, h, objectness, class scores) rows."""
    return np.array([[cx, cy, w, h, obj, *cls] for cx, cy, w, h, obj, cls in rows], np.float32)[None]


def test_from_mapping_defaults_and_errors() -> None:
    spec = Postprocess.from_dict({"kind": "yolov8"})
    assert (spec.top_k, spec.conf_threshold, spec.iou_threshold, spec.max_detections, spec.softmax) == (
        5,
        0.25,
        0.45,
        100,
        True,  # the contract's default: a classifier's outputs are logits unless the bundle says otherwise
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({"kind": "ssd"}, "'postprocess.kind' must be one of classification, yolov5, yolov8, got 'ssd'"),
        (
            {"kind": "yolov8", "conf_threshold": 1.5},
            "'postprocess.conf_threshold' must be <= 1, got 1.5",
        ),
        (
            {"kind": "yolov8", "max_detections": 0},
            "'postprocess.max_detections' must be >= 1, got 0",
        ),
        ({"kind": "classification", "top_k": "3"}, "'postprocess.top_k' must be an integer, got '3'"),
        (
            {"kind": "classification", "softmax": "yes"},
            "'postprocess.softmax' must be true or false, got 'yes'",
        ),
        ({"kind": "classification", "nms": 1}, "unknown field 'postprocess.nms'"),
    ]
    for section, needle in cases:
        with pytest.raises(BundleFormatError) as info:
            Postprocess.from_dict(section)
        assert needle in str(info.value)


def test_classification_top_k_with_softmax_and_labels() -> None:
    spec = Postprocess(kind="classification", top_k=2, softmax=True, conf_threshold=0.0)
    logits = np.array([[1.0, 3.0, 2.0]], np.float32)
    out = classify(logits, spec, LABELS)
    e = np.exp([1.0, 3.0, 2.0])
    p = e / e.sum()
    assert [(c.label, c.class_id) for c in out] == [("car", 1), ("dog", 2)]
    assert out[0].confidence == pytest.approx(p[1], rel=1e-6)
    assert out[1].confidence == pytest.approx(p[2], rel=1e-6)


def test_classification_without_softmax_passes_probabilities_through() -> None:
    spec = Postprocess(kind="classification", top_k=10, conf_threshold=0.0, softmax=False)
    out = classify(np.array([[0.1, 0.6, 0.3]], np.float32), spec, ("a", "b"))
    assert out == (
        Classification("b", 1, pytest.approx(0.6)),  # type: ignore[arg-type]
        Classification("class_2", 2, pytest.approx(0.3)),  # type: ignore[arg-type]
        Classification("a", 0, pytest.approx(0.1)),  # type: ignore[arg-type]
    )


def test_classes_below_conf_threshold_are_dropped_and_the_top_score_is_kept() -> None:
    scores = np.array([[0.1, 0.6, 0.3]], np.float32)
    spec = Postprocess(kind="classification", top_k=3, conf_threshold=0.3, softmax=False)
    out, top = classify_scored(scores, spec, ("a", "b", "c"))
    assert [(c.label, c.confidence) for c in out] == [("b", pytest.approx(0.6)), ("c", pytest.approx(0.3))]
    assert top == pytest.approx(0.6)
    # Nothing confident: no label at all, while top_confidence still says what the model scored.
    none, top = classify_scored(scores, Postprocess(kind="classification", conf_threshold=0.7, softmax=False), ())
    assert none == () and top == pytest.approx(0.6)
    detections, top = postprocess_scored(
        v8_tensor([(100, 100, 20, 20, [0.9, 0.0, 0.0])]),
        Postprocess(kind="yolov8", conf_threshold=0.95),
        LABELS,
        IDENTITY,
    )
    assert detections == () and top == 0.0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=1, max_size=40), st.integers(1, 50))
def test_top_k_matches_full_sort(values: list[float], k: int) -> None:
    scores = np.array(values, np.float32)
    out = classify(scores[None], Postprocess(kind="classification", top_k=k, conf_threshold=-np.inf, softmax=False), ())
    confidences = [c.confidence for c in out]
    assert len(out) == min(k, len(values))
    assert confidences == sorted(confidences, reverse=True)
    assert confidences == pytest.approx(sorted(scores.tolist(), reverse=True)[: len(out)])
    assert softmax(scores).sum() == pytest.approx(1.0, rel=1e-5)


def test_xywh_to_xyxy() -> None:
    np.testing.assert_array_equal(
        xywh_to_xyxy(np.array([[50, 40, 20, 10]], np.float32)), np.array([[40, 35, 60, 45]], np.float32)
    )


def test_nms_keeps_best_of_overlapping_same_class_but_not_across_classes() -> None:
    spec = Postprocess(kind="yolov8", conf_threshold=0.3, iou_threshold=0.5)
    out = v8_tensor(
        [
            (100, 100, 100, 100, [0.80, 0.0, 0.0]),  # best person
            (105, 105, 100, 100, [0.70, 0.0, 0.0]),  # same place, same class, IoU ≈ 0.82 → suppressed
            (105, 100, 100, 100, [0.0, 0.75, 0.0]),  # same place, other class → kept
            (400, 400, 50, 50, [0.60, 0.0, 0.0]),  # another person far away → kept
            (300, 300, 50, 50, [0.0, 0.0, 0.20]),  # below threshold → dropped
        ]
    )
    dets = detect(out, spec, LABELS, IDENTITY)
    assert [(d.label, round(d.confidence, 2)) for d in dets] == [
        ("person", 0.8),
        ("car", 0.75),
        ("person", 0.6),
    ]
    assert dets[0].box == (50.0, 50.0, 150.0, 150.0)
    assert dets[2].box == (375.0, 375.0, 425.0, 425.0)


def test_max_detections_keeps_the_most_confident() -> None:
    rows = [(float(40 * i + 20), 20.0, 10.0, 10.0, [0.3 + 0.05 * i]) for i in range(10)]
    dets = detect(v8_tensor(rows), Postprocess(kind="yolov8", max_detections=3), ("x",), IDENTITY)
    assert [round(d.confidence, 2) for d in dets] == [0.75, 0.7, 0.65]


def test_v5_and_v8_give_the_same_detections_on_equivalent_tensors() -> None:
    rng = np.random.default_rng(7)
    a, c = 300, 3
    boxes = np.column_stack([rng.uniform(0, 640, (a, 2)), rng.uniform(10, 200, (a, 2))]).astype(np.float32)
    obj = rng.uniform(0, 1, a).astype(np.float32)
    cls = rng.uniform(0, 1, (a, c)).astype(np.float32)
    v5 = np.concatenate([boxes, obj[:, None], cls], axis=1)[None]
    v8 = np.concatenate([boxes, cls * obj[:, None]], axis=1).T[None]
    transform = FrameTransform(0.5, 0.5, 0.0, 140.0, 1280, 720)
    d5 = detect(v5, Postprocess(kind="yolov5"), LABELS, transform)
    d8 = detect(v8, Postprocess(kind="yolov8"), LABELS, transform)
    assert len(d5) > 5
    assert [(d.class_id, d.label) for d in d5] == [(d.class_id, d.label) for d in d8]
    for x, y in zip(d5, d8, strict=True):
        assert x.confidence == pytest.approx(y.confidence, rel=1e-6)
        assert x.box == pytest.approx(y.box, abs=1e-3)
        assert 0 <= x.box[0] <= x.box[2] <= 1280 and 0 <= x.box[1] <= x.box[3] <= 720


def test_v5_confidence_is_objectness_times_class_score() -> None:
    out = v5_tensor([(320, 320, 64, 64, 0.5, [0.2, 0.9, 0.1]), (100, 100, 20, 20, 0.2, [0.0, 0.0, 1.0])])
    dets = detect(out, Postprocess(kind="yolov5", conf_threshold=0.25), LABELS, IDENTITY)
    assert len(dets) == 1
    assert dets[0].label == "car"
    assert dets[0].confidence == pytest.approx(0.45)


def test_boxes_are_mapped_back_through_the_letterbox() -> None:
    # 720x1280 frame letterboxed into 640x640: scale 0.5, 140 px bars top and bottom.
    transform = FrameTransform(0.5, 0.5, 0.0, 140.0, 1280, 720)
    out = v8_tensor([(150, 240, 100, 100, [0.9]), (620, 150, 80, 40, [0.8])])
    dets = detect(out, Postprocess(kind="yolov8"), ("x",), transform)
    assert dets[0].box == pytest.approx((200.0, 100.0, 400.0, 300.0))
    # Second box runs past the right edge of the frame: x2 = (660)/0.5 = 1320 → clipped to 1280.
    assert dets[1].box == pytest.approx((1160.0, 0.0, 1280.0, 60.0))


def test_empty_when_nothing_passes_the_threshold() -> None:
    out = v8_tensor([(10, 10, 5, 5, [0.1, 0.1])])
    assert detect(out, Postprocess(kind="yolov8"), ("a", "b"), IDENTITY) == ()


@settings(max_examples=120, deadline=None)
@given(
    n=st.integers(0, 700),
    classes=st.integers(1, 4),
    iou=st.floats(0.1, 0.9),
    max_keep=st.sampled_from([1, 3, 20, 1000]),
    seed=st.integers(0, 2**31 - 1),
)
def test_opencv_nms_equals_numpy_reference(n: int, classes: int, iou: float, max_keep: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(5, 80, (n, 2))
    boxes = np.column_stack([xy, xy + wh]).astype(np.float32)
    scores = rng.permutation(np.linspace(0.05, 1.0, n)).astype(np.float32)  # distinct: no tie ambiguity
    ids = rng.integers(0, classes, n).astype(np.intp)
    # Prefix-doubling in nms() must not change which boxes survive, whatever max_keep is.
    fast = nms(boxes, scores, ids, iou, max_keep)
    ref = greedy_nms(boxes, scores, ids, iou, max_keep)
    np.testing.assert_array_equal(fast, ref)
