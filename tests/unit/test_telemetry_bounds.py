"""Telemetry bounds that can never hold a record are refused by the config checks, with the arithmetic;
``review_quota_bytes: 0`` is valid (review sampling off); the contract's figure is the device's own; batch
bounds above what the controller accepts in one request are refused by the schema and clamped by the device,
and a ReportEvent call never exceeds the request limit."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from edge_runtime.agent.telemetry.reporter import BATCH, AgentReporter
from edge_runtime.agent.telemetry.uploader import UploadSettings
from edge_runtime.telemetry.records import classify_body, encode_record, record_footprint
from edge_runtime.telemetry.review import ReviewSampler
from edgefleet.contract.errors import ManifestError
from edgefleet.contract.layering import merge_config_layers
from edgefleet.contract.manifest_schema import manifest_schema
from edgefleet.contract.request_bounds import MAX_BATCH_RECORDS, MAX_REQUEST_BYTES, MAX_TELEMETRY_BATCH_BYTES
from edgefleet.contract.telemetry_bounds import MIN_REVIEW_JPEG_BYTES, MIN_REVIEW_RECORD_BYTES
from edgefleet.v1 import device_pb2


def merged(telemetry: dict[str, int]) -> str:
    return merge_config_layers([("FleetConfig/default", {"telemetry": telemetry})]).digest


def test_a_review_quota_below_one_review_sample_is_refused_with_the_arithmetic() -> None:
    with pytest.raises(ManifestError) as info:
        merged({"buffer_max_bytes": 65536, "review_quota_bytes": 500})
    assert info.value.path == "telemetry.review_quota_bytes"
    message = str(info.value)
    assert "review_quota_bytes 500 is smaller than one review sample" in message
    assert f"{MIN_REVIEW_RECORD_BYTES} bytes in the device's buffer" in message
    assert f"a {MIN_REVIEW_JPEG_BYTES}-byte JPEG" in message
    assert f"raise it to >= {MIN_REVIEW_RECORD_BYTES}" in message and "set 0 to turn review sampling off" in message
    with pytest.raises(ManifestError, match="review_quota_bytes 843 is smaller"):
        merged({"review_quota_bytes": MIN_REVIEW_RECORD_BYTES - 1})


def test_the_configs_of_the_issue_are_valid_zero_turns_sampling_off() -> None:
    merged({"review_quota_bytes": 0})
    # (a 64 KiB buffer also needs batch_max_bytes within it: the default 1 MiB batch is refused)
    with pytest.raises(ManifestError, match=r"batch_max_bytes: must be <= telemetry\.buffer_max_bytes"):
        merged({"buffer_max_bytes": 65536, "review_quota_bytes": 16384})
    merged({"buffer_max_bytes": 65536, "review_quota_bytes": 16384, "batch_max_bytes": 65536})
    merged({"review_quota_bytes": MIN_REVIEW_RECORD_BYTES})


@pytest.mark.parametrize("quality", [1, 85, 100])
def test_the_contract_minimum_is_the_smallest_review_record_the_device_writes(quality: int) -> None:
    sampler = ReviewSampler(sample_rate=1.0, low_confidence_below=0.5, max_per_hour=10, jpeg_quality=quality)
    sample = sampler.sample(
        np.zeros((1, 1, 3), np.uint8),
        [],
        bundle_digest="sha256:" + "a" * 64,
        top_confidence=0.1,
        reason="sampled",
        captured_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    _, field, body = classify_body(sample)
    assert len(sample.jpeg) >= MIN_REVIEW_JPEG_BYTES
    assert record_footprint(len(encode_record(1, field, body))) == MIN_REVIEW_RECORD_BYTES


def _schema_property(name: str) -> dict[str, object]:
    found: list[dict[str, object]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict) and name in props and "batch_max_delay_s" in props:
                found.append(props[name])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(manifest_schema())
    assert len(found) == 1, name
    return found[0]


def test_batch_bounds_above_what_the_controller_accepts_are_refused_and_clamped() -> None:
    # the schema's maxima are the contract's constants (one source of truth: a test holds them equal)
    assert _schema_property("batch_max_bytes")["maximum"] == MAX_TELEMETRY_BATCH_BYTES
    assert _schema_property("batch_max_records")["maximum"] == MAX_BATCH_RECORDS
    assert MAX_TELEMETRY_BATCH_BYTES < MAX_REQUEST_BYTES
    big = {"buffer_max_bytes": 64 << 20}
    merged({**big, "batch_max_bytes": MAX_TELEMETRY_BATCH_BYTES, "batch_max_records": MAX_BATCH_RECORDS})
    with pytest.raises(ManifestError) as info:
        merged({**big, "batch_max_bytes": MAX_TELEMETRY_BATCH_BYTES + 1})
    assert info.value.path == "telemetry.batch_max_bytes" and str(MAX_TELEMETRY_BATCH_BYTES + 1) in str(info.value)
    with pytest.raises(ManifestError) as info:
        merged({**big, "batch_max_records": MAX_BATCH_RECORDS + 1})
    assert info.value.path == "telemetry.batch_max_records"
    # a device on an older (unchecked) config never builds a batch the controller refuses
    settings = UploadSettings.from_config({"batch_max_bytes": 8 << 20, "batch_max_records": 10**6})
    assert (settings.batch_max_bytes, settings.batch_max_records) == (MAX_TELEMETRY_BATCH_BYTES, MAX_BATCH_RECORDS)
    assert UploadSettings.from_config({"batch_max_bytes": 4096}).batch_max_bytes == 4096


def test_a_report_event_call_never_exceeds_the_request_limit_and_the_rest_follows() -> None:
    reporter = AgentReporter()
    for i in range(BATCH):
        reporter.report_alert("sha256:" + "a" * 64, f"{i:03d}" + "r" * 30_000, {"t": 1.0})
    sent: list[str] = []
    while reporter.has_pending():
        batch = reporter.pending()
        assert 1 <= len(batch) < BATCH
        assert device_pb2.ReportEventRequest(events=batch).ByteSize() <= MAX_REQUEST_BYTES
        sent += [e.reason[:3] for e in batch]
        reporter.acknowledge(batch)
    assert sent == [f"{i:03d}" for i in range(BATCH)]  # every event, in order, none twice
