"""Each config key, set in the operator config, changes what its reader produces (real bundle, real
onnxruntime, the runtime's own readers): the behavioural half of "every key is read or removed". The table
of readers is checked against the schema in ``tests/unit/test_config_keys.py``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.agent.canary.evaluator import canary_policy
from edge_runtime.agent.runner import FrameRunner
from edge_runtime.agent.telemetry.pipeline import TelemetryPipeline
from edge_runtime.agent.telemetry.uploader import UploadSettings
from edge_runtime.agent.update.config_readers import CONFIG_READERS
from edge_runtime.agent.update.switcher import load_engine
from edge_runtime.inference import EngineSlot
from edge_runtime.sources import open_source
from edge_runtime.telemetry.sensors import SensorReader
from edgefleet.contract.precedence import resolve_policy
from edgefleet.contract.signing import generate_keypair
from edgefleet_testing.bundles import SignedBundle, make_bundle

pytestmark = pytest.mark.integration

# A valid value for each key that differs from what applies without it (the bundle's or the default).
CANARY_VALUES: dict[str, Any] = {
    "sla.latency_ms": 123.0,
    "sla.thermal_buffer": 0.15,
    "canary.min_frames": 77,
    "canary.min_seconds": 3.0,
    "canary.headroom": 0.3,
    "canary.max_p95_ratio": 1.5,
    "canary.psi_max": 0.4,
    "canary.ks_alpha": 0.05,
    "canary.min_agreement": 0.8,
    "canary.inconclusive_limit": 4,
    "canary.watch_window_s": 12.0,
    "canary.watch_shadow_every_ms": 40.0,
    "canary.watch_shadow_max_share": 0.5,
    "canary.deadline_s": 400.0,
}
UPLOAD_VALUES: dict[str, Any] = {
    "telemetry.batch_max_records": 7,
    "telemetry.batch_max_bytes": 4096,
    "telemetry.batch_max_delay_s": 0.25,
    "telemetry.max_in_flight": 9,
    "telemetry.backlog_rate_per_s": 3.5,
}
REVIEW_VALUES: dict[str, Any] = {
    "review.sample_rate": 0.5,
    "review.low_confidence_below": 0.6,
    "review.max_per_hour": 0,
    "review.jpeg_quality": 33,
}


def nested(dotted: str, value: Any) -> dict[str, Any]:
    section, _, key = dotted.partition(".")
    return {section: {key: value}} if key else {section: value}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> SignedBundle:
    work = tmp_path_factory.mktemp("config-keys")
    return make_bundle(work / "b", generate_keypair("k"), version="1.0.0", seed=1)


def test_the_value_tables_cover_every_key_their_reader_owns() -> None:
    covered = {*CANARY_VALUES, *UPLOAD_VALUES, *REVIEW_VALUES}
    by_reader = {key for key, reader in CONFIG_READERS.items() if reader.endswith(("from_config", "_review_sampler"))}
    assert covered == by_reader


@pytest.mark.parametrize("key", sorted(CANARY_VALUES))
def test_canary_and_sla_keys_reach_the_canary_policy(bundle: SignedBundle, key: str) -> None:
    base = dataclasses.asdict(canary_policy({}, bundle.directory))
    got = dataclasses.asdict(canary_policy(nested(key, CANARY_VALUES[key]), bundle.directory))
    changed = {name: value for name, value in got.items() if value != base[name]}
    assert list(changed.values()) == [CANARY_VALUES[key]], (key, changed)


@pytest.mark.parametrize("key", sorted(UPLOAD_VALUES))
def test_telemetry_upload_keys_reach_the_upload_settings(key: str) -> None:
    def settings(config: dict[str, Any]) -> dict[str, Any]:
        return dataclasses.asdict(UploadSettings.from_config(resolve_policy(config).section("telemetry")))

    base, got = settings({}), settings(nested(key, UPLOAD_VALUES[key]))
    changed = {name: value for name, value in got.items() if value != base[name]}
    assert list(changed.values()) == [UPLOAD_VALUES[key]], (key, changed)


@pytest.fixture
def pipeline_for(tmp_path: Path) -> Iterator[Any]:
    opened: list[TelemetryPipeline] = []

    def make(config: dict[str, Any]) -> TelemetryPipeline:
        pipeline = TelemetryPipeline(
            tmp_path / str(len(opened)),
            stub=lambda: None,
            metadata=lambda: (),
            config=lambda: config,
            sensors=SensorReader(data_dir=tmp_path, nvidia_smi=None),
        )
        opened.append(pipeline)
        return pipeline

    yield make
    for pipeline in opened:
        pipeline.close()


def test_telemetry_window_buffer_and_review_keys_reach_the_pipeline(pipeline_for: Any) -> None:
    default = pipeline_for({})
    assert default.window_s == 10.0
    assert pipeline_for({"telemetry": {"window_s": 3}}).window_s == 3.0
    sized = pipeline_for({"telemetry": {"buffer_max_bytes": 1 << 20, "review_quota_bytes": 1 << 18}})
    assert sized.buffer_bounds() == (1 << 20, 1 << 18)
    assert (sized.buffer.max_bytes, sized.buffer.review_quota_bytes) == (1 << 20, 1 << 18)
    for key, value in REVIEW_VALUES.items():
        sampler = pipeline_for(nested(key, value))._review_sampler()
        assert sampler is not None
        assert getattr(sampler, key.partition(".")[2]) == value, key


def test_conf_threshold_and_providers_reach_the_loaded_engine(bundle: SignedBundle, tmp_path: Path) -> None:
    frame = next(open_source("synthetic", fps=0)).image_bgr
    plain = load_engine(bundle.directory, bundle.digest, cache_root=tmp_path, intra_op_threads=1)
    # The bundle's own threshold (0.25: a 4-class softmax always clears it) and its own provider list.
    assert plain.postprocess_spec.conf_threshold == 0.25 and plain.infer(frame, 0).outputs
    assert plain.session_info.unavailable == ()
    strict = load_engine(
        bundle.directory,
        bundle.digest,
        cache_root=tmp_path,
        intra_op_threads=1,
        config={"inference": {"conf_threshold": 1.0, "providers": ["cuda", "cpu"]}},
    )
    result = strict.infer(frame, 0)
    assert strict.postprocess_spec.conf_threshold == 1.0
    assert result.outputs == () and 0.25 <= result.top_confidence < 1.0  # no confident label, score kept
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "CUDAExecutionProvider" in strict.session_info.unavailable  # asked for, by the config


def test_a_new_frame_source_continues_the_frame_ids() -> None:
    runner = FrameRunner(EngineSlot(), open_source("synthetic:200"))
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while runner.snapshot().frames_idle < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        before = runner.snapshot().last_frame_id
        runner.switch_source(open_source("synthetic:200", seed=7))
        while runner.snapshot().frames_idle < before + 15 and time.monotonic() < deadline:
            time.sleep(0.01)
        after = runner.snapshot()
    finally:
        runner.stop()
    assert after.frames_idle >= before + 15
    # The new source starts at frame 0; the loop numbers on from the last id, so ids never go back.
    assert after.last_frame_id >= after.frames_idle - 1 > before
