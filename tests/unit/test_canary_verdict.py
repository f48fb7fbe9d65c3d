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

from edge_runtime.canary import (
    CanaryPolicy,
    CanarySamples,
    Detection,
    InconclusivePolicy,
    Outcome,
    PendingVerdictError,
    PolicyError,
    SamplesError,
    after_inconclusive,
    decide_verdict,
    decide_watch,
    verdict_to_proto,
)
from edge_runtime.canary.agreement import frame_detection_agreement, iou
from edge_runtime.canary.stats import (
    average_ranks,
    kolmogorov_sf,
    ks_two_sample,
    mann_whitney_greater,
    population_stability_index,
    quantile_edges,
)
from edgefleet.contract.bundle import CanaryDefaults
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


# ------------------------------------------------------------------ watch window


def test_watch_window() -> None:
    policy = CanaryPolicy(sla_ms=40.0, headroom=0.2, thermal_buffer=0.1)
    rng = np.random.default_rng(9)
    fine = side(rng, 200, latency=20.0)
    assert decide_watch(fine, 22.5, policy, throttling=False, drift_psi=0.05).outcome is Outcome.PASS
    slower = decide_watch(side(rng, 200, latency=25.0), 22.5, policy, throttling=False, drift_psi=None)
    assert slower.outcome is Outcome.FAIL
    assert any("the canary baseline 22.5 ms (limit 1.10× and +0.5 ms)" in r for r in slower.reasons)
    drift = decide_watch(fine, 22.5, policy, throttling=False, drift_psi=0.4)
    assert drift.reasons == ("confidence drift: PSI 0.400 > 0.25",)
    # p95 ≈ 30.5 ms: over the 28 ms budget, but a throttling device may spend the thermal buffer (32 ms)...
    hot = side(rng, 200, latency=28.0)
    throttled = decide_watch(hot, 30.0, policy, throttling=True, drift_psi=None)
    assert throttled.outcome is Outcome.PASS and throttled.latency_budget_ms == pytest.approx(32.0)
    # ...not more.
    too_hot = decide_watch(side(rng, 200, latency=33.0), 35.0, policy, throttling=True, drift_psi=None)
    assert too_hot.outcome is Outcome.FAIL
    assert any("budget 32.0 ms (SLA 40 ms × (1 − 0.20)) while thermally throttling" in r for r in too_hot.reasons)
    unthrottled = decide_watch(hot, 30.0, policy, throttling=False, drift_psi=None)
    assert unthrottled.outcome is Outcome.FAIL
    errors = decide_watch(side(rng, 200, errors=2), 22.5, policy, throttling=False, drift_psi=None)
    assert errors.outcome is Outcome.FAIL and "2 inference errors in 200 trial frames" in errors.reasons
    empty = CanarySamples.build(latency_ms=[], confidence=[])
    assert decide_watch(empty, 20.0, policy, throttling=False, drift_psi=None).outcome is Outcome.INCONCLUSIVE


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
    decoded = common_pb2.CanaryVerdict.FromString(msg.SerializeToString())
    assert decoded == msg
    pending = decide_verdict(*_pair(np.random.default_rng(4), 10), POLICY, elapsed_s=1.0, deadline_reached=False)
    with pytest.raises(PendingVerdictError, match="10 frames so far"):
        verdict_to_proto(pending)
