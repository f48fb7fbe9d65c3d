"""The canary verdict: statistics against textbook values, then table-driven verdicts on seeded samples."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.canary.agreement import frame_detection_agreement, iou
from edge_runtime.canary.errors import PendingVerdictError, PolicyError, SamplesError
from edge_runtime.canary.policy import CanaryPolicy, InconclusivePolicy, after_inconclusive
from edge_runtime.canary.report import Outcome, verdict_to_proto
from edge_runtime.canary.samples import CanarySamples, Detection
from edge_runtime.canary.stats import (
    average_ranks,
    kolmogorov_sf,
    ks_two_sample,
    mann_whitney_greater,
    population_stability_index,
    quantile_edges,
)
from edge_runtime.canary.verdict import WATCH_MIN_PAIRED_FRAMES, decide_verdict, decide_watch
from edgefleet.contract.bundle_policy import CanaryDefaults
from edgefleet.v1 import common_pb2

# ------------------------------------------------------------------ statistics


def test_average_ranks_share_ties() -> None:
    assert average_ranks([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert average_ranks([5, 5, 5]).tolist() == [2.0, 2.0, 2.0]


def test_mann_whitney_textbook_example_without_ties() -> None:
    # scipy.stats.mannwhitneyu docs: males vs females, U1 = 17; asymptotic two-sided p = 0.11134688653314041,
    # so one-sided "greater" is half. By hand: mu = 10, sigma^2 = 5*4*10/12, z = (17 - 10 - 0.5) / sigma.
    result = mann_whitney_greater([19, 22, 16, 29, 24], [20, 11, 17, 12])
    assert result.u == 17.0
    assert result.z == pytest.approx(6.5 / math.sqrt(200 / 12))
    assert result.p_value == pytest.approx(0.11134688653314041 / 2, rel=1e-9)


def test_mann_whitney_tie_correction_by_hand() -> None:
    # x = [1, 2, 2, 3], y = [2, 3, 4, 5]; pooled ranks: 1->1, 2->3 (x3 tie), 3->5.5 (x2 tie), 4->7, 5->8.
    # R_x = 1 + 3 + 3 + 5.5 = 12.5, U_x = 12.5 - 10 = 2.5. Ties: t=3 and t=2: sum(t^3 - t) = 24 + 6 = 30.
    # var = 4*4/12 * (9 - 30 / (8*7)) = 11.285714...; z = (2.5 - 8 - 0.5) / sqrt(var).
    result = mann_whitney_greater([1, 2, 2, 3], [2, 3, 4, 5])
    assert result.u == 2.5
    variance = 16 / 12 * (9 - 30 / 56)
    assert result.z == pytest.approx(-6.0 / math.sqrt(variance))
    assert result.p_value == pytest.approx(0.5 * math.erfc(result.z / math.sqrt(2)))
    assert result.p_value > 0.9  # x is smaller, so "x slower" has no support


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=15), st.lists(st.integers(0, 6), min_size=1, max_size=15))
def test_mann_whitney_u_equals_pair_count(x: list[int], y: list[int]) -> None:
    # U is, by definition, the number of pairs with x > y plus half the ties; rank sums must agree.
    pairs = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y)
    result = mann_whitney_greater(x, y)
    assert result.u == pytest.approx(pairs)
    assert 0.0 <= result.p_value <= 1.0


def test_mann_whitney_all_tied_or_empty_is_no_evidence() -> None:
    assert mann_whitney_greater([3, 3], [3, 3, 3]).p_value == 1.0
    assert mann_whitney_greater([], [1.0]).p_value == 1.0


@pytest.mark.parametrize(
    ("lam", "expected"),
    [
        # Kolmogorov distribution critical values: Q(1.2238) = 0.10, Q(1.3581) = 0.05, Q(1.6276) = 0.01.
        (1.2238, 0.10),
        (1.3581, 0.05),
        (1.6276, 0.01),
        # Table value K(0.5) = 0.0361 (CDF), so Q = 0.9639; Q(1.0) = 0.2700.
        (0.5, 0.9639),
        (1.0, 0.2700),
    ],
)
def test_kolmogorov_tail_matches_tables(lam: float, expected: float) -> None:
    assert kolmogorov_sf(lam) == pytest.approx(expected, abs=2e-4)


def test_kolmogorov_series_meet_continuously() -> None:
    assert kolmogorov_sf(1.18 - 1e-9) == pytest.approx(kolmogorov_sf(1.18), abs=1e-9)
    assert kolmogorov_sf(0.0) == 1.0
    assert kolmogorov_sf(10.0) == pytest.approx(0.0, abs=1e-12)


def test_ks_statistic_by_hand() -> None:
    # F_x steps at 1..4, F_y at 3..6: at 2, F_x = 0.5 and F_y = 0 -> D = 0.5; lambda = sqrt(4*4/8) * 0.5.
    result = ks_two_sample([1, 2, 3, 4], [3, 4, 5, 6])
    assert result.statistic == 0.5
    assert result.p_value == pytest.approx(kolmogorov_sf(math.sqrt(2) * 0.5))
    disjoint = ks_two_sample([1, 2, 3], [4, 5, 6])
    assert disjoint.statistic == 1.0
    assert ks_two_sample([1, 2, 3], [1, 2, 3]).statistic == 0.0


def test_psi_by_hand() -> None:
    # Baseline 0..99 with 2 bins: edge at the median 49.5. Candidate: 75 below, 25 above.
    # PSI = (0.75 - 0.5) ln(0.75/0.5) + (0.25 - 0.5) ln(0.25/0.5).
    baseline = np.arange(100.0)
    candidate = np.concatenate([np.zeros(75), np.full(25, 99.0)])
    expected = 0.25 * math.log(1.5) + (-0.25) * math.log(0.5)
    assert population_stability_index(candidate, baseline, bins=2) == pytest.approx(expected)
    assert population_stability_index(baseline, baseline, bins=10) == pytest.approx(0.0)


def test_quantile_edges_collapse_ties() -> None:
    assert quantile_edges(np.ones(50), 10).tolist() == [1.0]
    assert quantile_edges(np.arange(10.0), 10).size == 9


# ------------------------------------------------------------------ agreement


def test_iou_and_detection_matching() -> None:
    a = Detection(0, (0.0, 0.0, 10.0, 10.0), 0.9)
    assert iou(a.box, (5.0, 0.0, 15.0, 10.0)) == pytest.approx(50 / 150)
    same_class_close = Detection(0, (1.0, 0.0, 11.0, 10.0), 0.8)
    other_class = Detection(1, (0.0, 0.0, 10.0, 10.0), 0.8)
    assert frame_detection_agreement([same_class_close], [a], 0.5) == 1.0
    assert frame_detection_agreement([other_class], [a], 0.5) == 0.0
    assert frame_detection_agreement([], [], 0.5) == 1.0
    assert frame_detection_agreement([a], [], 0.5) == 0.0
    # One candidate detection cannot match two baseline detections.
    assert frame_detection_agreement([a], [a, same_class_close], 0.5) == 0.5


# ------------------------------------------------------------------ verdicts

N = 600
SMALL = 300
POLICY = CanaryPolicy(sla_ms=40.0, min_frames=300)


def side(
    rng: np.random.Generator,
    n: int = N,
    *,
    latency: float = 20.0,
    conf_mean: float = 0.8,
    labels: np.ndarray | None = None,
    errors: int = 0,
    nans: int = 0,
) -> CanarySamples:
    lat = rng.normal(latency, 1.5, n).clip(0.1)
    conf = rng.normal(conf_mean, 0.05, n).clip(0.0, 1.0)
    err = np.zeros(n, dtype=bool)
    err[:errors] = True
    nan_flags = np.zeros(n, dtype=bool)
    nan_flags[errors : errors + nans] = True
    return CanarySamples.build(
        latency_ms=lat,
        confidence=conf,
        errors=err,
        nans=nan_flags,
        labels=rng.integers(0, 5, n) if labels is None else labels,
    )


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[np.random.Generator], tuple[CanarySamples, CanarySamples]]
    outcome: Outcome
    reason_parts: tuple[str, ...] = ()
    elapsed_s: float = 60.0
    deadline: bool = False


def _pair(rng: np.random.Generator, n: int = N, **candidate: Any) -> tuple[CanarySamples, CanarySamples]:
    labels = rng.integers(0, 5, n)
    baseline = side(rng, n, labels=labels)
    return side(rng, n, labels=labels, **candidate), baseline


def _disagree(rng: np.random.Generator) -> tuple[CanarySamples, CanarySamples]:
    labels = rng.integers(0, 5, N)
    flipped = labels.copy()
    flipped[: N // 5] = (flipped[: N // 5] + 1) % 5  # 80 % agreement
    return side(rng, labels=flipped), side(rng, labels=labels)


CASES = [
    Case("pass", lambda r: _pair(r), Outcome.PASS),
    Case("pass on the KS path", lambda r: _pair(r, SMALL), Outcome.PASS),
    Case(
        "sla breach",
        lambda r: _pair(r, latency=35.0),
        Outcome.FAIL,
        ("exceeds budget 32.0 ms", "SLA 40 ms × (1 − 0.20)"),
    ),
    Case(
        "latency regression, 30% slower but within budget",
        lambda r: _pair(r, latency=26.0),
        Outcome.FAIL,
        ("latency regression", "(limit 1.10×)", "Mann–Whitney p = "),
    ),
    Case(
        "drift on the PSI path",
        lambda r: _pair(r, conf_mean=0.65),
        Outcome.FAIL,
        ("confidence drift: PSI", "> 0.25", "600 vs 600 frames"),
    ),
    Case(
        "drift on the KS path",
        lambda r: _pair(r, SMALL, conf_mean=0.75),
        Outcome.FAIL,
        ("confidence drift: KS D = ", "< 0.01", "300 vs 300 frames"),
    ),
    Case("disagreement", _disagree, Outcome.FAIL, ("agreement 0.800 < 0.90", "top-1 labels over 600 frames")),
    Case("errors", lambda r: _pair(r, errors=3), Outcome.FAIL, ("3 inference errors in 600 candidate frames",)),
    Case("NaNs", lambda r: _pair(r, nans=2), Outcome.FAIL, ("2 frames with NaN outputs in 600 candidate frames",)),
    Case(
        "errors fail before min_frames",
        lambda r: _pair(r, 40, errors=1),
        Outcome.FAIL,
        ("1 inference errors in 40 candidate frames",),
    ),
    Case(
        "inconclusive at the deadline",
        lambda r: _pair(r, 120),
        Outcome.INCONCLUSIVE,
        ("only 120 frames in 60.0 s before the deadline", "needs 300 frames"),
        deadline=True,
    ),
    Case("pending before the deadline", lambda r: _pair(r, 120), Outcome.PENDING, ("collecting: 120 of 300 frames",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_verdict_table(case: Case) -> None:
    candidate, baseline = case.make(np.random.default_rng(7))
    verdict = decide_verdict(candidate, baseline, POLICY, elapsed_s=case.elapsed_s, deadline_reached=case.deadline)
    assert verdict.outcome is case.outcome, verdict.reasons
    if case.outcome is Outcome.PASS:
        assert verdict.reasons == ()
    for part in case.reason_parts:
        assert any(part in reason for reason in verdict.reasons), (part, verdict.reasons)
    assert verdict.frames == candidate.frames
    assert verdict.latency_budget_ms == pytest.approx(32.0)


def test_numbers_are_recorded_and_match_the_reason() -> None:
    candidate, baseline = _pair(np.random.default_rng(3), latency=26.0)
    verdict = decide_verdict(candidate, baseline, POLICY, elapsed_s=60.0, deadline_reached=False)
    assert verdict.p95_ratio == pytest.approx(verdict.candidate_latency.p95_ms / verdict.baseline_latency.p95_ms)
    assert verdict.p95_ratio > 1.2
    assert verdict.effect_ms is not None and verdict.effect_ms == pytest.approx(6.0, abs=0.5)
    assert verdict.latency_p_value is not None and verdict.latency_p_value < 1e-10
    assert verdict.psi is not None and verdict.ks_statistic is None  # 600 frames: PSI path
    assert f"{verdict.p95_ratio:.2f}×" in verdict.reasons[0]
    small = decide_verdict(*_pair(np.random.default_rng(3), SMALL), POLICY, elapsed_s=60.0, deadline_reached=False)
    assert small.psi is None and small.ks_statistic is not None and small.ks_p_value is not None


def test_significant_but_tiny_slowdown_is_not_a_regression() -> None:
    # +0.3 ms on 20 ms: Mann–Whitney is significant at 600 frames, but the effect is under min_effect_ms.
    rng = np.random.default_rng(11)
    candidate, baseline = _pair(rng, latency=20.3)
    verdict = decide_verdict(candidate, baseline, POLICY, elapsed_s=60.0, deadline_reached=False)
    assert verdict.latency_p_value is not None and verdict.latency_p_value < POLICY.latency_alpha
    assert verdict.outcome is Outcome.PASS


def test_min_seconds_gates_like_min_frames() -> None:
    policy = CanaryPolicy(sla_ms=40.0, min_frames=300, min_seconds=30.0)
    candidate, baseline = _pair(np.random.default_rng(1))
    pending = decide_verdict(candidate, baseline, policy, elapsed_s=10.0, deadline_reached=False)
    assert pending.outcome is Outcome.PENDING
    assert "10.0 of 30.0 s" in pending.reasons[0]
    late = decide_verdict(candidate, baseline, policy, elapsed_s=10.0, deadline_reached=True)
    assert late.outcome is Outcome.INCONCLUSIVE


def test_thermal_buffer_shrinks_the_budget() -> None:
    policy = CanaryPolicy(sla_ms=40.0, headroom=0.2, thermal_buffer=0.1)
    candidate, baseline = _pair(np.random.default_rng(2), latency=27.0)
    verdict = decide_verdict(candidate, baseline, policy, elapsed_s=60.0, deadline_reached=False)
    assert verdict.latency_budget_ms == pytest.approx(28.0)
    assert any("budget 28.0 ms (SLA 40 ms × (1 − 0.20 − 0.10))" in r for r in verdict.reasons)


def _detections(rng: np.random.Generator, n: int, *, drop: bool) -> tuple[CanarySamples, CanarySamples]:
    base_frames: list[tuple[Detection, ...]] = []
    cand_frames: list[tuple[Detection, ...]] = []
    for i in range(n):
        if i % 4 == 0:
            base_frames.append(())
            cand_frames.append(())
            continue
        x = float(rng.uniform(0, 100))
        det = Detection(int(i % 3), (x, x, x + 20.0, x + 20.0), 0.9)
        shifted = Detection(det.class_id, (x + 1.0, x, x + 21.0, x + 20.0), 0.85)
        base_frames.append((det,))
        cand_frames.append(() if drop and i % 4 == 1 else (shifted,))
    lat_c, lat_b = rng.normal(20, 1, n), rng.normal(20, 1, n)
    conf_c, conf_b = rng.normal(0.8, 0.05, n), rng.normal(0.8, 0.05, n)
    return (
        CanarySamples.build(latency_ms=lat_c, confidence=conf_c, detections=cand_frames),
        CanarySamples.build(latency_ms=lat_b, confidence=conf_b, detections=base_frames),
    )


def test_detection_agreement_counts_matched_boxes_and_empty_frames() -> None:
    same = decide_verdict(
        *_detections(np.random.default_rng(5), 400, drop=False), POLICY, elapsed_s=60, deadline_reached=False
    )
    assert same.agreement == 1.0 and same.outcome is Outcome.PASS
    dropped = decide_verdict(
        *_detections(np.random.default_rng(5), 400, drop=True), POLICY, elapsed_s=60, deadline_reached=False
    )
    # A quarter of the frames lose their only detection.
    assert dropped.agreement == pytest.approx(0.75)
    assert dropped.outcome is Outcome.FAIL
    assert any("agreement 0.750 < 0.90 (same-class detections at IoU ≥ 0.50" in r for r in dropped.reasons)


def test_samples_are_validated_and_frozen() -> None:
    with pytest.raises(SamplesError, match="latency_ms=3, confidence=2"):
        CanarySamples.build(latency_ms=[1, 2, 3], confidence=[0.5, 0.5])
    with pytest.raises(SamplesError, match=r"got -1\.0"):
        CanarySamples.build(latency_ms=[1, -1], confidence=[0.5, 0.5])
    # An errored frame has no meaningful latency.
    ok = CanarySamples.build(latency_ms=[1, math.nan], confidence=[0.5, math.nan], errors=[False, True])
    assert ok.error_count == 1 and ok.nan_count == 0
    with pytest.raises(ValueError, match="read-only"):
        ok.latency_ms[0] = 5.0
    a = CanarySamples.build(latency_ms=[1.0] * 3, confidence=[0.5] * 3)
    b = CanarySamples.build(latency_ms=[1.0] * 4, confidence=[0.5] * 4)
    with pytest.raises(SamplesError, match="candidate has 3 frames but baseline has 4"):
        decide_verdict(a, b, POLICY, elapsed_s=1.0, deadline_reached=False)


def test_non_finite_confidence_counts_as_nan() -> None:
    s = CanarySamples.build(latency_ms=[1.0, 2.0], confidence=[0.5, math.inf])
    assert s.nan_count == 1 and s.valid.tolist() == [True, False]


# ------------------------------------------------------------------ policy


def test_policy_from_config_layers_config_over_bundle_over_defaults() -> None:
    bundle = CanaryDefaults(min_frames=200, min_seconds=30.0, headroom=0.3, psi_max=0.2)
    config = {
        "canary": {"min_frames": 500, "headroom": None, "inconclusive_limit": 3, "deadline_s": 120},
        "sla": {"latency_ms": 50, "thermal_buffer": 0.1},
    }
    policy = CanaryPolicy.from_config(config, bundle_canary=bundle, bundle_sla_ms=40.0)
    assert policy.min_frames == 500  # config
    assert policy.headroom == 0.3  # null in config -> bundle
    assert policy.min_seconds == 30.0 and policy.psi_max == 0.2  # bundle
    assert policy.sla_ms == 50 and policy.thermal_buffer == 0.1 and policy.inconclusive_limit == 3
    assert policy.deadline_s == 120
    assert policy.latency_alpha == 0.01 and policy.psi_min_samples == 500  # class defaults
    assert CanaryPolicy.from_config({}, bundle_sla_ms=40.0).min_frames == 300


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"sla": {}}, "sla.latency_ms is not set"),
        ({"sla": {"latency_ms": -5}}, r"sla.latency_ms must be > 0, got -5"),
        ({"sla": {"latency_ms": 40}, "canary": {"headroom": 1.5}}, r"canary.headroom must be >= 0 and < 1, got 1.5"),
        (
            {"sla": {"latency_ms": 40, "thermal_buffer": 0.9}},
            r"canary.headroom \+ sla.thermal_buffer must be < 1",
        ),
        ({"sla": {"latency_ms": 40}, "canary": {"min_frames": 2.5}}, "canary.min_frames must be an integer"),
        (
            {"sla": {"latency_ms": 40}, "canary": {"min_seconds": 60, "deadline_s": 30}},
            r"canary.deadline_s must be >= canary.min_seconds \(60\), got 30",
        ),
    ],
)
def test_policy_errors_name_the_key_and_value(config: dict[str, dict[str, object]], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        CanaryPolicy.from_config(config)


def test_inconclusive_policy() -> None:
    assert after_inconclusive(1, 2) == "retry"
    assert after_inconclusive(2, 2) == "reject"
    assert InconclusivePolicy(limit=3).after_inconclusive(2) == "retry"
    with pytest.raises(PolicyError, match="got 0"):
        after_inconclusive(1, 0)


# ------------------------------------------------------------------ watch window (paired)
#
# The watch window compares the serving trial bundle with the previous engine on the same sampled frames.
# "Load" below is a per-frame delay shared by both sides of a pair (the host was busy at that moment), the
# way a CPU hog inflates every inference that runs while it does.

WATCH_POLICY = CanaryPolicy(sla_ms=40.0, headroom=0.2, thermal_buffer=0.1)  # budget 28 ms, 32 ms throttled


def _loaded(rng: np.random.Generator, n: int, spike_ms: float) -> np.ndarray:
    """A busy host: most frames untouched, a third delayed by up to ``spike_ms`` (heavy-tailed)."""
    return np.where(rng.random(n) < 0.33, rng.exponential(spike_ms / 3.0, n), 0.0)


def _watch_pair(
    rng: np.random.Generator,
    n: int = 200,
    *,
    trial_ms: float = 2.0,
    reference_ms: float = 2.0,
    load_ms: float = 0.0,
    reference_conf: float = 0.8,
    served_errors: int = 0,
) -> tuple[CanarySamples, tuple[CanarySamples, CanarySamples]]:
    load = _loaded(rng, n, load_ms) if load_ms else np.zeros(n)
    labels = rng.integers(0, 5, n)
    trial = side(rng, n, latency=trial_ms, labels=labels)
    trial = CanarySamples.build(
        latency_ms=(trial.latency_ms * 0.1 + trial_ms * 0.9 + load).clip(0.05),
        confidence=trial.confidence,
        labels=labels,
    )
    reference = CanarySamples.build(
        latency_ms=(rng.normal(reference_ms, 0.15, n) + load * rng.uniform(0.8, 1.2, n)).clip(0.05),
        confidence=rng.normal(reference_conf, 0.05, n).clip(0.0, 1.0),
        labels=labels,
    )
    served = side(rng, 3 * n, latency=trial_ms, errors=served_errors)
    return served, (trial, reference)


def test_a_same_model_on_a_busy_host_passes_side_by_side() -> None:
    # p95 of both sides is many times the idle canary's ~2 ms: an unpaired rule would roll this back.
    served, paired = _watch_pair(np.random.default_rng(1), load_ms=60.0)
    verdict = decide_watch(served, paired, WATCH_POLICY, throttling=False, elapsed_s=10.0)
    assert verdict.outcome is Outcome.PASS, verdict.reasons
    assert verdict.phase == "watch" and verdict.frames == served.frames
    assert verdict.candidate_latency.p95_ms > 5 * 2.0 and verdict.baseline_latency.count == 200
    assert verdict.latency_p_value is not None and verdict.latency_p_value > 0.01
    assert verdict.agreement == 1.0 and verdict.ks_p_value is not None and verdict.failed_checks == ()


def test_a_slower_bundle_fails_on_the_same_frames_under_the_same_load() -> None:
    served, paired = _watch_pair(np.random.default_rng(2), trial_ms=6.0, reference_ms=2.0, load_ms=60.0)
    verdict = decide_watch(served, paired, WATCH_POLICY, throttling=False, elapsed_s=10.0)
    assert verdict.outcome is Outcome.FAIL
    assert verdict.failed_checks == ("latency_regression",) and verdict.latency_only
    (reason,) = verdict.reasons
    assert reason.startswith("latency regression: p95 ") and "vs the previous bundle" in reason
    assert "Mann–Whitney p = " in reason and reason.endswith("on the same 200 frames")
    assert verdict.effect_ms is not None and verdict.effect_ms > 3.0
    assert verdict.p95_ratio == pytest.approx(verdict.candidate_latency.p95_ms / verdict.baseline_latency.p95_ms)


def test_a_budget_both_bundles_miss_is_the_hosts_not_the_bundles() -> None:
    served, paired = _watch_pair(np.random.default_rng(3), trial_ms=30.0, reference_ms=30.0)
    both = decide_watch(served, paired, WATCH_POLICY, throttling=False, elapsed_s=10.0)
    assert both.outcome is Outcome.PASS, both.reasons
    assert any("both bundles exceed the budget 28.0 ms on the same 200 frames" in n for n in both.notes)
    served, paired = _watch_pair(np.random.default_rng(3), trial_ms=30.0, reference_ms=27.0)
    mine = decide_watch(served, paired, WATCH_POLICY, throttling=False, elapsed_s=10.0)
    assert mine.outcome is Outcome.FAIL and "latency_budget" in mine.failed_checks and mine.latency_only
    assert any("exceeds budget 28.0 ms" in r and "while the previous bundle kept" in r for r in mine.reasons)


def test_throttling_is_attributed_only_through_the_paired_comparison() -> None:
    rng = np.random.default_rng(4)
    # Throttled, both sides equally slow: not the bundle's doing. Reported, not rolled back.
    served, paired = _watch_pair(rng, trial_ms=30.0, reference_ms=30.0)
    hot = decide_watch(served, paired, WATCH_POLICY, throttling=True, elapsed_s=10.0)
    assert hot.outcome is Outcome.PASS and hot.throttling and hot.latency_budget_ms == pytest.approx(32.0)
    assert any(n.startswith("thermal throttling during the watch window, not attributed") for n in hot.notes)
    # Throttled and slower than the previous bundle on the same frames: the bundle's regression.
    served, paired = _watch_pair(rng, trial_ms=12.0, reference_ms=4.0)
    slower = decide_watch(served, paired, WATCH_POLICY, throttling=True, elapsed_s=10.0)
    assert slower.outcome is Outcome.FAIL and slower.throttling
    assert slower.reasons[0].endswith("on the same 200 frames while thermally throttling")
    assert not any("not attributed" in n for n in slower.notes)


def test_a_first_install_is_judged_on_errors_and_the_budget_alone() -> None:
    rng = np.random.default_rng(5)
    fine = decide_watch(side(rng, 200, latency=20.0), None, WATCH_POLICY, throttling=False, elapsed_s=5.0)
    assert fine.outcome is Outcome.PASS and fine.baseline_latency.count == 0
    assert fine.latency_p_value is None and fine.psi is None and fine.ks_statistic is None and fine.agreement is None
    assert fine.notes and fine.notes[0].startswith("first install: no previous bundle")
    # p95 ≈ 30.5 ms: over the 28 ms budget, but a throttling device may spend the thermal buffer (32 ms)...
    hot = side(rng, 200, latency=28.0)
    assert decide_watch(hot, None, WATCH_POLICY, throttling=True).outcome is Outcome.PASS
    slow = decide_watch(hot, None, WATCH_POLICY, throttling=False)
    assert slow.outcome is Outcome.FAIL and slow.failed_checks == ("latency_budget",) and slow.latency_only
    # ...not more.
    too_hot = decide_watch(side(rng, 200, latency=33.0), None, WATCH_POLICY, throttling=True)
    assert any("budget 32.0 ms (SLA 40 ms × (1 − 0.20)) while thermally throttling" in r for r in too_hot.reasons)
    errors = decide_watch(side(rng, 200, latency=33.0, errors=2), None, WATCH_POLICY, throttling=False)
    assert errors.outcome is Outcome.FAIL and "2 inference errors in 200 trial frames" in errors.reasons
    assert errors.failed_checks == ("errors", "latency_budget") and not errors.latency_only


def test_errors_on_served_frames_fail_even_when_the_pairs_agree() -> None:
    served, paired = _watch_pair(np.random.default_rng(6), served_errors=3)
    verdict = decide_watch(served, paired, WATCH_POLICY, throttling=False, elapsed_s=1.0)
    assert verdict.outcome is Outcome.FAIL and verdict.errors == 3 and verdict.failed_checks == ("errors",)
    assert "3 inference errors in 600 trial frames" in verdict.reasons


def test_drift_against_the_previous_bundle_fails() -> None:
    served, paired = _watch_pair(np.random.default_rng(7), reference_conf=0.6)
    verdict = decide_watch(served, paired, WATCH_POLICY, throttling=False, elapsed_s=1.0)
    assert verdict.outcome is Outcome.FAIL and verdict.failed_checks == ("drift",) and not verdict.latency_only
    assert verdict.reasons[0].startswith("confidence drift: KS D = ")
    assert verdict.reasons[0].endswith("against the previous bundle on the same frames")


def test_too_few_pairs_are_not_compared_and_say_so() -> None:
    served, paired = _watch_pair(np.random.default_rng(8), n=WATCH_MIN_PAIRED_FRAMES - 1, trial_ms=20.0)
    verdict = decide_watch(served, paired, WATCH_POLICY, throttling=False, elapsed_s=1.0)
    assert verdict.outcome is Outcome.PASS and verdict.latency_p_value is None and verdict.agreement is None
    assert verdict.notes == (
        f"latency, drift and agreement not compared: {WATCH_MIN_PAIRED_FRAMES - 1} valid paired frames with the "
        f"previous bundle, a paired judgement needs {WATCH_MIN_PAIRED_FRAMES}",
    )


def test_watch_edge_cases() -> None:
    empty = CanarySamples.build(latency_ms=[], confidence=[])
    assert decide_watch(empty, None, WATCH_POLICY, throttling=False).outcome is Outcome.INCONCLUSIVE
    served, (trial, reference) = _watch_pair(np.random.default_rng(9))
    short = CanarySamples.build(latency_ms=reference.latency_ms[:-1], confidence=reference.confidence[:-1])
    with pytest.raises(SamplesError, match="watch samples: candidate has 200 frames but baseline has 199"):
        decide_watch(served, (trial, short), WATCH_POLICY, throttling=False)


def test_failed_checks_tell_a_latency_only_canary_failure() -> None:
    rng = np.random.default_rng(10)
    slow = decide_verdict(*_pair(rng, latency=35.0), POLICY, elapsed_s=60.0, deadline_reached=False)
    assert slow.failed_checks == ("latency_budget", "latency_regression") and slow.latency_only
    drift = decide_verdict(*_pair(rng, conf_mean=0.65), POLICY, elapsed_s=60.0, deadline_reached=False)
    assert drift.failed_checks == ("drift",) and not drift.latency_only
    passed = decide_verdict(*_pair(rng), POLICY, elapsed_s=60.0, deadline_reached=False)
    assert passed.failed_checks == () and not passed.latency_only


def test_watch_shadow_limits_come_from_the_canary_config() -> None:
    config = {"canary": {"watch_shadow_every_ms": 20, "watch_shadow_max_share": 0.5}, "sla": {"latency_ms": 40}}
    policy = CanaryPolicy.from_config(config)
    assert (policy.watch_shadow_every_ms, policy.watch_shadow_max_share) == (20, 0.5)
    defaults = CanaryPolicy(sla_ms=40.0)
    assert (defaults.watch_shadow_every_ms, defaults.watch_shadow_max_share) == (100.0, 0.25)
    with pytest.raises(PolicyError, match=r"canary.watch_shadow_max_share must be > 0 and <= 1, got 0"):
        CanaryPolicy.from_config({"sla": {"latency_ms": 40}, "canary": {"watch_shadow_max_share": 0}})


# ------------------------------------------------------------------ wire form


def test_verdict_to_proto_carries_every_number() -> None:
    candidate, baseline = _pair(np.random.default_rng(4), latency=35.0, errors=0)
    verdict = decide_verdict(candidate, baseline, POLICY, elapsed_s=45.0, deadline_reached=False)
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    msg = verdict_to_proto(
        verdict, candidate_digest="sha256:" + "a" * 64, baseline_digest="sha256:" + "b" * 64, decided_at=at
    )
    assert msg.outcome == common_pb2.CanaryVerdict.OUTCOME_FAIL
    assert msg.phase == "canary" and msg.frames == N and msg.seconds == 45.0
    assert msg.candidate_latency.p95_ms == pytest.approx(verdict.candidate_latency.p95_ms)
    assert msg.candidate_latency.count == N
    assert msg.latency_budget_ms == pytest.approx(32.0)
    assert msg.psi == pytest.approx(verdict.psi or 0.0)
    assert list(msg.reasons) == list(verdict.reasons)
    assert msg.decided_at.ToDatetime(tzinfo=UTC) == at
    assert not msg.throttling and list(msg.notes) == []
    served, paired = _watch_pair(np.random.default_rng(4), trial_ms=30.0, reference_ms=30.0)
    watch = verdict_to_proto(decide_watch(served, paired, WATCH_POLICY, throttling=True), candidate_config_digest="c1")
    assert watch.phase == "watch" and watch.throttling and watch.candidate_config_digest == "c1"
    assert any("not attributed to the bundle" in n for n in watch.notes)
    assert watch.baseline_latency.count == 200
    decoded = common_pb2.CanaryVerdict.FromString(msg.SerializeToString())
    assert decoded == msg
    pending = decide_verdict(*_pair(np.random.default_rng(4), 10), POLICY, elapsed_s=1.0, deadline_reached=False)
    with pytest.raises(PendingVerdictError, match="10 frames so far"):
        verdict_to_proto(pending)
