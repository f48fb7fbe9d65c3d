"""Output agreement between the candidate and the baseline on the same frames.

Classifiers: the share of frames whose top-1 labels are equal. Detectors: per frame, the share of the
baseline's detections matched by a same-class candidate detection with IoU ≥ ``iou_match`` (greedy, the
baseline's most confident detection first, each candidate detection used once), averaged over frames.
A frame where neither side detects anything agrees (1.0); a frame where only the candidate detects
something disagrees (0.0): there is no baseline detection to match, but the candidate invented objects,
which is exactly the change agreement exists to catch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edge_runtime.canary.samples import Box, Detection


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two x1y1x2y2 boxes; 0 for degenerate boxes."""
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2, iy2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, ix2 - ix1) * max(0.0, iy2 - iy1)
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0.0 else 0.0


def frame_detection_agreement(candidate: Sequence[Detection], baseline: Sequence[Detection], iou_match: float) -> float:
    """Share of ``baseline`` detections matched by the candidate in one frame (see module docstring)."""
    if not baseline:
        return 1.0 if not candidate else 0.0
    unused = list(candidate)
    matched = 0
    for base in sorted(baseline, key=lambda d: -d.conf):
        best_index, best_iou = -1, iou_match
        for index, cand in enumerate(unused):
            if cand.class_id != base.class_id:
                continue
            overlap = iou(cand.box, base.box)
            if overlap >= best_iou:
                best_index, best_iou = index, overlap
        if best_index >= 0:
            matched += 1
            del unused[best_index]
    return matched / len(baseline)


def label_agreement(candidate: npt.NDArray[np.int64], baseline: npt.NDArray[np.int64]) -> float:
    """Share of frames with equal top-1 labels; 1.0 for no frames (nothing disagreed)."""
    if candidate.size == 0:
        return 1.0
    return float(np.mean(candidate == baseline))


def detection_agreement(
    candidate: Sequence[Sequence[Detection]], baseline: Sequence[Sequence[Detection]], iou_match: float
) -> float:
    """Mean per-frame detection agreement; 1.0 for no frames."""
    if not baseline:
        return 1.0
    scores = [frame_detection_agreement(c, b, iou_match) for c, b in zip(candidate, baseline, strict=True)]
    return float(np.mean(scores))
