"""Accuracy gate: top-1 agreement, YOLO decode + NMS, VOC-style mAP@0.5, and the loss check's message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.contract.bundle_sections import Postprocess
from edgefleet.contract.processing.postprocess import nms
from edgefleet_pipeline.accuracy import (
    AccuracyReport,
    Detections,
    ReferenceOutputs,
    average_precision,
    check_loss,
    decode_yolo,
    evidence_refusal,
    loss_refusal,
    mean_average_precision,
    top1_agreement,
)
from edgefleet_pipeline.calibration import ImageSet
from edgefleet_pipeline.errors import AccuracyLossError


def _dets(boxes: list[list[float]], scores: list[float], classes: list[int]) -> Detections:
    return Detections(
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(scores, np.float32),
        np.asarray(classes, np.int64),
    )


def test_top1_agreement() -> None:
    ref = [np.array([0.1, 0.9]), np.array([0.8, 0.2]), np.array([0.3, 0.7])]
    cand = [np.array([0.2, 0.8]), np.array([0.1, 0.9]), np.array([0.4, 0.6])]
    assert top1_agreement(ref, cand) == pytest.approx(2 / 3)


def test_check_loss_message_has_the_numbers() -> None:
    report = AccuracyReport("top1_agreement", 0.912, 0.088, 250)
    check_loss(report, 0.09)
    with pytest.raises(AccuracyLossError) as info:
        check_loss(report, 0.01)
    message = str(info.value)
    assert "INT8 top-1 agreement 0.912 is a loss of 8.8% against FP32" in message
    assert "above --max-accuracy-loss 1.0%" in message
    assert info.value.report is report and info.value.max_loss == 0.01


def test_ap_of_perfect_and_half_predictions() -> None:
    gt = [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 0])]
    assert mean_average_precision(gt, gt) == 1.0
    # One hit ranked first, one miss: recall 0.5 at precision 1.
    half = [_dets([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], [0, 0])]
    assert mean_average_precision(gt, half) == pytest.approx(0.5)
    # A miss ranked first: precision at recall 0.5 is 1/2.
    late = [_dets([[0, 0, 10, 10], [50, 50, 60, 60]], [0.7, 0.8], [0, 0])]
    assert mean_average_precision(gt, late) == pytest.approx(0.25)


def test_ap_is_class_wise_and_matches_each_truth_once() -> None:
    gt = [_dets([[0, 0, 10, 10]], [0.9], [1])]
    wrong_class = [_dets([[0, 0, 10, 10]], [0.9], [0])]
    assert mean_average_precision(gt, wrong_class) == 0.0
    duplicate = [_dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])]
    assert mean_average_precision(gt, duplicate) == 1.0  # the duplicate is a false positive ranked last
    shifted = [_dets([[4, 0, 14, 10]], [0.9], [1])]  # IoU 6/14 < 0.5
    assert mean_average_precision(gt, shifted) == 0.0


def test_ap_without_ground_truth() -> None:
    empty = [_dets([], [], [])]
    assert mean_average_precision(empty, empty) == 1.0
    low = [_dets([[0, 0, 5, 5]], [0.01], [0])]
    assert mean_average_precision(empty, low, empty_conf_threshold=0.25) == 1.0
    assert mean_average_precision(empty, [_dets([[0, 0, 5, 5]], [0.5], [0])], empty_conf_threshold=0.25) == 0.0


def test_average_precision_envelope() -> None:
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 2 / 3])
    assert average_precision(recall, precision) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_nms_suppresses_overlaps_only() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.8, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, np.zeros(3, np.intp), 0.45, 10).tolist() == [1, 2]


def test_decode_v8_and_v5_agree() -> None:
    # Two anchors, two classes: anchor 0 is class 1 at (50, 50) 20x20, anchor 1 overlaps it in class 1.
    v8 = np.array([[[50, 52], [50, 50], [20, 20], [20, 20], [0.1, 0.2], [0.9, 0.6]]], np.float32)  # [1, 4+C, A]
    dets = decode_yolo(v8, "yolov8", conf_threshold=0.25, iou_threshold=0.45, max_detections=10)
    assert len(dets) == 1 and dets.classes.tolist() == [1]
    assert dets.boxes[0].tolist() == [40.0, 40.0, 60.0, 60.0]
    rows = v8[0].T  # [A, 4+C]
    v5 = np.concatenate([rows[:, :4], np.ones((2, 1), np.float32), rows[:, 4:]], axis=1)[None]
    dets5 = decode_yolo(v5, "yolov5", conf_threshold=0.25, iou_threshold=0.45, max_detections=10)
    assert dets5.boxes.tolist() == dets.boxes.tolist() and dets5.scores.tolist() == dets.scores.tolist()


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10_000))
def test_map_of_detections_against_themselves_is_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(3):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 100, (n, 2))
        wh = rng.uniform(1, 30, (n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).tolist()
        images.append(_dets(boxes, rng.uniform(0.3, 1, n).tolist(), rng.integers(0, 3, n).tolist()))
    assert mean_average_precision(images, images) == 1.0


def _evaluation_set(count: int) -> ImageSet:
    return ImageSet(root=Path("eval"), paths=tuple(Path(f"eval/{i}.png") for i in range(count)), sha256="0" * 64)


def test_evidence_refusal_counts_images_and_fp32_boxes() -> None:
    classification = Postprocess(kind="classification")
    scores = tuple(np.array([0.2, 0.8]) for _ in range(12))
    few = ReferenceOutputs(_evaluation_set(12), classification, scores=scores)
    assert few.boxes is None
    reason = evidence_refusal(few, min_images=16, min_boxes=32)
    assert reason is not None and "12 evaluation images, fewer than --min-eval-images 16; add 4 or more" in reason
    assert evidence_refusal(few, min_images=12, min_boxes=32) is None  # boxes only count for detectors

    detector = Postprocess(kind="yolov8", conf_threshold=0.25)
    one_box = _dets([[0, 0, 10, 10]], [0.9], [0])
    dets = ReferenceOutputs(_evaluation_set(20), detector, detections=tuple(one_box for _ in range(20)))
    assert dets.boxes == 20
    reason = evidence_refusal(dets, min_images=16, min_boxes=32)
    assert reason is not None and "rest on 20 FP32 boxes (conf >= 0.25) over 20 evaluation images" in reason
    assert "add evaluation images in which the FP32 model detects objects" in reason
    assert evidence_refusal(dets, min_images=16, min_boxes=20) is None


def test_loss_refusal_names_the_candidate_and_the_boxes() -> None:
    report = AccuracyReport("map50", 0.9, 0.1, 24, precision="int8-u8s8", reference_boxes=54)
    assert loss_refusal(report, 0.1) is None
    reason = loss_refusal(report, 0.05)
    assert reason == (
        "INT8-U8S8 mAP@0.5 0.900 is a loss of 10.0% against FP32 (24 images, 54 FP32 boxes), above "
        "--max-accuracy-loss 5.0%"
    )
    assert report.to_metrics()["accuracy_reference_boxes"] == 54
    assert report.describe() == "mAP@0.5 0.900 over 24 images, 54 FP32 boxes"
