"""Review sampling: low confidence always (within the hourly cap), a seeded fraction otherwise, JPEG + JSON."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest

from edge_runtime.telemetry import ReviewEncodeError, ReviewSampler, encode_jpeg, results_json
from edgefleet.contract.processing.postprocess import Detection
from edgefleet.contract.request_bounds import check
from edgefleet.contract.telemetry_bounds import MAX_REVIEW_JPEG_BYTES
from edgefleet.v1 import telemetry_pb2

T0 = datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC)


def _sampler(**kw: object) -> ReviewSampler:
    args: dict[str, object] = {
        "sample_rate": 0.0,
        "low_confidence_below": 0.3,
        "max_per_hour": 1000,
        "jpeg_quality": 80,
        "seed": 1,
    }
    args.update(kw)
    return ReviewSampler(**args)  # type: ignore[arg-type]


def test_low_confidence_is_always_flagged_and_high_never_at_rate_zero() -> None:
    s = _sampler()
    decisions = [s.decide(T0 + timedelta(seconds=i), c) for i, c in enumerate([0.1, 0.29, 0.3, 0.95, 0.0])]
    assert decisions == ["low_confidence", "low_confidence", None, None, "low_confidence"]


def test_sampled_fraction_matches_the_rate_and_is_reproducible() -> None:
    runs = []
    for _ in range(2):
        s = _sampler(sample_rate=0.1, seed=42, max_per_hour=1_000_000)
        runs.append([s.decide(T0 + timedelta(milliseconds=i), 0.9) for i in range(20_000)])
    assert runs[0] == runs[1]
    share = sum(d == "sampled" for d in runs[0]) / len(runs[0])
    assert share == pytest.approx(0.1, abs=0.01)


def test_hourly_cap_bounds_all_samples_over_a_sliding_hour() -> None:
    s = _sampler(max_per_hour=5, sample_rate=1.0)
    first = [s.decide(T0 + timedelta(minutes=i), 0.05) for i in range(8)]
    assert first == ["low_confidence"] * 5 + [None] * 3
    assert s.capped == 3
    assert s.decide(T0 + timedelta(minutes=59, seconds=59), 0.9) is None
    # One hour after the first sample, its slot frees up.
    assert s.decide(T0 + timedelta(minutes=60), 0.9) == "sampled"
    assert s.taken_last_hour(T0 + timedelta(minutes=60)) == 5


def test_sample_packs_jpeg_and_canonical_results() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8)
    detections = (Detection(box=(1.0, 2.0, 30.0, 40.0), class_id=2, label="bike", confidence=0.21),)
    s = _sampler(max_side=320, jpeg_quality=70)
    sample = s.sample(
        frame,
        detections,
        bundle_digest="sha256:" + "cd" * 32,
        top_confidence=0.21,
        reason="low_confidence",
        captured_at=T0,
    )
    decoded = cv2.imdecode(np.frombuffer(sample.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    assert decoded.shape == (240, 320, 3)
    assert sample.results_json == ('[{"box":[1.0,2.0,30.0,40.0],"class_id":2,"confidence":0.21,"label":"bike"}]')
    assert sample.reason == "low_confidence"
    assert sample.captured_at.ToDatetime(tzinfo=UTC) == T0
    assert len(sample.sample_id) == 36
    again = _sampler(max_side=320, jpeg_quality=70).sample(
        frame, detections, bundle_digest="x", top_confidence=0.21, reason="sampled", captured_at=T0
    )
    assert again.sample_id == sample.sample_id  # seeded


def test_jpeg_quality_changes_size() -> None:
    frame = np.random.default_rng(1).integers(0, 255, size=(120, 160, 3), dtype=np.uint8)
    assert len(encode_jpeg(frame, 20)) < len(encode_jpeg(frame, 95))


@pytest.mark.parametrize(
    "frame",
    [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((0, 10, 3), np.uint8), "x"],
)
def test_non_bgr_frames_are_refused(frame: object) -> None:
    with pytest.raises(ReviewEncodeError, match="BGR uint8"):
        encode_jpeg(frame, 80)


def test_canonical_json_refuses_nan_and_unknown_types() -> None:
    assert results_json({"b": np.float32(0.5), "a": [np.int64(3)]}) == '{"a":[3],"b":0.5}'
    with pytest.raises(ValueError):
        results_json({"x": float("nan")})
    with pytest.raises(TypeError, match="object"):
        results_json({"x": object()})


@pytest.mark.parametrize(
    ("field", "value"),
    [("sample_rate", 1.5), ("low_confidence_below", -0.1), ("max_per_hour", -1), ("jpeg_quality", 0)],
)
def test_bad_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        _sampler(**{field: value})


def test_a_frame_whose_jpeg_is_over_the_controllers_bound_is_re_encoded_smaller_never_sent_whole() -> None:
    noise = np.random.default_rng(3).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    assert len(cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 100])[1]) > MAX_REVIEW_JPEG_BYTES
    s = _sampler(jpeg_quality=100)
    packed = [
        s.sample(f, [], bundle_digest="sha256:" + "a" * 64, top_confidence=0.1, reason="sampled", captured_at=T0)
        for f in (noise, noise[:100, :100])
    ]
    big, small = (p.jpeg for p in packed)
    assert MAX_REVIEW_JPEG_BYTES // 2 < len(big) <= MAX_REVIEW_JPEG_BYTES  # shrunk, not to a thumbnail
    decoded = cv2.imdecode(np.frombuffer(big, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[1] / decoded.shape[0] == pytest.approx(1600 / 1200, rel=0.01)  # aspect kept
    assert small == encode_jpeg(noise[:100, :100], 100)  # a frame that fits is encoded as before
    assert s.shrunk == 1
    batch = telemetry_pb2.TelemetryBatch(epoch="e", first_seq=1, last_seq=2)
    batch.records.extend(telemetry_pb2.TelemetryRecord(seq=i + 1, review=p) for i, p in enumerate(packed))
    check(batch)  # what the device sends, the controller accepts
