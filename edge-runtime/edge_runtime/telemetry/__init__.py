"""The device's telemetry: metric windows, sensors, the durable upload buffer and review samples.

Import the public names from here; each submodule owns one concern (see its docstring). Latency sketch
conversion lives in the shared contract (``edgefleet.contract.sketch``) because the controller merges them.
"""

from __future__ import annotations

from edge_runtime.telemetry.buffer import BufferReset, TelemetryBuffer
from edge_runtime.telemetry.errors import (
    ObservationError,
    ReviewEncodeError,
    TelemetryBufferError,
    TelemetryError,
)
from edge_runtime.telemetry.records import Batch, BufferedRecord, RecordClass, record_footprint
from edge_runtime.telemetry.review import ReviewReason, ReviewSampler, encode_jpeg, results_json
from edge_runtime.telemetry.sensors import SensorReader, SensorSnapshot, parse_nvidia_smi
from edge_runtime.telemetry.window import WindowAggregator, confidence_bin

__all__ = [
    "Batch",
    "BufferReset",
    "BufferedRecord",
    "ObservationError",
    "RecordClass",
    "ReviewEncodeError",
    "ReviewReason",
    "ReviewSampler",
    "SensorReader",
    "SensorSnapshot",
    "TelemetryBuffer",
    "TelemetryBufferError",
    "TelemetryError",
    "WindowAggregator",
    "confidence_bin",
    "encode_jpeg",
    "parse_nvidia_smi",
    "record_footprint",
    "results_json",
]
