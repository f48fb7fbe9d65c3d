"""Latency profiles of a bundle on this device: what ``edge-runtime profile`` measures and reports.

Pure core (no clock reads, no I/O): ``stage_stats`` (numpy percentiles over per-frame timings),
``build_profile`` (timings + ``ProfileConditions`` → ``DeviceProfile``), ``profile_to_proto`` (the wire form,
``edgefleet.v1.LatencyProfile``) and ``profile_to_document`` (the JSON form, format
``edgefleet.contract.budget.PROFILE_FORMAT``, which ``fleetctl budget --profile FILE`` reads).
Thin shell: ``measure_frames`` (warm up, then time frames for N seconds) and ``profile_bundle`` (choose the
precision variant this device would serve, load it, read sensors before and after, measure).

Decisions:
- Percentiles are numpy's (linear interpolation) over every measured frame, per stage (pre, model, post)
  and end to end (``total`` = pre + model + post of the same frame, not a sum of stage percentiles).
- Warm-up frames (lazy allocations, kernel selection, TensorRT engine builds) are run and discarded.
- ``fps`` is measured frames / wall seconds of the measuring loop, frame decoding included: it is what the
  device sustains, not 1000 / mean latency.
- Sensors (temperatures, clocks) are read just before the first and just after the last measured frame;
  a sensor the device does not have is kept as a reading with ``missing=True`` so it shows as missing,
  never as 0 °C. They come from ``edge_runtime.telemetry.sensors``.
- The precision variant profiled is the one ``edge_runtime.precision.choose_variant`` picks on this device
  (what the agent would serve), unless the operator forces one (strictly: a variant the bundle lacks is an
  error, not a fallback). It is loaded with the engine flags the agent's switcher loads it with
  (``precision.choice_engine_flags``: INT8 for an INT8 variant, FP16 for an FP16 one or under ``fp16``), so
  TensorRT profiles the engine the device would serve, not an FP32 build of FP16 weights.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from edge_runtime.inference import InferenceEngine, InferenceError, Timings
from edge_runtime.precision import VariantChoice, choice_engine_flags, choose_variant
from edge_runtime.sources import Frame
from edgefleet.contract.budget import PROFILE_FORMAT
from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_layout import MODEL_ROLE
from edgefleet.contract.shown import shown
from edgefleet.v1 import common_pb2, telemetry_pb2

log = structlog.get_logger(__name__)

STAGES = ("pre", "model", "post", "total")
SOURCE_PROFILE = "profile"


class ProfileError(InferenceError):
    """A profile cannot be taken: no frame was measured, or the arguments are out of range."""


@dataclass(frozen=True)
class StageStats:
    """p50/p95/p99 of one stage over ``count`` frames, in milliseconds."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    count: int

    def to_dict(self) -> dict[str, object]:
        """The percentiles rounded to 0.1 µs, and the count."""
        return {name: round(v, 4) if isinstance(v, float) else v for name, v in dataclasses.asdict(self).items()}

    def to_proto(self) -> common_pb2.Percentiles:
        return common_pb2.Percentiles(p50_ms=self.p50_ms, p95_ms=self.p95_ms, p99_ms=self.p99_ms, count=self.count)


def stage_stats(samples_ms: Sequence[float]) -> StageStats:
    """Percentiles of one stage's per-frame milliseconds (numpy, linear interpolation)."""
    if not samples_ms:
        raise ProfileError("no frame was measured; profile for longer (--seconds) or check the frame source")
    p50, p95, p99 = np.percentile(np.asarray(samples_ms, np.float64), [50, 95, 99])
    return StageStats(float(p50), float(p95), float(p99), len(samples_ms))


@dataclass(frozen=True)
class BundleFacts:
    """What the profile says about the bundle: identity, sizes (for budgeting) and its SLA."""

    ref: str
    digest: str
    model_bytes: int
    bundle_bytes: int
    sla_ms: float

    @staticmethod
    def of(manifest: BundleManifest) -> BundleFacts:
        return BundleFacts(
            ref=manifest.ref,
            digest=manifest.digest,
            model_bytes=manifest.artifact(MODEL_ROLE).size,
            bundle_bytes=sum(a.size for a in manifest.artifacts.values()),
            sla_ms=manifest.latency.sla_ms,
        )


@dataclass(frozen=True)
class ProfileConditions:
    """What a profile is measured under: the bundle, the variant and the provider serving it, the warm-up,
    the sensors just before and just after, and when. Sequences are kept as tuples, the choice as a dict."""

    bundle: BundleFacts
    hardware_class: str
    provider: str
    active_providers: Sequence[str]
    precision: str
    variant: str
    warmup: int
    sensors_before: Sequence[telemetry_pb2.SensorReading]
    sensors_after: Sequence[telemetry_pb2.SensorReading]
    measured_at: datetime
    variant_choice: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Frozen, so set through object: the profile keeps its own copies, not the caller's lists.
        object.__setattr__(self, "active_providers", tuple(self.active_providers))
        object.__setattr__(self, "sensors_before", tuple(self.sensors_before))
        object.__setattr__(self, "sensors_after", tuple(self.sensors_after))
        object.__setattr__(self, "variant_choice", dict(self.variant_choice))


@dataclass(frozen=True, kw_only=True)
class DeviceProfile(ProfileConditions):
    """One latency profile of one bundle on this device: its conditions and what was measured."""

    seconds: float
    frames: int
    fps: float
    stages: Mapping[str, StageStats]
    source: str = SOURCE_PROFILE

    @property
    def total(self) -> StageStats:
        return self.stages["total"]


def build_profile(timings: Sequence[Timings], elapsed_s: float, conditions: ProfileConditions) -> DeviceProfile:
    """Summarise per-frame timings taken over ``elapsed_s`` seconds under ``conditions`` into a
    ``DeviceProfile``."""
    if not timings:
        raise ProfileError("no frame was measured; profile for longer (--seconds) or check the frame source")
    if not elapsed_s > 0:
        raise ProfileError(f"the measuring time must be > 0 s, got {shown(elapsed_s)}")
    # Each stage name is the prefix of its Timings field (pre_ms, model_ms, post_ms, total_ms).
    stages = {name: stage_stats([getattr(t, f"{name}_ms") for t in timings]) for name in STAGES}
    measured_under = {f.name: getattr(conditions, f.name) for f in dataclasses.fields(ProfileConditions)}
    return DeviceProfile(
        **measured_under, seconds=elapsed_s, frames=len(timings), fps=len(timings) / elapsed_s, stages=stages
    )


def profile_to_proto(profile: DeviceProfile) -> telemetry_pb2.LatencyProfile:
    """The wire form carried by ``DeviceEvent(kind=KIND_PROFILE, profile=...)``: every profile field the
    message declares under the same name, the bundle's digest and one ``Percentiles`` per stage."""
    wire_names = telemetry_pb2.LatencyProfile.DESCRIPTOR.fields_by_name
    values: dict[str, Any] = {
        f.name: getattr(profile, f.name) for f in dataclasses.fields(profile) if f.name in wire_names
    }
    values.update((name, profile.stages[name].to_proto()) for name in STAGES)
    return telemetry_pb2.LatencyProfile(bundle_digest=profile.bundle.digest, **values)


def profile_event(profile: DeviceProfile, event_id: str) -> telemetry_pb2.DeviceEvent:
    """A ``KIND_PROFILE`` device event for ``DeviceService.ReportEvent``."""
    at = Timestamp()
    at.FromDatetime(profile.measured_at.astimezone(UTC))
    return telemetry_pb2.DeviceEvent(
        event_id=event_id,
        kind=telemetry_pb2.DeviceEvent.KIND_PROFILE,
        bundle_digest=profile.bundle.digest,
        at=at,
        profile=profile_to_proto(profile),
    )


def reading_to_dict(reading: telemetry_pb2.SensorReading) -> dict[str, object]:
    return {
        "name": reading.name,
        "kind": reading.kind,
        "value": None if reading.missing else round(reading.value, 3),
        "max_value": round(reading.max_value, 3) if reading.max_value else None,
        "missing": reading.missing,
    }


def profile_to_document(profile: DeviceProfile) -> dict[str, Any]:
    """The JSON document of ``edge-runtime profile --output json`` (format ``PROFILE_FORMAT``)."""
    return {
        "format": PROFILE_FORMAT,
        "bundle": dataclasses.asdict(profile.bundle),
        "hardware_class": profile.hardware_class,
        "provider": profile.provider,
        "active_providers": list(profile.active_providers),
        "precision": profile.precision,
        "variant": profile.variant,
        "seconds": round(profile.seconds, 4),
        "frames": profile.frames,
        "fps": round(profile.fps, 3),
        "warmup": profile.warmup,
        "stages": {name: profile.stages[name].to_dict() for name in STAGES},
        "sensors_before": [reading_to_dict(r) for r in profile.sensors_before],
        "sensors_after": [reading_to_dict(r) for r in profile.sensors_after],
        "measured_at": profile.measured_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": profile.source,
        "variant_choice": dict(profile.variant_choice),
    }


# ------------------------------------------------------------------------------------------------ shell


def measure_frames(
    engine: InferenceEngine,
    frames: Iterator[Frame],
    *,
    seconds: float,
    warmup: int,
    max_frames: int | None = None,
    monotonic: Callable[[], float] = time.perf_counter,
) -> tuple[list[Timings], float]:
    """Run ``warmup`` frames untimed, then frames until ``seconds`` have passed (or ``max_frames``);
    returns the per-frame timings and the wall seconds the measured frames took."""
    if not seconds > 0:
        raise ProfileError(f"--seconds must be > 0, got {shown(seconds)}")
    if warmup < 0:
        raise ProfileError(f"--warmup must be >= 0, got {shown(warmup)}")
    for _ in range(warmup):
        frame = next(frames)
        engine.infer(frame.image_bgr, frame.frame_id)
    timings: list[Timings] = []
    start = monotonic()
    deadline = start + seconds
    now = start
    while now < deadline and (max_frames is None or len(timings) < max_frames):
        frame = next(frames)
        timings.append(engine.infer(frame.image_bgr, frame.frame_id).timings)
        now = monotonic()
    return timings, now - start


def profile_bundle(
    bundle_dir: Path,
    manifest: BundleManifest,
    frames: Iterator[Frame],
    *,
    seconds: float,
    warmup: int,
    read_sensors: Callable[[], Sequence[telemetry_pb2.SensorReading]],
    now: Callable[[], datetime],
    hardware_class: str,
    providers: Sequence[str] | None = None,
    precision: str | None = None,
    variant_runs: int = 30,
    cache_dir: Path,
    max_frames: int | None = None,
    intra_op_threads: int | None = None,
    fp16: bool = False,
) -> DeviceProfile:
    """Profile the bundle in ``bundle_dir`` on this device (see the module docstring for what is measured).

    ``precision``: a variant name to force (``fp32``, ``int8``); None = what this device would serve;
    ``fp16``: the operator's ``inference.fp16`` (FP16 kernels for every variant on TensorRT/CUDA).
    """
    wanted = tuple(providers) if providers else tuple(manifest.providers)
    choice: VariantChoice = choose_variant(
        bundle_dir,
        manifest,
        providers=wanted,
        runs=variant_runs,
        cache_dir=cache_dir,
        only=None if precision is None else {precision},
        fp16=fp16,
        intra_op_threads=intra_op_threads,
    )
    engine_fp16, engine_int8 = choice_engine_flags(manifest, choice, fp16=fp16)
    engine = InferenceEngine.load(
        choice.model_path,
        manifest.preprocess,
        manifest.postprocess,
        list(manifest.labels),
        providers=wanted,
        cache_dir=cache_dir,
        bundle_digest=manifest.digest,
        warmup=0,
        intra_op_threads=intra_op_threads,
        fp16=engine_fp16,
        int8=engine_int8,
    )
    before = tuple(read_sensors())
    measured_at = now()
    timings, elapsed = measure_frames(engine, frames, seconds=seconds, warmup=warmup, max_frames=max_frames)
    after = tuple(read_sensors())
    conditions = ProfileConditions(
        bundle=BundleFacts.of(manifest),
        hardware_class=hardware_class,
        provider=engine.provider,
        active_providers=engine.session.get_providers(),
        precision=choice.precision,
        variant=choice.name,
        warmup=warmup,
        sensors_before=before,
        sensors_after=after,
        measured_at=measured_at,
        variant_choice=choice.to_dict(),
    )
    profile = build_profile(timings, elapsed, conditions)
    log.info(
        "profile.measured",
        bundle=manifest.ref,
        provider=profile.provider,
        precision=profile.precision,
        variant=profile.variant,
        fp16=engine_fp16,
        int8=engine_int8,
        frames=profile.frames,
        fps=round(profile.fps, 2),
        p95_ms=round(profile.total.p95_ms, 3),
    )
    return profile
