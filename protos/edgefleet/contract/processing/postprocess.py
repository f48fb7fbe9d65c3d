"""Model output → results, as a bundle's ``postprocess`` section (``Postprocess``) declares; owns
``Classification`` and ``Detection``.

Pure numpy (no I/O, no clock). Three kinds:
- ``classification``: ``[1, C]`` scores → top-k ``Classification`` (softmax first for logits), keeping
  only classes with ``confidence >= conf_threshold``: a frame whose best class is below it has no
  confident label (no outputs; the canary counts it as label -1 on that side). The frame's
  ``top_confidence`` is still the best class's score, threshold or not, so confidence histograms, drift
  tests and low-confidence review sampling see what the model said.
- ``yolov5``: ``[1, A, 5+C]`` (cx, cy, w, h, objectness, class scores), confidence = objectness × class score.
- ``yolov8``: ``[1, 4+C, A]`` (cx, cy, w, h, class scores; no objectness), transposed to ``[A, 4+C]``.

Detections keep ``confidence >= conf_threshold``, are converted to x1,y1,x2,y2, go through class-wise greedy
NMS (a box suppresses only boxes of its own class with IoU > ``iou_threshold``), are capped at
``max_detections`` by confidence, and are mapped back to frame pixels with the letterbox undone and clipped.
Ties in confidence keep model order (stable sort), so the same tensor always yields the same detections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import cv2
import numpy as np
from numpy.typing import NDArray

from edgefleet.contract.bundle_sections import Postprocess
from edgefleet.contract.errors import ModelOutputError
from edgefleet.contract.processing.preprocess import FrameTransform

# Bounds NMS work on a degenerate model that scores every anchor high; YOLO's own exporters use the same cap.
MAX_NMS_CANDIDATES = 30_000

Boxes = NDArray[np.float32]  # [N, 4]
Scores = NDArray[np.float32]  # [N]
Indices = NDArray[np.intp]  # [N] class ids, or positions into the boxes


@dataclass(frozen=True, slots=True)
class Classification:
    """One class a classifier scored at or above ``conf_threshold``: its label, index and confidence."""

    label: str
    class_id: int
    confidence: float


@dataclass(frozen=True, slots=True)
class Detection:
    """``box`` is x1, y1, x2, y2 in frame pixels."""

    box: tuple[float, float, float, float]
    class_id: int
    label: str
    confidence: float


def label_for(labels: Sequence[str], class_id: int) -> str:
    # A model with more classes than labels still reports something traceable instead of failing the frame.
    return labels[class_id] if 0 <= class_id < len(labels) else f"class_{class_id}"


def softmax(x: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
    """Numerically stable softmax over the last axis."""
    z = np.asarray(x, np.float32)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return cast(NDArray[np.float32], e / e.sum(axis=-1, keepdims=True))


def classify(output: NDArray[Any], spec: Postprocess, labels: Sequence[str]) -> tuple[Classification, ...]:
    """Top-k classes of a ``[1, C]`` (or ``[C]``) score tensor at or above ``conf_threshold``, best first."""
    return classify_scored(output, spec, labels)[0]


def classify_scored(
    output: NDArray[Any], spec: Postprocess, labels: Sequence[str]
) -> tuple[tuple[Classification, ...], float]:
    """``classify`` and the best class's score (0.0 for no classes), whether or not it passed the threshold."""
    scores = np.asarray(output, np.float32).reshape(-1)
    if spec.softmax:
        scores = softmax(scores)
    k = min(spec.top_k, scores.shape[0])
    if k < scores.shape[0]:
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
    else:
        top = np.argsort(-scores, kind="stable")
    best = float(scores[top[0]]) if top.size else 0.0
    kept = tuple(
        Classification(label_for(labels, int(i)), int(i), float(scores[i]))
        for i in top
        if not scores[i] < spec.conf_threshold  # NaN scores are kept: the canary must see them
    )
    return kept, best


def xywh_to_xyxy(boxes: Boxes) -> Boxes:
    """Centre-size boxes ``[N, 4]`` → corner boxes ``[N, 4]``."""
    out = np.empty(boxes.shape, np.float32)
    half = boxes[:, 2:4] * np.float32(0.5)
    np.subtract(boxes[:, 0:2], half, out=out[:, 0:2])
    np.add(boxes[:, 0:2], half, out=out[:, 2:4])
    return out


def nms(boxes_xyxy: Boxes, scores: Scores, class_ids: Indices, iou_threshold: float, max_keep: int) -> Indices:
    """Class-wise greedy NMS with OpenCV's C++ ``NMSBoxesBatched``; kept indices, highest score first.

    Same semantics as ``greedy_nms`` (tests hold them equal) at about a tenth of the cost, which is what
    keeps post-processing small next to the model. OpenCV's ``top_k`` caps candidates *before* NMS, so the
    ``max_keep`` cap is applied to its result instead.
    """
    n = boxes_xyxy.shape[0]
    if n == 0:
        return np.zeros(0, np.intp)
    # Greedy NMS over the best-scored prefix decides that prefix exactly as over the whole list, so once
    # a prefix yields max_keep survivors the rest cannot change them: start small, grow until enough.
    prefix = min(n, max(64, 2 * max_keep))
    while True:
        idx = _best(scores, prefix)
        kept = _opencv_nms(boxes_xyxy[idx], scores[idx], class_ids[idx], iou_threshold)
        if kept.shape[0] >= max_keep or prefix == n:
            return idx[kept[:max_keep]]
        prefix = min(n, prefix * 4)


def _best(scores: Scores, k: int) -> Indices:
    """Indices of the ``k`` highest scores, best first, ties in index order (O(n), not a full sort)."""
    idx = np.arange(scores.shape[0]) if k >= scores.shape[0] else np.argpartition(-scores, k - 1)[:k]
    return idx[np.lexsort((idx, -scores[idx]))].astype(np.intp, copy=False)


def _opencv_nms(boxes_xyxy: Boxes, scores: Scores, class_ids: Indices, iou_threshold: float) -> Indices:
    xywh = np.empty(boxes_xyxy.shape, np.float64)
    xywh[:, :2] = boxes_xyxy[:, :2]
    xywh[:, 2:] = boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]
    # OpenCV's stubs declare Sequences; its bindings take numpy arrays directly (no list conversion).
    kept = cv2.dnn.NMSBoxesBatched(
        xywh,  # type: ignore[arg-type]
        scores.astype(np.float32, copy=False),  # type: ignore[arg-type]
        class_ids.astype(np.int32),  # type: ignore[arg-type]
        0.0,
        float(iou_threshold),
    )
    return np.asarray(kept, np.intp).reshape(-1)


def greedy_nms(boxes_xyxy: Boxes, scores: Scores, class_ids: Indices, iou_threshold: float, max_keep: int) -> Indices:
    """Class-wise greedy NMS in numpy (the reference ``nms`` is checked against); highest score first.

    Boxes of different classes are moved apart by a per-class offset larger than any coordinate, so one
    vectorised pass never lets a box suppress another class.
    """
    if boxes_xyxy.shape[0] == 0:
        return np.zeros(0, np.intp)
    span = float(np.abs(boxes_xyxy).max()) * 2.0 + 1.0
    shifted = boxes_xyxy.astype(np.float64) + (class_ids.astype(np.float64) * span)[:, None]
    x1, y1, x2, y2 = shifted.T
    areas = np.clip(x2 - x1, 0.0, None) * np.clip(y2 - y1, 0.0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0.0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0.0, None)
        inter = iw * ih
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.intp)


def yolo_candidates(output: NDArray[Any], spec: Postprocess) -> tuple[Boxes, Scores, Indices]:
    """Decode a YOLO head for one image into (cx,cy,w,h boxes, confidences, class ids) above threshold."""
    raw = np.asarray(output)
    if raw.ndim == 3:
        if raw.shape[0] != 1:
            raise ModelOutputError(f"{spec.kind} output must hold one image, got batch of {raw.shape[0]}")
        raw = raw[0]
    if raw.ndim != 2:
        raise ModelOutputError(f"{spec.kind} output must be [1, rows, cols], got shape {tuple(np.shape(output))}")
    if spec.kind == "yolov8":
        pred = raw.T
        if pred.shape[1] < 5:
            raise ModelOutputError(f"yolov8 output must be [1, 4+classes, anchors], got {tuple(np.shape(output))}")
        cls_scores = pred[:, 4:]
    else:
        if raw.shape[1] < 6:
            raise ModelOutputError(f"yolov5 output must be [1, anchors, 5+classes], got {tuple(np.shape(output))}")
        # Class scores are ≤ 1, so obj × cls ≥ threshold needs obj ≥ threshold: filter cheaply first.
        pred = raw[raw[:, 4] >= spec.conf_threshold]
        cls_scores = pred[:, 5:] * pred[:, 4:5]
    class_ids = cls_scores.argmax(axis=1)
    conf = cls_scores[np.arange(pred.shape[0]), class_ids]
    mask = conf >= spec.conf_threshold
    pred, conf, class_ids = pred[mask], conf[mask], class_ids[mask]
    if conf.shape[0] > MAX_NMS_CANDIDATES:
        top = np.argsort(-conf, kind="stable")[:MAX_NMS_CANDIDATES]
        pred, conf, class_ids = pred[top], conf[top], class_ids[top]
    return (
        np.ascontiguousarray(pred[:, :4], np.float32),
        conf.astype(np.float32, copy=False),
        class_ids.astype(np.intp, copy=False),
    )


def decode_detections(output: NDArray[Any], spec: Postprocess) -> tuple[Boxes, Scores, Indices]:
    """One image's YOLO output → NMS survivors as (x1,y1,x2,y2 boxes in model-input pixels, confidences,
    class ids), best first. The pipeline's accuracy gate scores these; ``detect`` maps them to the frame."""
    boxes_cxcywh, conf, class_ids = yolo_candidates(output, spec)
    boxes = xywh_to_xyxy(boxes_cxcywh)
    keep = nms(boxes, conf, class_ids, spec.iou_threshold, spec.max_detections)
    return boxes[keep], conf[keep], class_ids[keep]


def detect(
    output: NDArray[Any], spec: Postprocess, labels: Sequence[str], transform: FrameTransform
) -> tuple[Detection, ...]:
    """Detections in frame pixels for one image's YOLO output, best first."""
    boxes, conf, class_ids = decode_detections(output, spec)
    framed = transform.to_frame(boxes).tolist()
    return tuple(
        Detection(box=(b[0], b[1], b[2], b[3]), class_id=c, label=label_for(labels, c), confidence=p)
        for b, c, p in zip(framed, class_ids.tolist(), conf.tolist(), strict=True)
    )


def postprocess(
    output: NDArray[Any], spec: Postprocess, labels: Sequence[str], transform: FrameTransform
) -> tuple[Classification, ...] | tuple[Detection, ...]:
    """Dispatch on ``spec.kind``."""
    return postprocess_scored(output, spec, labels, transform)[0]


def postprocess_scored(
    output: NDArray[Any], spec: Postprocess, labels: Sequence[str], transform: FrameTransform
) -> tuple[tuple[Classification, ...] | tuple[Detection, ...], float]:
    """``postprocess`` and the frame's top confidence: the best output's, 0.0 when nothing was found; for a
    classifier, the best class's score even when it is below the threshold (see the module docstring)."""
    if spec.kind == "classification":
        return classify_scored(output, spec, labels)
    detections = detect(output, spec, labels, transform)
    return detections, max((d.confidence for d in detections), default=0.0)
