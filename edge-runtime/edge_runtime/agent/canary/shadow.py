"""What the frame loop records for a canary and a watch window: ``ShadowRun``, ``WatchRun`` and their sides.

The shadow canary runs the staged candidate on the SAME live frames as the committed engine, inside the
frame loop: the served result is always the committed engine's, the candidate's is only recorded. Which of
the two runs first alternates every frame, so thermal drift and cache warmth over a run fall equally on
both sides, and the second runs straight after the first, before the frame's bookkeeping (counters,
telemetry, frame log), so neither side starts later after the frame's wake-up than the other does in its
turn: on a loaded host the later an inference starts, the likelier it is preempted. The served result is
therefore handed on one shadow inference later. Row i of both sides describes frame i.

A first-ever bundle has nothing committed to compare against: the device serves nothing yet, so the
candidate runs alone on the live frames and its samples stand for both sides. The verdict then compares
the candidate with itself — regression, drift and agreement are trivially within bounds — so only the
latency SLA and errors/NaNs can fail it. Its wire verdict has an empty ``baseline_digest``.

The watch window is paired the same way, the roles reversed: the trial engine serves every frame, and the
previous engine — kept loaded in the slot after the swap — runs in shadow on a SAMPLE of the same frames,
alternating which of the two runs first. Sampling keeps the frame path's budget (``ShadowRateLimit``): at
most one shadow inference per ``canary.watch_shadow_every_ms`` (default 100 ms), and never more than
``canary.watch_shadow_max_share`` (default 0.25) of the frame loop's wall time, so on a saturated loop a
frame waits on average at most that share of a frame period for the shadow. A cheap model on a fast camera
is capped by the interval (running the old model on every frame would double the compute and heat the
device the window is judging); an expensive one by the share. The previous engine runs only on sampled
frames, so its caches are colder than the serving engine's: that biases the comparison towards keeping
the candidate, never towards a false rollback. Engines are compared by identity, not by bundle digest,
so the previous "engine" may be the same bundle under the previous config (a config candidate).

Recording is lock-free on the frame path: each side is appended to only by the frame thread, and the
frame count is published after both sides of a frame are in, so a reader on another thread slices every
list to the published count and always sees whole frames.

``thermal_state`` reads the telemetry sensors (``edge_runtime.telemetry.sensors``): a device is
throttling when a CPU or GPU clock runs below ``THROTTLED_CLOCK_FRACTION`` of its maximum while the
matching temperature is at or above ``THROTTLE_TEMP_C``. A low clock alone is not throttling (idle CPUs
and GPUs scale their clocks down), and a device without clock or temperature sensors reads as not
throttling. Whether throttling is the bundle's fault is the paired verdict's call, not the sensors'.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import structlog

from edge_runtime.canary.policy import CanaryPolicy
from edge_runtime.canary.samples import CanarySamples
from edge_runtime.canary.samples import Detection as CanaryDetection
from edge_runtime.inference import FrameResult, InferenceEngine
from edge_runtime.sources import Frame
from edge_runtime.telemetry.sensors import SensorReader, SensorSnapshot
from edgefleet.contract.processing.postprocess import Classification
from edgefleet.contract.shown import shown

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

    ``baseline`` is ``None`` for a first-ever bundle (the candidate runs alone; see the module docstring).
    The frame loop calls ``candidate_goes_first``, ``run_candidate`` and ``record`` for each frame served
    by the ``baseline`` engine (that object: a config candidate shares its bundle digest), or
    ``record_alone`` when nothing serves.
    """

    def __init__(
        self,
        candidate: InferenceEngine,
        baseline: InferenceEngine | None,
        *,
        started_at: float,
    ) -> None:
        self.candidate = candidate
        self.baseline = baseline
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
        if self.baseline is None:
            return candidate, candidate
        return candidate, self.baseline_side.samples(frames)


class ShadowRateLimit:
    """Which frames of a watch window also run the previous engine (frame thread only; times come in).

    A shadow inference is admitted when ``every_s`` has passed since the previous one started AND the
    previous one's cost, divided by ``max_share``, has passed: after a shadow that took ``d`` seconds the
    next waits ``max(every_s, d / max_share)``. Between two admissions the shadow therefore used at most
    ``max_share`` of the wall time, whatever the engines cost and however loaded the host is (a slower
    shadow spaces the next one out).
    """

    def __init__(self, every_s: float, max_share: float) -> None:
        if not (math.isfinite(every_s) and every_s >= 0.0):
            raise ValueError(f"shadow rate limit: every_s must be a finite number >= 0, got {shown(every_s)}")
        if not (0.0 < max_share <= 1.0):
            raise ValueError(f"shadow rate limit: max_share must be in (0, 1], got {shown(max_share)}")
        self.every_s = every_s
        self.max_share = max_share
        self._next_at = -math.inf

    @staticmethod
    def from_policy(policy: CanaryPolicy) -> ShadowRateLimit:
        """``canary.watch_shadow_every_ms`` and ``canary.watch_shadow_max_share``."""
        return ShadowRateLimit(policy.watch_shadow_every_ms / 1000.0, policy.watch_shadow_max_share)

    def admit(self, now: float) -> bool:
        """Whether a shadow inference may start at ``now``."""
        return now >= self._next_at

    def spent(self, started: float, ended: float) -> None:
        """A shadow inference ran from ``started`` to ``ended``; space the next one out accordingly."""
        cost = max(ended - started, 0.0)
        self._next_at = started + max(self.every_s, cost / self.max_share)


class WatchRun:
    """The trial engine's watch window: every served frame, and the sampled frames paired with ``reference``.

    ``reference`` is the engine the trial replaced (the slot's previous engine), or ``None`` on a first
    install. The frame loop calls ``pair_now`` once per frame the ``trial`` engine serves; when it says yes,
    ``run_reference`` runs the reference on that frame (before the served inference when
    ``reference_goes_first``, after it otherwise), and ``record`` takes both outcomes.
    """

    def __init__(
        self,
        trial: InferenceEngine,
        reference: InferenceEngine | None,
        *,
        started_at: float,
        limit: ShadowRateLimit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trial = trial
        self.reference = reference if reference is not trial else None
        self.started_at = started_at
        self._limit = limit
        self._clock = clock
        kind: OutputKind | None = output_kind(trial)
        self.side = SideRecorder(kind)
        if self.reference is not None and output_kind(self.reference) != kind:
            kind = None  # a classifier replaced by a detector: agreement is not measured
        self.paired_trial = SideRecorder(kind)
        self.paired_reference = SideRecorder(kind)
        self.frames = 0
        self.pairs = 0

    @property
    def digest(self) -> str:
        return self.trial.bundle_digest

    @property
    def reference_digest(self) -> str | None:
        return self.reference.bundle_digest if self.reference is not None else None

    def pair_now(self) -> bool:
        """Whether the frame about to be served should also run the reference (rate limited)."""
        return self.reference is not None and self._limit.admit(self._clock())

    def reference_goes_first(self) -> bool:
        return self.pairs % 2 == 1

    def run_reference(self, frame: Frame) -> FrameResult | Exception:
        assert self.reference is not None, "run_reference without a reference engine"
        started = self._clock()
        try:
            return self.reference.infer(frame.image_bgr, frame.frame_id)
        except Exception as exc:  # the old engine failing is a sample, never the frame loop's problem
            return exc
        finally:
            self._limit.spent(started, self._clock())

    def record(self, served: FrameResult | Exception, reference: FrameResult | Exception | None = None) -> None:
        """One served frame, and the reference's outcome on the same frame when it was paired."""
        self.side.add(served)
        self.frames += 1
        if reference is not None:
            self.paired_trial.add(served)
            self.paired_reference.add(reference)
            self.pairs += 1

    def samples(self) -> CanarySamples:
        """Every frame the trial engine served so far."""
        return self.side.samples(self.frames)

    def paired_samples(self) -> tuple[CanarySamples, CanarySamples] | None:
        """(trial, reference) over the paired frames so far; ``None`` without a reference (first install)."""
        if self.reference is None:
            return None
        pairs = self.pairs
        return self.paired_trial.samples(pairs), self.paired_reference.samples(pairs)


@dataclass(frozen=True)
class ThermalState:
    """One judgement of the sensors: throttling or not, the numbers behind it, and a line for humans."""

    throttling: bool
    numbers: Mapping[str, float] = field(default_factory=dict)
    summary: str = "no clock and temperature sensors"


NOT_THROTTLING = ThermalState(False)


def thermal_state(snapshot: SensorSnapshot) -> ThermalState:
    """Whether a CPU or GPU clock is held low while hot (see the module docstring), with its numbers."""
    seen: list[str] = []
    numbers: dict[str, float] = {}
    for unit, clock_name, temp_name in (("cpu", "cpu_clock", "cpu_temp"), ("gpu", "gpu_clock", "gpu_temp")):
        clock = snapshot.reading(clock_name)
        temp = snapshot.reading(temp_name)
        if clock is None or temp is None or clock.missing or temp.missing or clock.max_value <= 0:
            continue
        ratio = clock.value / clock.max_value
        numbers[f"{unit}_clock_ratio"] = round(ratio, 4)
        numbers[f"{unit}_temp_c"] = temp.value
        line = f"{unit} clock {ratio:.0%} of max at {temp.value:.1f} °C"
        if ratio < THROTTLED_CLOCK_FRACTION and temp.value >= THROTTLE_TEMP_C:
            return ThermalState(True, numbers, f"throttling: {line}")
        seen.append(line)
    if not seen:
        return NOT_THROTTLING
    return ThermalState(False, numbers, "; ".join(seen))


def thermal_throttling(snapshot: SensorSnapshot) -> bool:
    """Whether a CPU or GPU clock is held low while hot (see the module docstring)."""
    return thermal_state(snapshot).throttling


class ThermalProbe:
    """Reads the sensors when asked; a failing read counts as not throttling (and is logged)."""

    def __init__(self, reader: SensorReader) -> None:
        self._reader = reader

    def read(self) -> ThermalState:
        try:
            return thermal_state(self._reader.read())
        except Exception as exc:  # a sensor problem must never decide a watch window
            log.warning("canary.sensors_unreadable", error=str(exc), error_type=type(exc).__name__)
            return ThermalState(False, {}, f"sensors unreadable: {exc}")

    def throttling(self) -> bool:
        return self.read().throttling
