"""Bounds a metric window must keep to be stored or merged: one declaration, checked twice. Pure: no I/O.

- At ingest (``check_window``) a window breaking any bound refuses its whole batch (INVALID_ARGUMENT, before
  any write): both latency sketches present and of the fleet's shape (``check_fleet_sketch``: gamma, mapping,
  bin keys within 1 ns..24 h, finite non-negative counts), ``window_s`` finite in [0, ``MAX_WINDOW_S``]
  (0 is what a device sends when its clock stepped back within a window: it adds no seconds to ``fps``),
  ``frames``/``errors`` below 2^63 (the store's integer), a confidence histogram of at most
  ``MAX_CONFIDENCE_BINS`` bins, a finite ``detections_per_frame`` >= 0, finite sensor readings.
- At query (``row_problem``) a stored row breaking them — written by an older controller that did not check —
  is skipped and counted, never merged: so merging costs at most the bounded bins per row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from edgefleet.contract.errors import SketchError
from edgefleet.contract.shown import shown
from edgefleet.contract.sketch import check_fleet_sketch
from edgefleet.v1.telemetry_pb2 import LatencySketch, MetricWindow

MAX_WINDOW_S = 24 * 3600.0
MAX_CONFIDENCE_BINS = 1000
MAX_STORED_INT = 2**63 - 1


class WindowInvalid(ValueError):
    """A metric window outside the bounds; the message names the field, the value (truncated) and the bound."""


def _check_common(window_s: float, frames: int, errors: int, confidence: Sequence[int]) -> None:
    if not (math.isfinite(window_s) and 0.0 <= window_s <= MAX_WINDOW_S):
        raise WindowInvalid(f"window_s must be a finite number in [0, {MAX_WINDOW_S:g}] seconds, got {shown(window_s)}")
    for name, value in (("frames", frames), ("errors", errors)):
        if not 0 <= value <= MAX_STORED_INT:
            raise WindowInvalid(f"{name} must be within 0..{MAX_STORED_INT}, got {value}")
    if len(confidence) > MAX_CONFIDENCE_BINS:
        raise WindowInvalid(
            f"confidence.counts has {len(confidence)} bins, at most {MAX_CONFIDENCE_BINS} (the device's conf_bins)"
        )
    for i, c in enumerate(confidence):
        if not (isinstance(c, int) and 0 <= c <= MAX_STORED_INT):
            raise WindowInvalid(f"confidence.counts[{i}] must be an integer within 0..{MAX_STORED_INT}, got {shown(c)}")


def check_window(window: MetricWindow) -> None:
    """Raise ``WindowInvalid`` when an uploaded window breaks a bound (see the module docstring)."""
    for name in ("latency_e2e", "latency_model"):
        if not window.HasField(name):
            raise WindowInvalid(f"{name} is missing; every window carries both latency sketches (may be empty)")
        try:
            check_fleet_sketch(getattr(window, name), name)
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
            check_fleet_sketch(sketch, name)
        _check_common(window_s, frames, errors, confidence)
    except (SketchError, WindowInvalid) as exc:
        return str(exc)
    return None
