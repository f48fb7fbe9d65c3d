"""Errors of the device's telemetry (metric windows, sensors, durable buffer, review samples).

A missing sensor is not an error (it is reported as a ``SensorReading`` with ``missing=True``); a corrupt
buffer file is not an error either (it is moved aside and a new store starts), nor a record that can never
fit the buffer (it is dropped and counted). Errors here are misuse and disk trouble. Sketch layout problems
are the contract's ``edgefleet.contract.errors.SketchError``.

    TelemetryError
    ├── ObservationError          a frame observation is out of range (negative latency, confidence ∉ [0, 1])
    ├── TelemetryBufferError      the durable buffer cannot be opened or written
    ├── UnusableStoreError        an existing buffer file is no usable store (internal: the buffer moves it
    │                             aside and starts a new one; never raised to its callers)
    └── ReviewEncodeError         a review frame is not a BGR uint8 image, or JPEG encoding failed
"""

from __future__ import annotations


class TelemetryError(Exception):
    """Base of every error raised by ``edge_runtime.telemetry``."""


class ObservationError(TelemetryError, ValueError):
    """A per-frame observation handed to a metric window is out of range."""


class TelemetryBufferError(TelemetryError):
    """The durable telemetry buffer cannot be opened, read or written."""


class ReviewEncodeError(TelemetryError):
    """A frame for review is not a BGR uint8 HxWx3 image, or OpenCV could not encode it as JPEG."""


class UnusableStoreError(TelemetryError):
    """An existing buffer file opened but is not a usable store (no meta, unknown schema, failed quick_check).

    Internal to the buffer's open: it moves such a file aside and starts a new store."""
