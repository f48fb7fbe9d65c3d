"""Review samples: which frames go to the human review queue, and how they are packed.

``ReviewSampler.decide(now, top_confidence)`` is the pure decision: a frame whose top confidence is below
``low_confidence_below`` is always flagged (``"low_confidence"``), any other frame with probability
``sample_rate`` (``"sampled"``); both draw on one hourly cap, ``max_per_hour`` over a sliding hour, so a
scene that suddenly confuses the model cannot flood the uplink. Randomness comes from a seeded
``random.Random``, time from ``now``: the same inputs give the same decisions.

``ReviewSampler.sample(...)`` packs a flagged frame: JPEG (``cv2.imencode``, ``jpeg_quality``), downscaled
first when ``max_side`` is set and re-encoded smaller while the JPEG is over ``MAX_REVIEW_JPEG_BYTES`` (counted
in ``shrunk``), and the results as canonical JSON (sorted keys, no spaces), into a
``ReviewSample`` proto whose ``sample_id`` is drawn from the same seeded generator.
"""

from __future__ import annotations

import dataclasses
import math
import random
import uuid
from collections import deque
from datetime import datetime, timedelta
from typing import Any, Literal

import cv2
import numpy as np

from edge_runtime.telemetry.errors import ReviewEncodeError
from edgefleet.contract.canonical import canonical_json_text
from edgefleet.contract.shown import shown
from edgefleet.contract.telemetry_bounds import MAX_REVIEW_JPEG_BYTES
from edgefleet.v1.telemetry_pb2 import ReviewSample

ReviewReason = Literal["low_confidence", "sampled"]
_HOUR = timedelta(hours=1)


def _result_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"review results: {type(obj).__name__} is not JSON-serialisable, got {shown(obj)}")


def results_json(results: Any) -> str:
    """Results as the contract's canonical JSON (ASCII-escaped, the spelling review samples have always had);
    dataclasses (``Detection``, ``Classification``) become objects, numpy scalars and arrays numbers and lists."""
    return canonical_json_text(results, ensure_ascii=True, default=_result_default)


def encode_jpeg(frame_bgr: Any, quality: int, max_side: int | None = None) -> bytes:
    """A BGR uint8 HxWx3 frame as JPEG bytes, shrunk so its longer side is at most ``max_side``, and further
    until the JPEG is at most ``MAX_REVIEW_JPEG_BYTES`` (the largest the controller accepts)."""
    return fit_jpeg(frame_bgr, quality, max_side, MAX_REVIEW_JPEG_BYTES)[0]


def fit_jpeg(frame_bgr: Any, quality: int, max_side: int | None, max_bytes: int) -> tuple[bytes, int]:
    """The frame as JPEG of at most ``max_bytes``, and how many times it was re-encoded smaller to fit: a
    JPEG over the bound is encoded again with its longer side scaled by ``0.9 * sqrt(max_bytes / size)``
    (a 1x1 frame's JPEG, ~630 bytes, ends the loop), never sent whole for the controller to refuse."""
    if not (
        isinstance(frame_bgr, np.ndarray)
        and frame_bgr.dtype == np.uint8
        and frame_bgr.ndim == 3
        and frame_bgr.shape[2] == 3
        and frame_bgr.shape[0] > 0
        and frame_bgr.shape[1] > 0
    ):
        shape = getattr(frame_bgr, "shape", None)
        dtype = getattr(frame_bgr, "dtype", type(frame_bgr).__name__)
        raise ReviewEncodeError(f"review frame must be a BGR uint8 HxWx3 array, got shape {shape} dtype {dtype}")
    side = max(frame_bgr.shape[:2]) if max_side is None else min(max_side, max(frame_bgr.shape[:2]))
    shrunk = 0
    while True:
        jpeg = _encode(frame_bgr, quality, side)
        if len(jpeg) <= max_bytes or side == 1:
            return jpeg, shrunk
        side = max(1, min(side - 1, int(side * 0.9 * math.sqrt(max_bytes / len(jpeg)))))
        shrunk += 1


def _encode(frame_bgr: Any, quality: int, max_side: int) -> bytes:
    image = frame_bgr
    if max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ReviewEncodeError(f"OpenCV could not encode a {image.shape} frame as JPEG (quality {quality})")
    return bytes(buf.tobytes())


class ReviewSampler:
    """Decides which frames to flag for review and packs them. One per running bundle."""

    def __init__(
        self,
        *,
        sample_rate: float,
        low_confidence_below: float,
        max_per_hour: int,
        jpeg_quality: int = 80,
        seed: int | None = None,
        max_side: int | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"review sampler: 'sample_rate' must be within [0, 1], got {shown(sample_rate)}")
        if not 0.0 <= low_confidence_below <= 1.0:
            raise ValueError(
                f"review sampler: 'low_confidence_below' must be within [0, 1], got {shown(low_confidence_below)}"
            )
        if max_per_hour < 0:
            raise ValueError(f"review sampler: 'max_per_hour' must be >= 0, got {shown(max_per_hour)}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"review sampler: 'jpeg_quality' must be within [1, 100], got {shown(jpeg_quality)}")
        if max_side is not None and max_side < 1:
            raise ValueError(f"review sampler: 'max_side' must be >= 1, got {shown(max_side)}")
        self.sample_rate = sample_rate
        self.low_confidence_below = low_confidence_below
        self.max_per_hour = max_per_hour
        self.jpeg_quality = jpeg_quality
        self.max_side = max_side
        self._rng = random.Random(seed)
        self._taken: deque[datetime] = deque()
        self.capped = 0
        """Frames that qualified but were refused by the hourly cap (since creation)."""
        self.shrunk = 0
        """Samples whose JPEG was over ``MAX_REVIEW_JPEG_BYTES`` and re-encoded smaller (since creation)."""

    def taken_last_hour(self, now: datetime) -> int:
        """Samples taken in the hour up to ``now``."""
        self._expire(now)
        return len(self._taken)

    def _expire(self, now: datetime) -> None:
        while self._taken and now - self._taken[0] >= _HOUR:
            self._taken.popleft()

    def decide(self, now: datetime, top_confidence: float) -> ReviewReason | None:
        """Whether this frame goes to review, and why; ``None`` when it does not."""
        if math.isnan(top_confidence):
            reason: ReviewReason | None = "low_confidence"
        elif top_confidence < self.low_confidence_below:
            reason = "low_confidence"
        # Draw only for frames that could be sampled, so a run of low-confidence frames does not shift
        # which of the later frames get sampled.
        elif self.sample_rate > 0 and self._rng.random() < self.sample_rate:
            reason = "sampled"
        else:
            reason = None
        if reason is None:
            return None
        self._expire(now)
        if len(self._taken) >= self.max_per_hour:
            self.capped += 1
            return None
        self._taken.append(now)
        return reason

    def sample(
        self,
        frame_bgr: Any,
        results: Any,
        *,
        bundle_digest: str,
        top_confidence: float,
        reason: ReviewReason,
        captured_at: datetime,
    ) -> ReviewSample:
        """Pack a flagged frame and its results into a ``ReviewSample``."""
        jpeg, shrunk = fit_jpeg(frame_bgr, self.jpeg_quality, self.max_side, MAX_REVIEW_JPEG_BYTES)
        self.shrunk += bool(shrunk)
        sample = ReviewSample(
            sample_id=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            bundle_digest=bundle_digest,
            reason=reason,
            top_confidence=0.0 if math.isnan(top_confidence) else top_confidence,
            jpeg=jpeg,
            results_json=results_json(results),
        )
        sample.captured_at.FromDatetime(captured_at)
        return sample
