"""The profiler's pure core: percentiles per stage, the profile's wire and JSON forms, and that the JSON
form is exactly what ``fleetctl budget --profile`` reads."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.inference import Timings
from edge_runtime.profiling import (
    BundleFacts,
    DeviceProfile,
    ProfileConditions,
    ProfileError,
    build_profile,
    profile_event,
    profile_to_document,
    profile_to_proto,
    stage_stats,
)
from edge_runtime.telemetry.sensors import missing
from edgefleet.contract.budget import candidate_from_profile
from edgefleet.v1 import telemetry_pb2

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FACTS = BundleFacts(ref="det@1.2.0", digest="sha256:" + "1" * 64, model_bytes=12_000, bundle_bytes=30_000, sla_ms=40.0)


def timings(n: int) -> list[Timings]:
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        pre, model, post = (float(v) for v in rng.uniform([0.5, 5.0, 0.1], [1.5, 20.0, 0.4]))
        out.append(Timings(pre, model, post, pre + model + post))
    return out


def make_profile(n: int = 200, elapsed: float = 4.0) -> DeviceProfile:
    temp = telemetry_pb2.SensorReading(name="cpu_temp", kind="temp_c", value=61.5)
    clock = telemetry_pb2.SensorReading(name="cpu_clock", kind="clock_mhz", value=1800.0, max_value=2400.0)
    return build_profile(
        timings(n),
        elapsed,
        ProfileConditions(
            bundle=FACTS,
            hardware_class="x86-avx2",
            provider="CPUExecutionProvider",
            active_providers=["CPUExecutionProvider"],
            precision="int8",
            variant="int8",
            warmup=20,
            sensors_before=[temp, clock, missing("gpu_temp", "temp_c")],
            sensors_after=[temp, clock, missing("gpu_temp", "temp_c")],
            measured_at=AT,
            variant_choice={"chosen": "int8"},
        ),
    )


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=1, max_size=300))
def test_stage_stats_are_numpy_percentiles(samples: list[float]) -> None:
    stats = stage_stats(samples)
    expected = np.percentile(np.asarray(samples), [50, 95, 99])
    assert (stats.p50_ms, stats.p95_ms, stats.p99_ms) == pytest.approx(tuple(expected))
    assert stats.count == len(samples)
    assert stats.p50_ms <= stats.p95_ms <= stats.p99_ms


def test_no_frames_is_an_error_that_says_what_to_do() -> None:
    with pytest.raises(ProfileError, match="no frame was measured; profile for longer"):
        stage_stats([])
    with pytest.raises(ProfileError, match=r"must be > 0 s, got 0\.0"):
        build_profile(
            timings(3),
            0.0,
            ProfileConditions(
                bundle=FACTS,
                hardware_class="x",
                provider="CPUExecutionProvider",
                active_providers=[],
                precision="fp32",
                variant="fp32",
                warmup=0,
                sensors_before=[],
                sensors_after=[],
                measured_at=AT,
            ),
        )


def test_total_is_per_frame_not_a_sum_of_stage_percentiles() -> None:
    profile = make_profile()
    frames = timings(200)
    assert profile.total.p95_ms == pytest.approx(float(np.percentile([t.total_ms for t in frames], 95)))
    assert profile.total.p95_ms < sum(profile.stages[s].p95_ms for s in ("pre", "model", "post"))
    assert profile.fps == pytest.approx(50.0)
    assert profile.frames == 200


def test_profile_to_proto_and_event() -> None:
    profile = make_profile()
    proto = profile_to_proto(profile)
    assert proto.bundle_digest == FACTS.digest and proto.hardware_class == "x86-avx2"
    assert proto.provider == "CPUExecutionProvider" and proto.precision == "int8" and proto.source == "profile"
    assert proto.frames == 200 and proto.fps == pytest.approx(50.0)
    assert proto.total.p95_ms == pytest.approx(profile.total.p95_ms) and proto.total.count == 200
    assert proto.model.p99_ms == pytest.approx(profile.stages["model"].p99_ms)
    assert [r.name for r in proto.sensors_before] == ["cpu_temp", "cpu_clock", "gpu_temp"]
    assert proto.sensors_after[2].missing
    event = profile_event(profile, "ev-1")
    assert event.kind == telemetry_pb2.DeviceEvent.KIND_PROFILE
    assert event.event_id == "ev-1" and event.bundle_digest == FACTS.digest
    assert event.at.ToDatetime(tzinfo=UTC) == AT
    assert telemetry_pb2.DeviceEvent.FromString(event.SerializeToString()).profile == proto


def test_document_is_what_fleetctl_budget_reads() -> None:
    profile = make_profile()
    doc = profile_to_document(profile)
    assert doc["sensors_before"][2] == {
        "name": "gpu_temp",
        "kind": "temp_c",
        "value": None,
        "max_value": None,
        "missing": True,
    }
    assert doc["sensors_before"][1]["max_value"] == 2400.0
    assert doc["measured_at"] == "2025-03-01T12:00:00Z"
    candidate = candidate_from_profile(doc, source="profile.json")
    assert candidate.ref == "det@1.2.0" and candidate.digest == FACTS.digest
    assert candidate.size_bytes == 12_000 and candidate.hardware_class == "x86-avx2"
    assert candidate.p95_ms == pytest.approx(round(profile.total.p95_ms, 4))
