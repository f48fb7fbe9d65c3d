"""The canary verdict as reported: its outcome, the numbers that decided it, its reasons, notes and wire form.

Owns ``Outcome`` and ``VerdictPhase`` (stored values never change), the ``CHECK_*`` names a verdict can
fail, ``LatencySummary`` and ``CanaryVerdict``; ``Measurements`` (what both rules measure before judging)
and ``build_verdict``, the one place findings (check, reason) and notes become a verdict; and
``verdict_to_proto``, its wire form. The rules that produce the findings live in ``verdict``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np

from edge_runtime.canary.errors import PendingVerdictError
from edge_runtime.canary.stats import percentile
from edgefleet.v1 import common_pb2


class Outcome(StrEnum):
    """A verdict's outcome. Stored values never change."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    # Not enough frames or seconds yet and the deadline is still ahead: keep collecting.
    PENDING = "pending"


class VerdictPhase(StrEnum):
    CANARY = "canary"
    WATCH = "watch"


# The checks a verdict can fail, as named in ``CanaryVerdict.failed_checks``. Stored values never change.
CHECK_ERRORS = "errors"
CHECK_NANS = "nans"
CHECK_BUDGET = "latency_budget"
CHECK_REGRESSION = "latency_regression"
CHECK_DRIFT = "drift"
CHECK_AGREEMENT = "agreement"


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one side's end-to-end latency over its valid frames (NaN when ``count`` is 0)."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    count: int

    @staticmethod
    def of(latency_ms: np.ndarray[Any, np.dtype[np.float64]]) -> LatencySummary:
        return LatencySummary(
            p50_ms=percentile(latency_ms, 50.0),
            p95_ms=percentile(latency_ms, 95.0),
            p99_ms=percentile(latency_ms, 99.0),
            count=int(latency_ms.size),
        )


def _ratio(candidate_p95: float, baseline_p95: float) -> float:
    if math.isnan(candidate_p95) or math.isnan(baseline_p95):
        return math.nan
    if baseline_p95 <= 0.0:
        return 1.0 if candidate_p95 <= 0.0 else math.inf
    return candidate_p95 / baseline_p95


@dataclass(frozen=True)
class Measurements:
    """What a rule measured before judging: frames and seconds, both sides' latency, the budget it holds
    the candidate to, the candidate side's errors and NaN frames, and whether the device throttled. A
    ``CanaryVerdict`` is these plus the judgement."""

    frames: int
    seconds: float
    candidate_latency: LatencySummary
    baseline_latency: LatencySummary
    sla_ms: float
    latency_budget_ms: float
    errors: int
    nans: int
    throttling: bool = False

    @property
    def p95_ratio(self) -> float:
        """Candidate p95 over baseline p95 (NaN when either is unknown; inf over a zero baseline)."""
        return _ratio(self.candidate_latency.p95_ms, self.baseline_latency.p95_ms)


@dataclass(frozen=True, kw_only=True)
class CanaryVerdict(Measurements):
    """The outcome of a canary or watch window with every number that decided it.

    ``reasons`` is empty on pass and says why otherwise, with the numbers. Numbers that were not
    computed are ``None`` (PSI on the KS path and vice versa; agreement when the bundle's outputs are
    not comparable; the paired statistics of a watch window with too few paired frames).
    ``failed_checks`` names the checks behind ``reasons`` (``CHECK_*``); ``notes`` records what was
    observed but did not decide the outcome (throttling not attributed to the bundle, a budget both
    bundles missed, latency not compared for lack of paired frames).
    """

    outcome: Outcome
    phase: VerdictPhase
    latency_p_value: float | None
    effect_ms: float | None
    psi: float | None
    ks_statistic: float | None
    ks_p_value: float | None
    agreement: float | None
    reasons: tuple[str, ...]
    failed_checks: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def decided(self) -> bool:
        return self.outcome is not Outcome.PENDING

    @property
    def latency_only(self) -> bool:
        """A failure on latency alone (budget and/or regression): no errors, NaNs, drift or disagreement."""
        return (
            self.outcome is Outcome.FAIL
            and bool(self.failed_checks)
            and set(self.failed_checks) <= {CHECK_BUDGET, CHECK_REGRESSION}
        )

    def summary(self) -> str:
        """One line for logs and the CLI: outcome, frames, p95s and the first reason."""
        line = (
            f"{self.phase} {self.outcome}: {self.frames} frames in {self.seconds:.1f} s, "
            f"p95 {self.candidate_latency.p95_ms:.1f} ms (budget {self.latency_budget_ms:.1f} ms)"
        )
        if self.reasons:
            return f"{line}; {self.reasons[0]}"
        return f"{line}; {self.notes[0]}" if self.notes else line


Finding = tuple[str, str]
"""(check, reason): a check the samples failed (a ``CHECK_*`` name, or ``pending``/``inconclusive``) and why."""

# The numbers only some verdicts compute; None when not computed (see ``CanaryVerdict``).
OPTIONAL_NUMBERS: tuple[str, ...] = ("latency_p_value", "effect_ms", "psi", "ks_statistic", "ks_p_value", "agreement")


def build_verdict(
    outcome: Outcome,
    phase: VerdictPhase,
    measured: Measurements,
    findings: Sequence[Finding],
    *,
    notes: Sequence[str] = (),
    numbers: Mapping[str, float | None] | None = None,
) -> CanaryVerdict:
    """The verdict: ``findings`` give its reasons (and, when it fails, its ``failed_checks``), ``numbers``
    the statistics computed (the rest of ``OPTIONAL_NUMBERS`` stay None)."""
    computed: dict[str, Any] = dict.fromkeys(OPTIONAL_NUMBERS) | dict(numbers or {})
    measured_values = {f.name: getattr(measured, f.name) for f in fields(measured)}
    failing = outcome is Outcome.FAIL
    return CanaryVerdict(
        outcome=outcome,
        phase=phase,
        reasons=tuple(reason for _, reason in findings),
        failed_checks=tuple(dict.fromkeys(check for check, _ in findings)) if failing else (),
        notes=tuple(notes),
        **measured_values,
        **computed,
    )


_PROTO_OUTCOME = {
    Outcome.PASS: common_pb2.CanaryVerdict.OUTCOME_PASS,
    Outcome.FAIL: common_pb2.CanaryVerdict.OUTCOME_FAIL,
    Outcome.INCONCLUSIVE: common_pb2.CanaryVerdict.OUTCOME_INCONCLUSIVE,
}


def _wire(value: float | None) -> float:
    # proto3 doubles have no "unset"; 0 reads as "not measured" next to a count of 0.
    return 0.0 if value is None or math.isnan(value) else value


def _percentiles(summary: LatencySummary) -> common_pb2.Percentiles:
    return common_pb2.Percentiles(
        p50_ms=_wire(summary.p50_ms), p95_ms=_wire(summary.p95_ms), p99_ms=_wire(summary.p99_ms), count=summary.count
    )


def verdict_to_proto(
    verdict: CanaryVerdict,
    *,
    candidate_digest: str = "",
    baseline_digest: str = "",
    decided_at: datetime | None = None,
    candidate_config_digest: str = "",
    baseline_config_digest: str = "",
) -> common_pb2.CanaryVerdict:
    """The wire form. ``errors`` on the wire counts errors plus NaN frames (the reasons tell them apart);
    numbers not computed are 0. Raises ``PendingVerdictError`` for a ``pending`` verdict."""
    if verdict.outcome is Outcome.PENDING:
        raise PendingVerdictError(
            f"a pending canary verdict ({verdict.frames} frames so far) has no wire form; "
            "report it once decide_verdict returns pass, fail or inconclusive"
        )
    message = common_pb2.CanaryVerdict(
        outcome=_PROTO_OUTCOME[verdict.outcome],
        candidate_digest=candidate_digest,
        baseline_digest=baseline_digest,
        candidate_config_digest=candidate_config_digest,
        baseline_config_digest=baseline_config_digest,
        phase=str(verdict.phase),
        frames=verdict.frames,
        seconds=verdict.seconds,
        candidate_latency=_percentiles(verdict.candidate_latency),
        baseline_latency=_percentiles(verdict.baseline_latency),
        latency_budget_ms=verdict.latency_budget_ms,
        p95_ratio=_wire(verdict.p95_ratio),
        latency_p_value=_wire(verdict.latency_p_value),
        psi=_wire(verdict.psi),
        ks_statistic=_wire(verdict.ks_statistic),
        ks_p_value=_wire(verdict.ks_p_value),
        agreement=_wire(verdict.agreement),
        errors=verdict.errors + verdict.nans,
        reasons=list(verdict.reasons),
        throttling=verdict.throttling,
        notes=list(verdict.notes),
    )
    if decided_at is not None:
        message.decided_at.FromDatetime(decided_at)
    return message
