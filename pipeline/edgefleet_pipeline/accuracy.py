"""The accuracy gate: how closely a lower-precision variant reproduces FP32 on a held-out image set.

FP32's own outputs are the reference ("ground truth"), so the figures measure what quantization lost, not
how good the model is — which random-weight models could not tell anyway.
- Classifiers: top-1 agreement, the share of images where the variant's arg-max class equals FP32's.
- Detectors (``yolov5``/``yolov8``): mAP@0.5 of the variant's detections against FP32's. FP32 detections
  at the bundle's ``conf_threshold`` are the ground truth; the variant's are kept down to
  ``AP_CONF_FLOOR`` so AP integrates over its whole confidence ranking, as VOC/COCO evaluation does.
  Matching is class-wise and greedy in descending confidence at IoU ≥ 0.5, each ground-truth box matched at
  most once; AP is the area under the precision envelope (VOC 2010+ all-point interpolation); mAP is the
  mean over classes that have ground truth. With no ground truth at all, mAP is 1.0 when the variant also
  detects nothing at the bundle's ``conf_threshold`` and 0.0 otherwise.
- ``loss = 1 − value``: FP32 against itself scores exactly 1.
- Evidence: a figure is only as good as what it rests on. ``reference_outputs`` runs FP32 once over the
  evaluation set (every candidate is scored against the same outputs) and counts, for detectors, the FP32
  boxes at the bundle's ``conf_threshold``; ``evidence_refusal`` refuses a figure resting on fewer than
  ``min_images`` images or (detectors) ``min_boxes`` FP32 boxes, saying what to add. A detector that finds
  nothing on the evaluation set would otherwise score a perfect 1.0 by "agreeing" on empty images.

The decode + NMS are the contract's (``edgefleet.contract.processing.postprocess``), the very code a device
runs: v8 ``[1, 4+C, A]``; v5 ``[1, A, 5+C]`` with confidence = objectness × class score; cx,cy,w,h →
x1,y1,x2,y2; class-wise greedy NMS; capped at ``max_detections``. Coordinates stay in model-input pixels:
both variants see the same input, so no letterbox undo is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from edgefleet.contract.bundle_sections import Postprocess, PostprocessKind, Preprocess
from edgefleet.contract.processing.postprocess import decode_detections
from edgefleet.contract.processing.preprocess import Normaliser
from edgefleet_pipeline.calibration import ImageSet
from edgefleet_pipeline.errors import AccuracyLossError, PipelineError

IOU_MATCH = 0.5
AP_CONF_FLOOR = 0.001


@dataclass(frozen=True)
class AccuracyReport:
    """``metric`` (``top1_agreement`` or ``map50``) of ``precision`` against FP32 over ``samples`` images.

    ``precision`` names the candidate scored (``int8``, ``int8-u8s8``, ``fp16``); ``reference_boxes`` is, for
    detectors, how many FP32 boxes the mAP rests on (``None`` for classifiers).
    """

    metric: str
    value: float
    loss: float
    samples: int
    precision: str = "int8"
    reference_boxes: int | None = None

    def to_metrics(self) -> dict[str, object]:
        """Figures for a precision variant's ``metrics`` in bundle.json."""
        metrics: dict[str, object] = {
            "accuracy_metric": self.metric,
            "accuracy_value": round(self.value, 6),
            "accuracy_loss": round(self.loss, 6),
            "accuracy_samples": self.samples,
            "accuracy_reference": "fp32",
        }
        if self.reference_boxes is not None:
            metrics["accuracy_reference_boxes"] = self.reference_boxes
        return metrics

    def describe(self) -> str:
        """``mAP@0.5 0.973 over 24 images, 61 FP32 boxes`` (the figure and what it rests on)."""
        rests_on = f"{self.samples} images"
        if self.reference_boxes is not None:
            rests_on += f", {self.reference_boxes} FP32 boxes"
        return f"{_METRIC_TEXT.get(self.metric, self.metric)} {self.value:.3f} over {rests_on}"


_METRIC_TEXT = {"top1_agreement": "top-1 agreement", "map50": "mAP@0.5"}


LOSS_ADVICE = (
    "add calibration images from the target environment, try --calibration-method entropy, percentile or "
    "best, or build with --precision fp32"
)


def loss_refusal(report: AccuracyReport, max_loss: float) -> str | None:
    """Why ``report`` fails the bound ``max_loss`` (a fraction, 0.01 = 1%), or ``None`` when it passes."""
    if report.loss <= max_loss + 1e-12:
        return None
    metric = _METRIC_TEXT.get(report.metric, report.metric)
    rests_on = f"{report.samples} images" + (
        f", {report.reference_boxes} FP32 boxes" if report.reference_boxes is not None else ""
    )
    return (
        f"{report.precision.upper()} {metric} {report.value:.3f} is a loss of {report.loss:.1%} against "
        f"FP32 ({rests_on}), above --max-accuracy-loss {max_loss:.1%}"
    )


def check_loss(report: AccuracyReport, max_loss: float) -> None:
    """Raise ``AccuracyLossError`` when ``report.loss`` exceeds ``max_loss`` (a fraction, 0.01 = 1%)."""
    reason = loss_refusal(report, max_loss)
    if reason is not None:
        raise AccuracyLossError(f"{reason}; {LOSS_ADVICE}", report=report, max_loss=max_loss)


# --------------------------------------------------------------------------------------- classifiers


def top1_agreement(reference: Sequence[NDArray[Any]], candidate: Sequence[NDArray[Any]]) -> float:
    """Share of samples whose arg-max over the last axis agrees (each item is one sample's scores)."""
    if len(reference) != len(candidate) or not reference:
        raise PipelineError(
            f"top-1 agreement needs equal, non-empty sample lists, got {len(reference)} and {len(candidate)}"
        )
    same = sum(int(np.argmax(np.ravel(r)) == np.argmax(np.ravel(c))) for r, c in zip(reference, candidate, strict=True))
    return same / len(reference)


# ----------------------------------------------------------------------------------------- detectors


@dataclass(frozen=True)
class Detections:
    """Detections of one image: ``boxes`` [N,4] x1,y1,x2,y2, ``scores`` [N], ``classes`` [N]."""

    boxes: NDArray[np.float32]
    scores: NDArray[np.float32]
    classes: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.scores)


def box_iou(box: NDArray[np.float32], boxes: NDArray[np.float32]) -> NDArray[np.float32]:
    """IoU of one x1,y1,x2,y2 box against [N,4] boxes (0 where the union is empty)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou.astype(np.float32)


def decode_yolo(
    output: NDArray[Any],
    kind: str,
    *,
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> Detections:
    """Decode one image's raw YOLO output (batch 1) into class-wise NMS'd detections, as a device would."""
    if kind not in ("yolov5", "yolov8"):
        raise PipelineError(f"cannot decode detections for postprocess kind {kind!r}; use yolov5 or yolov8")
    post = Postprocess(
        kind=cast(PostprocessKind, kind),
        conf_threshold=conf_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
    )
    return _decode(output, post)


def _decode(output: NDArray[Any], post: Postprocess) -> Detections:
    """``decode_yolo`` for a section already validated (a bundle's own ``postprocess``)."""
    boxes, scores, classes = decode_detections(output, post)
    return Detections(boxes=boxes.reshape(-1, 4), scores=scores, classes=classes.astype(np.int64))


def average_precision(recall: NDArray[np.float64], precision: NDArray[np.float64]) -> float:
    """VOC all-point AP: area under the monotone precision envelope over recall."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def mean_average_precision(
    ground_truth: Sequence[Detections],
    predictions: Sequence[Detections],
    *,
    iou_threshold: float = IOU_MATCH,
    empty_conf_threshold: float = 0.0,
) -> float:
    """mAP@``iou_threshold`` of ``predictions`` against ``ground_truth`` (one ``Detections`` per image).

    Without any ground truth, 1.0 if no prediction scores ``>= empty_conf_threshold``, else 0.0.
    """
    if len(ground_truth) != len(predictions):
        raise PipelineError(f"mAP needs one prediction set per image, got {len(ground_truth)} and {len(predictions)}")
    gt_classes = sorted({int(c) for d in ground_truth for c in d.classes})
    if not gt_classes:
        return 1.0 if all(not np.any(p.scores >= empty_conf_threshold) for p in predictions) else 0.0
    aps = []
    for cls in gt_classes:
        gt_boxes = [d.boxes[d.classes == cls] for d in ground_truth]
        n_gt = sum(len(b) for b in gt_boxes)
        cands = [
            (float(score), image, box)
            for image, pred in enumerate(predictions)
            for score, box in zip(pred.scores[pred.classes == cls], pred.boxes[pred.classes == cls], strict=True)
        ]
        cands.sort(key=lambda c: -c[0])
        matched = [np.zeros(len(b), bool) for b in gt_boxes]
        tp = np.zeros(len(cands))
        for k, (_, image, box) in enumerate(cands):
            candidates = gt_boxes[image]
            if not len(candidates):
                continue
            ious = box_iou(box, candidates)
            ious[matched[image]] = -1.0
            best = int(np.argmax(ious))
            if ious[best] >= iou_threshold:
                matched[image][best] = True
                tp[k] = 1.0
        cum_tp = np.cumsum(tp)
        recall = cum_tp / n_gt
        precision = cum_tp / np.arange(1, len(cands) + 1)
        aps.append(average_precision(recall, precision) if cands else 0.0)
    return float(np.mean(aps))


# ----------------------------------------------------------------------------------------- the shell


def _session(path: Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors are untyped
        raise PipelineError(f"{path}: cannot be loaded by onnxruntime: {exc}") from None


@dataclass(frozen=True)
class ReferenceOutputs:
    """FP32's outputs on an evaluation set, computed once and scored against by every candidate.

    ``scores``: classifiers' raw outputs per image; ``detections``: detectors' decoded FP32 boxes per image at
    the bundle's ``conf_threshold`` (the ground truth); ``boxes``: their total (``None`` for classifiers).
    """

    images: ImageSet
    post: Postprocess
    scores: tuple[NDArray[Any], ...] = ()
    detections: tuple[Detections, ...] = ()

    @property
    def samples(self) -> int:
        return self.images.count

    @property
    def boxes(self) -> int | None:
        if self.post.kind == "classification":
            return None
        return sum(len(d) for d in self.detections)


def _outputs(model: Path, images: ImageSet, pre: Preprocess) -> list[NDArray[Any]]:
    session = _session(model)
    input_name = session.get_inputs()[0].name
    normalise = Normaliser(pre)
    outputs = []
    for image in images.images():
        try:
            outputs.append(np.asarray(session.run(None, {input_name: normalise(image)[0]})[0]))
        except Exception as exc:  # onnxruntime's errors are untyped
            raise PipelineError(f"{model}: onnxruntime failed on an evaluation image: {exc}") from None
    return outputs


def reference_outputs(
    reference_model: Path | str, images: ImageSet, pre: Preprocess, post: Postprocess
) -> ReferenceOutputs:
    """Run the FP32 model over ``images`` (CPU) once: the reference every candidate is scored against."""
    outputs = _outputs(Path(reference_model), images, pre)
    if post.kind == "classification":
        return ReferenceOutputs(images, post, scores=tuple(outputs))
    return ReferenceOutputs(images, post, detections=tuple(_decode(o, post) for o in outputs))


def evidence_refusal(reference: ReferenceOutputs, *, min_images: int, min_boxes: int) -> str | None:
    """Why an agreement figure on ``reference`` would rest on too little, or ``None`` when it is enough."""
    if reference.samples < min_images:
        return (
            f"the agreement figure would rest on {reference.samples} evaluation images, fewer than "
            f"--min-eval-images {min_images}; add {min_images - reference.samples} or more held-out images "
            "from the target environment to --eval (or lower --min-eval-images)"
        )
    boxes = reference.boxes
    if boxes is not None and boxes < min_boxes:
        return (
            f"the mAP@0.5 figure would rest on {boxes} FP32 boxes (conf >= {reference.post.conf_threshold:g}) "
            f"over {reference.samples} evaluation images, fewer than --min-eval-boxes {min_boxes}; add "
            "evaluation images in which the FP32 model detects objects (or lower --min-eval-boxes)"
        )
    return None


def score_candidate(
    reference: ReferenceOutputs,
    candidate_model: Path | str,
    pre: Preprocess,
    *,
    precision: str = "int8",
) -> AccuracyReport:
    """Run ``candidate_model`` over the reference's images (CPU) and score it against FP32's outputs."""
    outputs = _outputs(Path(candidate_model), reference.images, pre)
    post = reference.post
    if post.kind == "classification":
        value = top1_agreement(list(reference.scores), outputs)
        metric = "top1_agreement"
    else:
        floor = replace(post, conf_threshold=min(AP_CONF_FLOOR, post.conf_threshold))
        preds = [_decode(o, floor) for o in outputs]
        value = mean_average_precision(list(reference.detections), preds, empty_conf_threshold=post.conf_threshold)
        metric = "map50"
    return AccuracyReport(
        metric=metric,
        value=value,
        loss=1.0 - value,
        samples=len(outputs),
        precision=precision,
        reference_boxes=reference.boxes,
    )


def evaluate_variant(
    reference_model: Path | str,
    candidate_model: Path | str,
    images: ImageSet,
    pre: Preprocess,
    post: Postprocess,
    *,
    precision: str = "int8",
) -> AccuracyReport:
    """Run both models on every image of ``images`` (CPU) and score the candidate against FP32."""
    reference = reference_outputs(reference_model, images, pre, post)
    return score_candidate(reference, candidate_model, pre, precision=precision)
