"""The shadow canary and the trial watch on live frames: real engines, a real frame loop, no controller.

Each test commits a baseline bundle in an ``EngineSlot``, stages a candidate, and lets ``CanaryEvaluator``
run it in shadow on a synthetic stream; the verdict comes back as the update event it posts and the wire
``CanaryVerdict`` it reports. Watch windows run after a real swap: the trial engine serves and the engine it
replaced runs in shadow on a rate-limited sample of the same frames.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.agent.canary.evaluator import CanaryEvaluator
from edge_runtime.agent.canary.shadow import NOT_THROTTLING, ThermalState, thermal_throttling
from edge_runtime.agent.runner import FrameRunner
from edge_runtime.agent.update.switcher import SlotSwitcher, load_engine
from edge_runtime.inference import EngineSlot
from edge_runtime.sources import Frame, open_source
from edge_runtime.telemetry.sensors import SensorSnapshot
from edge_runtime.update.events import (
    CanaryFailed,
    CanaryInconclusive,
    CanaryPassed,
    CanaryStarted,
    TrialFailed,
    TrialPassed,
    UpdateEvent,
)
from edgefleet.contract.bundle_spec import BundleSpec
from edgefleet.v1 import common_pb2
from edgefleet.v1.telemetry_pb2 import SensorReading
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_testing.modelgen import make_classifier

pytestmark = pytest.mark.integration

SIZE = 32
FRAME_SIZE = (160, 120)


@dataclass(frozen=True)
class Bundle:
    directory: Path
    digest: str


def build(workdir: Path, version: str, *, extra_matmuls: int = 0, logit_shift: float = 0.0) -> Bundle:
    workdir.mkdir(parents=True)
    model = make_classifier(
        workdir / "model.onnx", size=SIZE, seed=1, num_classes=4, extra_matmuls=extra_matmuls, logit_shift=logit_shift
    )
    spec = BundleSpec.from_dict(
        {
            "name": "classifier",
            "version": version,
            "model": str(model),
            "preprocess": {"size": [SIZE, SIZE], "layout": "nchw", "dtype": "float32", "scale": 1 / 255},
            "postprocess": {"kind": "classification", "top_k": 1},
            "labels": ["a", "b", "c", "d"],
            "latency": {"sla_ms": 500},
            "providers": ["cpu"],
        },
        source=f"classifier-{version}.yaml",
        base_dir=workdir,
    )
    manifest = build_bundle(spec, workdir / "bundle", golden_count=2)
    return Bundle(workdir / "bundle", manifest.digest)


@dataclass(frozen=True)
class Bundles:
    v1: Bundle
    same: Bundle
    slow: Bundle
    shifted: Bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    root = tmp_path_factory.mktemp("bundles")
    return Bundles(
        v1=build(root / "v1", "1.0.0"),
        same=build(root / "same", "1.0.1"),
        slow=build(root / "slow", "2.0.0", extra_matmuls=600),
        shifted=build(root / "shifted", "3.0.0", logit_shift=1.0),
    )


class BreakableSource:
    """Synthetic frames at 120 FPS; once ``broken`` is set, frames the preprocessing cannot take."""

    def __init__(self) -> None:
        self.broken = threading.Event()
        self._inner = open_source("synthetic:120", size=FRAME_SIZE, seed=3)

    def __iter__(self) -> Iterator[Frame]:
        for frame in self._inner:
            if self.broken.is_set():
                yield Frame(frame.frame_id, np.zeros((0, 0, 3), np.uint8), frame.captured_at)
            else:
                yield frame


class Rig:
    """A frame loop over a slot serving ``baseline`` (or nothing) and the evaluator under test."""

    def __init__(self, tmp: Path, baseline: Bundle | None, config: dict[str, Any]) -> None:
        self.config = config
        self.slot = EngineSlot()
        self.switcher = SlotSwitcher(
            self.slot, cache_root=tmp / "cache", configs=lambda _digest: config, intra_op_threads=1
        )
        if baseline is not None:
            self.switcher.swap_to_committed(baseline.digest, baseline.directory)
        self.source = BreakableSource()
        self.runner = FrameRunner(self.slot, iter(self.source))
        self.events: queue.Queue[UpdateEvent] = queue.Queue()
        self.verdicts: list[common_pb2.CanaryVerdict] = []
        self.alerts: list[tuple[str, str, dict[str, float]]] = []
        self.thermal = NOT_THROTTLING
        self.evaluator = CanaryEvaluator(
            self.switcher,
            self.runner,
            self.events.put,
            config=lambda: config,
            report_verdict=self.verdicts.append,
            thermal=lambda: self.thermal,
            alert=lambda digest, reason, numbers: self.alerts.append((digest, reason, dict(numbers))),
            decide_every_s=0.2,
            thermal_every_s=0.2,
        )
        self.runner.start()

    def canary(self, candidate: Bundle) -> UpdateEvent:
        self.switcher.stage(candidate.digest, candidate.directory)
        started = self.evaluator.start_canary(candidate.digest, candidate.directory)
        assert list(started) == [CanaryStarted()]
        return self.events.get(timeout=30)

    def promote(self, candidate: Bundle) -> UpdateEvent:
        """Swap to a staged candidate (as the update machine does after a passed canary) and watch it."""
        self.switcher.swap_to_candidate(candidate.digest)
        assert list(self.evaluator.start_watch(candidate.digest, candidate.directory)) == []
        return self.events.get(timeout=30)

    def close(self) -> None:
        self.runner.stop()


@pytest.fixture
def rigs(tmp_path: Path) -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.close()


def config(**canary: Any) -> dict[str, Any]:
    # max_p95_ratio 5: these models take a fraction of a millisecond, where a busy test machine moves a
    # 60-frame canary's p95 by more than 10 %. watch_shadow_every_ms 0: pair every frame the share allows, so
    # a half-second watch window holds enough pairs for a paired judgement.
    return {
        "canary": {
            "min_frames": 60,
            "min_seconds": 0.5,
            "watch_window_s": 0.5,
            "max_p95_ratio": 5.0,
            "watch_shadow_every_ms": 0,
            **canary,
        }
    }


def test_same_model_passes_with_its_numbers_then_the_watch_passes(
    bundles: Bundles, tmp_path: Path, rigs: list[Rig]
) -> None:
    rig = Rig(tmp_path, bundles.v1, config())
    rigs.append(rig)
    event = rig.canary(bundles.same)

    assert isinstance(event, CanaryPassed), event
    (verdict,) = rig.verdicts
    assert verdict.outcome == common_pb2.CanaryVerdict.OUTCOME_PASS
    assert verdict.phase == "canary"
    assert verdict.candidate_digest == bundles.same.digest
    assert verdict.baseline_digest == bundles.v1.digest
    assert verdict.frames >= 60 and verdict.seconds >= 0.5
    assert verdict.candidate_latency.count == verdict.frames == verdict.baseline_latency.count
    assert 0 < verdict.candidate_latency.p95_ms <= verdict.latency_budget_ms == pytest.approx(400.0)
    assert verdict.agreement == 1.0
    assert verdict.ks_p_value > 0.01
    assert verdict.errors == 0 and not verdict.reasons
    assert "canary pass" in event.summary

    # The served frames were v1's all along; now promote and watch, side by side with v1 (still loaded).
    assert rig.runner.stats_for(bundles.same.digest) == (0, 0)
    assert isinstance(rig.promote(bundles.same), TrialPassed)
    watch = rig.verdicts[-1]
    assert watch.phase == "watch" and watch.outcome == common_pb2.CanaryVerdict.OUTCOME_PASS
    assert watch.candidate_digest == bundles.same.digest and watch.baseline_digest == bundles.v1.digest
    pairs = watch.baseline_latency.count
    assert pairs == watch.candidate_latency.count and 30 <= pairs <= watch.frames
    assert watch.agreement == 1.0 and watch.latency_p_value > 0 and not watch.reasons


def test_a_slower_candidate_fails_the_sla(bundles: Bundles, tmp_path: Path) -> None:
    # An SLA whose budget sits between the two engines' measured latency, so the check is not a race with
    # noise. Medians over 60 frames: a 40-frame p95 on a busy host is one stalled frame (seen: 2.0 ms for an
    # engine whose typical frame takes a fraction of that), while the canary's candidate p95 is never below
    # the candidate's median.
    typical = {}
    for bundle in (bundles.v1, bundles.slow):
        engine = load_engine(bundle.directory, bundle.digest, cache_root=tmp_path / "probe", intra_op_threads=1)
        source = open_source("synthetic:0", size=FRAME_SIZE, seed=3)
        frames = [next(source) for _ in range(60)]
        typical[bundle.digest] = float(
            np.median([engine.infer(f.image_bgr, f.frame_id).timings.total_ms for f in frames])
        )
    fast, slow = typical[bundles.v1.digest], typical[bundles.slow.digest]
    assert slow > 3 * fast, typical
    sla = math.sqrt(fast * slow) / 0.8
    rig = Rig(tmp_path, bundles.v1, {**config(), "sla": {"latency_ms": sla}})
    try:
        event = rig.canary(bundles.slow)
    finally:
        rig.close()

    assert isinstance(event, CanaryFailed), event
    (verdict,) = rig.verdicts
    assert verdict.outcome == common_pb2.CanaryVerdict.OUTCOME_FAIL
    assert verdict.latency_budget_ms == pytest.approx(sla * 0.8)
    assert verdict.candidate_latency.p95_ms > verdict.latency_budget_ms
    assert any("exceeds budget" in r and f"SLA {sla:g} ms" in r for r in verdict.reasons), verdict.reasons
    assert "exceeds budget" in event.reason


def test_shifted_confidences_fail_with_drift(bundles: Bundles, tmp_path: Path, rigs: list[Rig]) -> None:
    rig = Rig(tmp_path, bundles.v1, config())
    rigs.append(rig)
    event = rig.canary(bundles.shifted)

    assert isinstance(event, CanaryFailed), event
    (verdict,) = rig.verdicts
    assert verdict.outcome == common_pb2.CanaryVerdict.OUTCOME_FAIL
    assert verdict.ks_statistic > 0.5 and verdict.ks_p_value < 0.01
    assert any(r.startswith("confidence drift: KS") for r in verdict.reasons), verdict.reasons
    assert "confidence drift" in event.reason


def test_too_few_frames_by_the_deadline_is_inconclusive_then_rejected_at_the_limit(
    bundles: Bundles, tmp_path: Path, rigs: list[Rig]
) -> None:
    rig = Rig(tmp_path, bundles.v1, config(min_frames=100_000, min_seconds=0.2, deadline_s=0.6, inconclusive_limit=2))
    rigs.append(rig)
    event = rig.canary(bundles.same)

    assert isinstance(event, CanaryInconclusive), event
    assert "before the deadline" in event.reason
    (verdict,) = rig.verdicts
    assert verdict.outcome == common_pb2.CanaryVerdict.OUTCOME_INCONCLUSIVE
    assert 0 < verdict.frames < 100_000

    # The update machine starts the canary again; the second inconclusive run hits the policy's limit.
    assert list(rig.evaluator.start_canary(bundles.same.digest, bundles.same.directory)) == []
    second = rig.events.get(timeout=30)
    assert isinstance(second, CanaryFailed), second
    assert "inconclusive 2 times in a row (canary.inconclusive_limit 2)" in second.reason
    assert [v.outcome for v in rig.verdicts] == [common_pb2.CanaryVerdict.OUTCOME_INCONCLUSIVE] * 2


def test_first_ever_bundle_is_judged_alone_on_sla_and_errors(bundles: Bundles, tmp_path: Path, rigs: list[Rig]) -> None:
    rig = Rig(tmp_path, None, config())
    rigs.append(rig)
    event = rig.canary(bundles.v1)

    assert isinstance(event, CanaryPassed), event
    (verdict,) = rig.verdicts
    assert verdict.baseline_digest == ""
    assert verdict.frames >= 60
    assert rig.runner.snapshot().frames_inferred == 0  # nothing was served: the candidate ran alone


def test_errors_in_the_watch_window_fail_the_trial(bundles: Bundles, tmp_path: Path, rigs: list[Rig]) -> None:
    rig = Rig(tmp_path, bundles.v1, config(watch_window_s=30))
    rigs.append(rig)
    assert isinstance(rig.canary(bundles.same), CanaryPassed)
    rig.switcher.swap_to_candidate(bundles.same.digest)
    rig.evaluator.start_watch(bundles.same.digest, bundles.same.directory)
    rig.source.broken.set()

    event = rig.events.get(timeout=10)  # at the first error, long before the 30 s window ends
    assert isinstance(event, TrialFailed), event
    assert "inference errors" in event.reason and "last error" in event.reason
    watch = rig.verdicts[-1]
    assert watch.phase == "watch" and watch.outcome == common_pb2.CanaryVerdict.OUTCOME_FAIL
    assert watch.errors > 0


def test_stop_ends_a_running_canary_without_a_verdict(bundles: Bundles, tmp_path: Path, rigs: list[Rig]) -> None:
    rig = Rig(tmp_path, bundles.v1, config(min_frames=100_000, deadline_s=60))
    rigs.append(rig)
    rig.switcher.stage(bundles.same.digest, bundles.same.directory)
    rig.evaluator.start_canary(bundles.same.digest, bundles.same.directory)
    assert rig.runner.shadowing == bundles.same.digest
    rig.evaluator.stop(bundles.same.digest)
    with pytest.raises(queue.Empty):
        rig.events.get(timeout=1.0)
    assert rig.verdicts == []
    assert rig.runner.shadowing is None


def test_a_slower_trial_fails_its_watch_against_the_engine_it_replaced(
    bundles: Bundles, tmp_path: Path, rigs: list[Rig]
) -> None:
    # No canary: staged and swapped straight in, so only the paired watch stands between it and a commit.
    rig = Rig(tmp_path, bundles.v1, config(max_p95_ratio=1.5, watch_window_s=1.0))
    rigs.append(rig)
    rig.switcher.stage(bundles.slow.digest, bundles.slow.directory)

    event = rig.promote(bundles.slow)

    assert isinstance(event, TrialFailed), event
    watch = rig.verdicts[-1]
    assert watch.phase == "watch" and watch.outcome == common_pb2.CanaryVerdict.OUTCOME_FAIL
    assert watch.baseline_digest == bundles.v1.digest and watch.baseline_latency.count >= 30
    assert watch.candidate_latency.p95_ms > 1.5 * watch.baseline_latency.p95_ms
    assert watch.latency_p_value < 0.01
    assert any("latency regression" in r and "vs the previous bundle" in r for r in watch.reasons), watch.reasons
    assert "latency regression" in event.reason
    assert not rig.alerts


def test_throttling_without_a_paired_regression_is_reported_not_rolled_back(
    bundles: Bundles, tmp_path: Path, rigs: list[Rig]
) -> None:
    rig = Rig(tmp_path, bundles.v1, config(watch_window_s=1.0))
    rigs.append(rig)
    rig.thermal = ThermalState(True, {"cpu_clock_ratio": 0.6, "cpu_temp_c": 91.0}, "throttling: cpu clock 60%")
    rig.switcher.stage(bundles.same.digest, bundles.same.directory)

    assert isinstance(rig.promote(bundles.same), TrialPassed)

    watch = rig.verdicts[-1]
    assert watch.outcome == common_pb2.CanaryVerdict.OUTCOME_PASS and watch.throttling
    assert any("not attributed to the bundle" in n for n in watch.notes), watch.notes
    ((digest, reason, numbers),) = rig.alerts
    assert digest == bundles.same.digest and reason.startswith("thermal throttling during the watch window")
    assert numbers["cpu_temp_c"] == 91.0 and numbers["paired_frames"] >= 30


def test_throttling_with_a_paired_regression_is_the_bundles(bundles: Bundles, tmp_path: Path, rigs: list[Rig]) -> None:
    rig = Rig(tmp_path, bundles.v1, config(max_p95_ratio=1.5, watch_window_s=1.0))
    rigs.append(rig)
    rig.thermal = ThermalState(True, {"gpu_clock_ratio": 0.5, "gpu_temp_c": 88.0}, "throttling: gpu clock 50%")
    rig.switcher.stage(bundles.slow.digest, bundles.slow.directory)

    event = rig.promote(bundles.slow)

    assert isinstance(event, TrialFailed), event
    assert "while thermally throttling" in event.reason
    assert rig.verdicts[-1].throttling and rig.alerts == []


def test_the_shadow_is_rate_limited_on_the_frame_path(bundles: Bundles, tmp_path: Path, rigs: list[Rig]) -> None:
    # Defaults: one shadow frame per 100 ms at most, from a 120 FPS stream.
    rig = Rig(tmp_path, bundles.v1, config(watch_window_s=1.5, watch_shadow_every_ms=100))
    rigs.append(rig)
    rig.switcher.stage(bundles.same.digest, bundles.same.directory)

    assert isinstance(rig.promote(bundles.same), TrialPassed)

    watch = rig.verdicts[-1]
    pairs = watch.baseline_latency.count
    assert 1 <= pairs <= watch.seconds / 0.1 + 1, (pairs, watch.seconds)
    assert watch.frames > 3 * pairs, (watch.frames, pairs)
    assert any(n.startswith(f"latency, drift and agreement not compared: {pairs} valid paired") for n in watch.notes)


def test_a_first_install_watch_judges_the_sla_alone(bundles: Bundles, tmp_path: Path, rigs: list[Rig]) -> None:
    rig = Rig(tmp_path, None, config())
    rigs.append(rig)
    assert isinstance(rig.canary(bundles.v1), CanaryPassed)

    assert isinstance(rig.promote(bundles.v1), TrialPassed)

    watch = rig.verdicts[-1]
    assert watch.phase == "watch" and watch.baseline_digest == "" and watch.baseline_latency.count == 0
    assert watch.candidate_latency.count == watch.frames > 0
    assert watch.notes[0].startswith("first install: no previous bundle")


def test_a_config_candidate_is_watched_against_the_same_bundle_under_the_previous_config(
    bundles: Bundles, tmp_path: Path, rigs: list[Rig]
) -> None:
    # The previous "session" of a config candidate is the same bundle built under the previous config.
    rig = Rig(tmp_path, bundles.v1, config(watch_window_s=1.0))
    rigs.append(rig)
    old = rig.slot.current
    old.config_digest = "sha256:" + "1" * 64
    new = load_engine(bundles.v1.directory, bundles.v1.digest, cache_root=tmp_path / "cache", intra_op_threads=1)
    new.config_digest = "sha256:" + "2" * 64
    rig.slot.prepare(lambda: new).result(timeout=30)

    assert isinstance(rig.promote(bundles.v1), TrialPassed)

    watch = rig.verdicts[-1]
    assert watch.candidate_digest == watch.baseline_digest == bundles.v1.digest
    assert (watch.candidate_config_digest, watch.baseline_config_digest) == (new.config_digest, old.config_digest)
    assert watch.baseline_latency.count >= 30 and watch.agreement == 1.0


def sensors(clock: float, max_clock: float, temp: float | None, name: str = "gpu") -> SensorSnapshot:
    readings = [SensorReading(name=f"{name}_clock", kind="clock_mhz", value=clock, max_value=max_clock)]
    if temp is None:
        readings.append(SensorReading(name=f"{name}_temp", kind="temp_c", missing=True))
    else:
        readings.append(SensorReading(name=f"{name}_temp", kind="temp_c", value=temp))
    return SensorSnapshot(readings=tuple(readings), memory_free_bytes=0, disk_free_bytes=0)


@pytest.mark.parametrize(
    ("snapshot", "throttling"),
    [
        (sensors(600, 1000, 90), True),  # held low while hot
        (sensors(600, 1000, 90, name="cpu"), True),
        (sensors(300, 1000, 45), False),  # an idle clock is not throttling
        (sensors(950, 1000, 95), False),  # hot at full clock: not (yet) throttling
        (sensors(600, 1000, None), False),  # no temperature sensor: cannot tell, not throttling
        (sensors(600, 0, 95), False),  # unknown maximum clock
    ],
)
def test_thermal_throttling_needs_a_low_clock_and_heat(snapshot: SensorSnapshot, throttling: bool) -> None:
    assert thermal_throttling(snapshot) is throttling
