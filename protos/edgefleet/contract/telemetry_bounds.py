"""What the smallest telemetry records take in the device's buffer, for the config checks.

A config whose telemetry bounds can never hold one record of a kind can never work; ``manifest_schema``
refuses it with this arithmetic. The figures are the device's own (``edge_runtime.telemetry.records``
footprint of what ``ReviewSampler`` and ``WindowAggregator`` write); a test holds them equal.

- ``MIN_REVIEW_RECORD_BYTES``: a review sample of a 1x1 frame. OpenCV's smallest JPEG is ~630 bytes (the
  JFIF header with its quantisation and Huffman tables, whatever the quality); the sample's id, bundle
  digest, reason, time and results add ~155; the buffer charges its SQLite cell and index overhead. A real
  frame is far larger (640x480 at ``jpeg_quality`` 85: tens of KB, more for a noisy scene).
- ``REVIEW_QUOTA_OFF``: ``review_quota_bytes: 0`` turns review sampling off (no frame is flagged or encoded).
- ``buffer_max_bytes`` needs no check beyond the schema's minimum (64 KiB): a metric window takes ~2 KB.
"""

from __future__ import annotations

from typing import Final

#: Stored bytes of the smallest review sample the device can write (a 1x1 frame).
MIN_REVIEW_RECORD_BYTES: Final = 844
#: The JPEG part of it: OpenCV's header and tables for a 1x1 frame.
MIN_REVIEW_JPEG_BYTES: Final = 630
#: The largest review JPEG the controller accepts (``request_bounds``; it keeps a review sample well inside
#: one 2 MiB request): a 1920x1080 frame at quality 85 is a few hundred KB. The device re-encodes a frame
#: whose JPEG is larger at a smaller size until it fits (``edge_runtime.telemetry.review``).
MAX_REVIEW_JPEG_BYTES: Final = 1024 * 1024
#: ``telemetry.review_quota_bytes`` that turns review sampling off.
REVIEW_QUOTA_OFF: Final = 0

#: The longest metric window the controller stores (``MetricWindow.window_s``; the device closes one every
#: ``telemetry.window_s``, 10 s by default).
MAX_WINDOW_S: Final = 24 * 3600
#: A generous ceiling on any device's frame rate (a 4K camera runs 30-120 fps; no edge model does 10,000).
MAX_FPS: Final = 10_000
#: The most frames (and so errors, confidence-histogram counts and latency-sketch counts) one window can
#: carry: ``MAX_WINDOW_S`` at ``MAX_FPS``, 864,000,000 (< 2^30). Not ``window_s`` x ``MAX_FPS``: a wall
#: clock stepping back closes a window with a short or 0 ``window_s`` over frames of a full window. Any
#: number of such windows sums far below 2^64; the query clamps its sums anyway.
MAX_WINDOW_FRAMES: Final = MAX_WINDOW_S * MAX_FPS
#: Records of one class the device's buffer dropped since the previous window (``MetricWindow.dropped``).
MAX_WINDOW_DROPPED: Final = 2**40


def review_quota_problem(quota: int) -> str | None:
    """Why ``telemetry.review_quota_bytes`` can never hold a review sample, or None when it can (or is 0)."""
    if quota == REVIEW_QUOTA_OFF or quota >= MIN_REVIEW_RECORD_BYTES:
        return None
    return (
        f"review_quota_bytes {quota} is smaller than one review sample: even a 1x1 frame takes "
        f"{MIN_REVIEW_RECORD_BYTES} bytes in the device's buffer (a {MIN_REVIEW_JPEG_BYTES}-byte JPEG + "
        f"{MIN_REVIEW_RECORD_BYTES - MIN_REVIEW_JPEG_BYTES} bytes of sample fields and store overhead), and a "
        f"640x480 frame tens of KB; raise it to >= {MIN_REVIEW_RECORD_BYTES} (better: several frames' worth) "
        "or set 0 to turn review sampling off"
    )
