"""Per-window inference metrics: latency sketches, confidence histogram, throughput and errors.

``WindowAggregator`` is fed once per frame and closed once per window (default 10 s) into a
``MetricWindow`` proto. Pure: it never reads the clock (``started_at`` and ``now`` come in) and does no
I/O; sensor readings, free memory/disk and drop counts are gathered by the shell and handed to ``close``.

Decisions:
- Latencies go into DDSketches (relative accuracy 1 %, ``edgefleet.contract.sketch``) so the controller
  can merge windows and devices and still read P50/P95/P99 within 1 %.
- The confidence histogram has ``conf_bins`` equal-width bins over [0, 1]; 1.0 falls in the last bin.
  Histograms of the same width merge by adding counts.
- A frame that failed (``error=True``) counts in ``frames`` and ``errors`` but adds no latency,
  confidence or detections: its numbers describe a frame that produced no answer.
- ``window_s`` on the wire is the measured span ``now - started_at`` (not the nominal length), so
  ``frames / window_s`` is the true throughput even when a window closes late. A wall clock stepping
  backwards (NTP at boot) gives 0, never a negative span.
- ``provider`` and ``precision`` (the served variant's name: ``int8-u8s8``) are those of the engine that
  served the window's first frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime

from ddsketch import DDSketch

from edge_runtime.telemetry.errors import ObservationError
from edgefleet.contract.shown import shown
from edgefleet.contract.sketch import new_sketch, sketch_to_proto
from edgefleet.v1.telemetry_pb2 import ConfidenceHistogram, MetricWindow, SensorReading

DEFAULT_WINDOW_S = 10.0
DEFAULT_CONF_BINS = 20


def confidence_bin(confidence: float, bins: int) -> int:
    """Index of the equal-width bin over [0, 1] that holds ``confidence`` (1.0 goes to the last bin)."""
    return min(int(confidence * bins), bins - 1)


class WindowAggregator:
    """Accumulates one window of frames for one bundle; ``close`` emits it and starts the next."""

    def __init__(
        self,
        *,
        bundle_digest: str,
        provider: str,
        started_at: datetime,
        window_s: float = DEFAULT_WINDOW_S,
        conf_bins: int = DEFAULT_CONF_BINS,
        precision: str = "",
    ) -> None:
        if not (math.isfinite(window_s) and window_s > 0):
            raise ObservationError(f"metric window: 'window_s' must be > 0, got {shown(window_s)}")
        if conf_bins < 1:
            raise ObservationError(f"metric window: 'conf_bins' must be >= 1, got {shown(conf_bins)}")
        self.bundle_digest = bundle_digest
        self.provider = provider
        self.precision = precision
        self.window_s = window_s
        self.conf_bins = conf_bins
        self._reset(started_at)

    def _reset(self, started_at: datetime) -> None:
        self.started_at = started_at
        self.frames = 0
        self.errors = 0
        self._detections = 0
        self._e2e: DDSketch = new_sketch()
        self._model: DDSketch = new_sketch()
        self._confidence = [0] * self.conf_bins

    def observe(
        self,
        e2e_ms: float,
        model_ms: float,
        top_confidence: float,
        detections: int = 0,
        error: bool = False,
    ) -> None:
        """Record one frame: end-to-end (pre + model + post) and model-only latency in ms."""
        self.frames += 1
        if error:
            self.errors += 1
            return
        for name, value in (("e2e_ms", e2e_ms), ("model_ms", model_ms)):
            if not (math.isfinite(value) and value >= 0):
                raise ObservationError(f"metric window: '{name}' must be a finite number >= 0, got {shown(value)}")
        if not (0.0 <= top_confidence <= 1.0):
            raise ObservationError(
                f"metric window: 'top_confidence' must be within [0, 1], got {shown(top_confidence)}; "
                "pass the post-processed (softmaxed / sigmoid) confidence"
            )
        if detections < 0:
            raise ObservationError(f"metric window: 'detections' must be >= 0, got {shown(detections)}")
        self._e2e.add(e2e_ms)
        self._model.add(model_ms)
        self._confidence[confidence_bin(top_confidence, self.conf_bins)] += 1
        self._detections += detections

    def due(self, now: datetime) -> bool:
        """Whether the nominal window length has passed at ``now``."""
        return (now - self.started_at).total_seconds() >= self.window_s

    def close(
        self,
        now: datetime,
        sensors: Iterable[SensorReading] = (),
        memory_free: int = 0,
        disk_free: int = 0,
        dropped: Mapping[str, int] | None = None,
    ) -> MetricWindow:
        """Emit the window ending at ``now`` and start the next one at ``now``.

        ``dropped``: records the buffer dropped since the previous window, by class.
        """
        ok_frames = self.frames - self.errors
        window = MetricWindow(
            window_s=max(0.0, (now - self.started_at).total_seconds()),
            bundle_digest=self.bundle_digest,
            frames=self.frames,
            errors=self.errors,
            latency_e2e=sketch_to_proto(self._e2e),
            latency_model=sketch_to_proto(self._model),
            confidence=ConfidenceHistogram(counts=self._confidence),
            detections_per_frame=self._detections / ok_frames if ok_frames else 0.0,
            sensors=list(sensors),
            memory_free_bytes=max(0, memory_free),
            disk_free_bytes=max(0, disk_free),
            dropped={k: v for k, v in (dropped or {}).items() if v},
            provider=self.provider,
            precision=self.precision,
        )
        window.window_start.FromDatetime(self.started_at)
        self._reset(now)
        return window
