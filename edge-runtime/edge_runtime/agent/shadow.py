"""What the frame loop records for a canary and a watch window: ``ShadowRun``, ``WatchRun`` and their sides.

The shadow canary runs the staged candidate on the SAME live frames as the committed engine, inside the
frame loop: the served result is always the committed engine's, the candidate's is only recorded. Which of
the two runs first alternates every frame, so thermal drift and cache warmth over a run fall equally on
both sides (a frame where the candidate goes first is served one candidate-inference later; a frame
where it goes second is served before the candidate runs). Row i of both sides describes frame i.

A first-ever bundle has nothing committed to compare against: the device serves nothing yet, so the
candidate runs alone on the live frames and its samples stand for both sides. The verdict then compares
the candidate with itself — regression, drift and agreement are trivially within bounds — so only the
latency SLA and errors/NaNs can fail it. Its wire verdict has an empty ``baseline_digest``.

Recording is lock-free on the frame path: each side is appended to only by the frame thread, and the
frame count is published after both sides of a frame are in, so a reader on another thread slices every
list to the published count and always sees whole frames.

``thermal_throttling`` reads the telemetry sensors (``edge_runtime.telemetry.sensors``): a device is
throttling when a CPU or GPU clock runs below ``THROTTLED_CLOCK_FRACTION`` of its maximum while the
matching temperature is at or above ``THROTTLE_TEMP_C``. A low clock alone is not throttling (idle CPUs
and GPUs scale their clocks down), and a device without clock or temperature sensors reads as not
throttling.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import structlog

from edge_runtime.canary import CanarySamples
from edge_runtime.canary import Detection as CanaryDetection
from edge_runtime.inference import FrameResult, InferenceEngine
from edge_runtime.inference.postprocess import Classification
from edge_runtime.sources import Frame
from edge_runtime.telemetry.sensors import SensorReader, SensorSnapshot

log = structlog.get_logger(__name__)

OutputKind = Literal["labels", "detections"]
THROTTLED_CLOCK_FRACTION = 0.8
THROTTLE_TEMP_C = 80.0


def output_kind(engine: InferenceEngine) -> OutputKind:
    return "labels" if engine.postprocess_spec.kind == "classification" else "detections"


class SideRecorder:
    """Per-frame samples of one side. Appended to by the frame thread only; ``samples(n)`` from anywhere."""

    def __init__(self, kind: OutputKind | None) -> None:
        self.kind = kind
        self._latency: list[float] = []
        self._confidence: list[float] = []
        self._errors: list[bool] = []
        self._nans: list[bool] = []
        self._labels: list[int] = []
        self._detections: list[tuple[CanaryDetection, ...]] = []
        self.last_error: str | None = None

    def add(self, outcome: FrameResult | BaseException) -> None:
        detections: tuple[CanaryDetection, ...] = ()
        if isinstance(outcome, BaseException):
            self.last_error = f"{type(outcome).__name__}: {outcome}"
            latency, confidence, error, nan = math.nan, math.nan, True, False
            label = -1
        else:
            latency = outcome.timings.total_ms
            confidence = outcome.top_confidence
            error = False
            nan = not math.isfinite(confidence) or any(not math.isfinite(o.confidence) for o in outcome.outputs)
            label = next((o.class_id for o in outcome.outputs if isinstance(o, Classification)), -1)
            detections = tuple(
                CanaryDetection(o.class_id, o.box, o.confidence)
                for o in outcome.outputs
                if not isinstance(o, Classification)
            )
            nan = nan or any(not math.isfinite(v) for d in detections for v in d.box)
        # Appends first, the frame becomes visible only when the caller publishes its count.
        if self.kind == "labels":
            self._labels.append(label)
        elif self.kind == "detections":
            self._detections.append(detections)
        self._errors.append(error)
        self._nans.append(nan)
        self._confidence.append(confidence)
        self._latency.append(latency)

    def samples(self, frames: int) -> CanarySamples:
        """The first ``frames`` rows as validated, frozen ``CanarySamples``."""
        return CanarySamples.build(
            latency_ms=np.array(self._latency[:frames], dtype=np.float64),
            confidence=np.array(self._confidence[:frames], dtype=np.float64),
            errors=np.array(self._errors[:frames], dtype=bool),
            nans=np.array(self._nans[:frames], dtype=bool),
            labels=np.array(self._labels[:frames], dtype=np.int64) if self.kind == "labels" else None,
            detections=self._detections[:frames] if self.kind == "detections" else None,
        )


class ShadowRun:
    """One canary run of ``candidate`` against the engine serving bundle ``baseline_digest``.

    ``baseline_digest`` is ``None`` for a first-ever bundle (the candidate runs alone; see the module
    docstring). The frame loop calls ``candidate_goes_first``, ``run_candidate`` and ``record`` for each
    frame served by the baseline, or ``record_alone`` when nothing serves.
    """

    def __init__(
        self,
        candidate: InferenceEngine,
        baseline: InferenceEngine | None,
        *,
        started_at: float,
    ) -> None:
        self.candidate = candidate
        self.baseline_digest = baseline.bundle_digest if baseline is not None else None
        kind: OutputKind | None = output_kind(candidate)
        if baseline is not None and output_kind(baseline) != kind:
            # A classifier replaced by a detector (or back): outputs are not comparable, agreement unmeasured.
            kind = None
        self.started_at = started_at
        self.candidate_side = SideRecorder(kind)
        self.baseline_side = SideRecorder(kind)
        self.frames = 0

    @property
    def candidate_digest(self) -> str:
        return self.candidate.bundle_digest

    def candidate_goes_first(self) -> bool:
        return self.frames % 2 == 1

    def run_candidate(self, frame: Frame) -> FrameResult | Exception:
        try:
            return self.candidate.infer(frame.image_bgr, frame.frame_id)
        except Exception as exc:  # the candidate's failure is a sample, never the frame loop's problem
            return exc

    def record(self, served: FrameResult | Exception, candidate: FrameResult | Exception) -> None:
        self.baseline_side.add(served)
        self.candidate_side.add(candidate)
        self.frames += 1

    def record_alone(self, frame: Frame) -> None:
        self.candidate_side.add(self.run_candidate(frame))
        self.frames += 1

    def samples(self) -> tuple[CanarySamples, CanarySamples]:
        """(candidate, baseline) over the frames recorded so far; the candidate twice for a first-ever bundle."""
        frames = self.frames
        candidate = self.candidate_side.samples(frames)
        if self.baseline_digest is None:
            return candidate, candidate
        return candidate, self.baseline_side.samples(frames)


class WatchRun:
    """The trial bundle's served frames during its watch window (recorded only while it serves)."""

    def __init__(self, digest: str, kind: OutputKind | None, *, started_at: float) -> None:
        self.digest = digest
        self.started_at = started_at
        self.side = SideRecorder(kind)
        self.frames = 0

    def record(self, served: FrameResult | Exception) -> None:
        self.side.add(served)
        self.frames += 1

    def samples(self) -> CanarySamples:
        return self.side.samples(self.frames)


def thermal_throttling(snapshot: SensorSnapshot) -> bool:
    """Whether a CPU or GPU clock is held low while hot (see the module docstring)."""
    for clock_name, temp_name in (("cpu_clock", "cpu_temp"), ("gpu_clock", "gpu_temp")):
        clock = snapshot.reading(clock_name)
        temp = snapshot.reading(temp_name)
        if clock is None or temp is None or clock.missing or temp.missing or clock.max_value <= 0:
            continue
        if clock.value < THROTTLED_CLOCK_FRACTION * clock.max_value and temp.value >= THROTTLE_TEMP_C:
            return True
    return False


class ThermalProbe:
    """Reads the sensors when asked; a failing read counts as not throttling (and is logged)."""

    def __init__(self, reader: SensorReader) -> None:
        self._reader = reader

    def throttling(self) -> bool:
        try:
            return thermal_throttling(self._reader.read())
        except Exception as exc:  # a sensor problem must never decide a watch window
            log.warning("canary.sensors_unreadable", error=str(exc), error_type=type(exc).__name__)
            return False
