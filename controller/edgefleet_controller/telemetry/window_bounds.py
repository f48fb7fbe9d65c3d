"""Bounds a metric window must keep to be stored or merged: one declaration, checked twice. Pure: no I/O.

- At ingest (``check_window``) a window breaking any bound refuses its whole batch (INVALID_ARGUMENT, before
  any write): both latency sketches present and of the fleet's shape (``check_fleet_sketch``: gamma, mapping,
  bin keys within 1 ns..24 h, finite non-negative counts), ``window_s`` finite in [0, ``MAX_WINDOW_S``]
  (0 is what a device sends when its clock stepped back within a window: it adds no seconds to ``fps``),
  ``frames``/``errors``, every confidence-histogram count and each latency sketch's ``count`` at most
  ``MAX_WINDOW_FRAMES`` (what a device can produce in one window: ``MAX_WINDOW_S`` at ``MAX_FPS``, in
  ``edgefleet.contract.telemetry_bounds``; so no sum over windows a query merges can leave its field), a
  confidence histogram of at most ``MAX_CONFIDENCE_BINS`` bins, a finite ``detections_per_frame`` >= 0,
  finite sensor readings.
- At query (``row_problem``) a stored row breaking them — written by an older controller that did not check —
  is skipped and counted, never merged: so merging costs at most the bounded bins per row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from edgefleet.contract.errors import SketchError
from edgefleet.contract.request_bounds import MAX_HISTOGRAM_BINS, MAX_STORED_INT
from edgefleet.contract.shown import shown
from edgefleet.contract.sketch import check_fleet_sketch
from edgefleet.contract.telemetry_bounds import MAX_FPS, MAX_WINDOW_FRAMES
from edgefleet.contract.telemetry_bounds import MAX_WINDOW_S as _MAX_WINDOW_S
from edgefleet.v1.telemetry_pb2 import LatencySketch, MetricWindow

MAX_WINDOW_S = float(_MAX_WINDOW_S)
MAX_CONFIDENCE_BINS = MAX_HISTOGRAM_BINS
__all__ = ["MAX_STORED_INT", "MAX_WINDOW_S", "WindowInvalid", "check_window", "row_problem"]
#: What every per-window count bound says it is.
_PER_WINDOW = f" (one window: at most {MAX_WINDOW_S:g} s at {MAX_FPS} fps)"


class WindowInvalid(ValueError):
    """A metric window outside the bounds; the message names the field, the value (truncated) and the bound."""


def _check_common(window_s: float, frames: int, errors: int, confidence: Sequence[int]) -> None:
    if not (math.isfinite(window_s) and 0.0 <= window_s <= MAX_WINDOW_S):
        raise WindowInvalid(f"window_s must be a finite number in [0, {MAX_WINDOW_S:g}] seconds, got {shown(window_s)}")
    for name, value in (("frames", frames), ("errors", errors)):
        if not 0 <= value <= MAX_WINDOW_FRAMES:
            raise WindowInvalid(f"{name} must be within 0..{MAX_WINDOW_FRAMES}{_PER_WINDOW}, got {shown(value)}")
    if len(confidence) > MAX_CONFIDENCE_BINS:
        raise WindowInvalid(
            f"confidence.counts has {len(confidence)} bins, at most {MAX_CONFIDENCE_BINS} (the device's conf_bins)"
        )
    for i, c in enumerate(confidence):
        if not (isinstance(c, int) and 0 <= c <= MAX_WINDOW_FRAMES):
            raise WindowInvalid(
                f"confidence.counts[{i}] must be an integer within 0..{MAX_WINDOW_FRAMES}{_PER_WINDOW}, got {shown(c)}"
            )


def _check_sketch(sketch: LatencySketch, name: str) -> None:
    check_fleet_sketch(sketch, name)
    if sketch.count > MAX_WINDOW_FRAMES:
        raise WindowInvalid(f"{name}.count must be at most {MAX_WINDOW_FRAMES}{_PER_WINDOW}, got {shown(sketch.count)}")


def check_window(window: MetricWindow) -> None:
    """Raise ``WindowInvalid`` when an uploaded window breaks a bound (see the module docstring)."""
    for name in ("latency_e2e", "latency_model"):
        if not window.HasField(name):
            raise WindowInvalid(f"{name} is missing; every window carries both latency sketches (may be empty)")
        try:
            _check_sketch(getattr(window, name), name)
        except SketchError as exc:
            raise WindowInvalid(str(exc)) from None
    _check_common(window.window_s, window.frames, window.errors, list(window.confidence.counts))
    for i, reading in enumerate(window.sensors):
        if not (math.isfinite(reading.value) and math.isfinite(reading.max_value)):
            raise WindowInvalid(
                f"sensors[{i}] ({shown(reading.name)}) value and max_value must be finite, got "
                f"{shown(reading.value)}, {shown(reading.max_value)}; report an unreadable sensor with missing = true"
            )
    if not (math.isfinite(window.detections_per_frame) and window.detections_per_frame >= 0):
        raise WindowInvalid(
            f"detections_per_frame must be a finite number >= 0, got {shown(window.detections_per_frame)}"
        )


def row_problem(
    window_s: float, frames: int, errors: int, latency_e2e: bytes, latency_model: bytes, confidence: Sequence[int]
) -> str | None:
    """Why a stored window must not be merged (its first broken bound), or None when it is sound."""
    try:
        for name, blob in (("latency_e2e", latency_e2e), ("latency_model", latency_model)):
            try:
                sketch = LatencySketch.FromString(blob)
            except Exception:  # a stored blob that is not a LatencySketch at all
                return f"{name} is not a LatencySketch ({len(blob)} bytes)"
            _check_sketch(sketch, name)
        _check_common(window_s, frames, errors, confidence)
    except (SketchError, WindowInvalid) as exc:
        return str(exc)
    return None
