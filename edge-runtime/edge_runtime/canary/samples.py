"""What one side of a canary saw, frame by frame: ``CanarySamples`` and the ``Detection`` it may carry.

The candidate bundle runs in shadow on the same live frames as the current one, so the shell records one
``CanarySamples`` per side with row i of both describing frame i. Per frame: end-to-end latency (pre +
model + post, ms), top confidence, the top-1 label (classifiers) or the detections (detectors), an error
flag (the session raised) and a NaN flag (the outputs held NaN/inf). Arrays are copied and made read-only,
so a verdict can never be changed after the fact by the shell reusing its buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.canary.errors import SamplesError
from edgefleet.contract.shown import shown

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One detection: class id, box (x1, y1, x2, y2) in pixels, confidence."""

    class_id: int
    box: Box
    conf: float


FrameDetections = tuple[Detection, ...]


def _frozen(values: npt.ArrayLike, dtype: type, name: str) -> npt.NDArray[Any]:
    try:
        array: npt.NDArray[Any] = np.array(values, dtype=dtype, copy=True)
    except (TypeError, ValueError) as exc:
        raise SamplesError(f"canary samples: field {shown(name)} must be numbers, got {shown(values)}: {exc}") from None
    if array.ndim != 1:
        raise SamplesError(
            f"canary samples: field {shown(name)} must be one value per frame (1-D), got shape {array.shape}"
        )
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class CanarySamples:
    """Per-frame observations of one side of a canary (or of the trial bundle in a watch window).

    Build with ``CanarySamples.build(...)``, which validates and normalises. Invariants: every array has
    ``frames`` rows; latencies are finite and ≥ 0 except on error frames (which have no meaningful
    latency); exactly one of ``labels`` / ``detections`` is set, or neither when the bundle's outputs
    are not comparable (agreement is then not measured).
    """

    latency_ms: npt.NDArray[np.float64]
    confidence: npt.NDArray[np.float64]
    errors: npt.NDArray[np.bool_]
    nans: npt.NDArray[np.bool_]
    labels: npt.NDArray[np.int64] | None = None
    detections: tuple[FrameDetections, ...] | None = field(default=None)

    @staticmethod
    def build(
        *,
        latency_ms: npt.ArrayLike,
        confidence: npt.ArrayLike,
        errors: npt.ArrayLike | None = None,
        nans: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        detections: Sequence[Sequence[Detection]] | None = None,
    ) -> CanarySamples:
        """Validate and freeze one side's samples; ``errors`` / ``nans`` default to all-False."""
        latency = _frozen(latency_ms, np.float64, "latency_ms")
        frames = latency.size
        conf = _frozen(confidence, np.float64, "confidence")
        err = _frozen(np.zeros(frames, dtype=bool) if errors is None else errors, np.bool_, "errors")
        nan = _frozen(np.zeros(frames, dtype=bool) if nans is None else nans, np.bool_, "nans")
        lab = None if labels is None else _frozen(labels, np.int64, "labels")
        dets = None if detections is None else tuple(tuple(frame) for frame in detections)
        if labels is not None and detections is not None:
            raise SamplesError("canary samples: give either 'labels' (classifier) or 'detections' (detector), not both")
        lengths = {"latency_ms": frames, "confidence": conf.size, "errors": err.size, "nans": nan.size}
        if lab is not None:
            lengths["labels"] = lab.size
        if dets is not None:
            lengths["detections"] = len(dets)
        if len(set(lengths.values())) != 1:
            counts = ", ".join(f"{k}={v}" for k, v in lengths.items())
            raise SamplesError(f"canary samples: every field needs one entry per frame, got {counts}")
        ok = ~err.astype(bool)
        bad = latency[ok & ~(np.isfinite(latency) & (latency >= 0.0))]
        if bad.size:
            raise SamplesError(
                f"canary samples: latency_ms must be finite and >= 0 on frames without an error, "
                f"got {shown(float(bad[0]))}; mark the frame as an error instead"
            )
        return CanarySamples(
            latency_ms=latency,
            confidence=conf,
            errors=err,
            nans=nan,
            labels=lab,
            detections=dets,
        )

    @property
    def frames(self) -> int:
        return int(self.latency_ms.size)

    @property
    def error_count(self) -> int:
        return int(np.count_nonzero(self.errors))

    @property
    def bad_output(self) -> npt.NDArray[np.bool_]:
        """Frames whose outputs were NaN/inf: flagged by the engine, or a non-finite top confidence."""
        flagged: npt.NDArray[np.bool_] = (self.nans | ~np.isfinite(self.confidence)) & ~self.errors
        return flagged

    @property
    def nan_count(self) -> int:
        return int(np.count_nonzero(self.bad_output))

    @property
    def valid(self) -> npt.NDArray[np.bool_]:
        """Frames usable for statistics: no error and finite outputs."""
        mask: npt.NDArray[np.bool_] = ~self.errors & ~self.bad_output
        return mask
