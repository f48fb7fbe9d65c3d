"""The update machine with nothing committed yet: latency misses serve degraded with an alert, errors still refuse."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.update.effects import Commit, RaiseAlert, StartWatch, SwapToCandidate, SwapToCommitted
from edge_runtime.update.events import (
    CanaryFailed,
    CanaryInconclusive,
    CandidateLoadFailed,
    Recovered,
    TrialFailed,
    TrialPassed,
    UpdateEvent,
)
from edge_runtime.update.record import UpdateRecord, UpdateState
from edge_runtime.update.state import decide
from tests.unit.update_state_cases import HAPPY_NEXT, NOW, A, B, C, R, S, desired, kinds, record_in

# --- first install -------------------------------------------------------------------------------------------

SLOW = (("candidate_p95_ms", 61.5), ("latency_budget_ms", 40.0), ("sla_ms", 50.0))


def first_install(state: UpdateState) -> UpdateRecord:
    return replace(record_in(state), committed=None)


def test_first_install_latency_miss_in_canary_serves_degraded_with_an_alert() -> None:
    canary = first_install(S.CANARY)
    decision = decide(
        canary, CanaryFailed("p95 latency 61.5 ms exceeds budget 40.0 ms", latency_only=True, numbers=SLOW), NOW
    )
    trial = decision.record
    assert trial.state == S.TRIAL and trial.candidate == B and trial.committed is None
    assert kinds(decision.effects) == (SwapToCandidate, StartWatch, RaiseAlert, R)
    alert = next(e for e in decision.effects if isinstance(e, RaiseAlert))
    assert (
        alert.code == "first_install.latency_miss"
        and alert.digest == B
        and dict(alert.numbers)["candidate_p95_ms"] == 61.5
    )
    assert trial.degraded is not None and "61.5 ms" in trial.degraded and trial.rejected is None
    # The trial misses on latency again: committed anyway, degraded, no second alert.
    committed = decide(trial, TrialFailed("p95 latency 60 ms exceeds budget 40 ms", latency_only=True), NOW)
    assert committed.record.state == S.COMMITTED and committed.record.committed == B
    assert committed.record.degraded is not None and committed.record.candidate is None
    assert Commit(B, keep=(B,)) in committed.effects and not any(isinstance(e, RaiseAlert) for e in committed.effects)
    passed = decide(trial, TrialPassed(), NOW).record
    assert passed.committed == B and passed.degraded == trial.degraded, "a short window does not undo the miss"
    # A later, good bundle commits normally and clears the degraded mark.
    later = decide(replace(committed.record, state=S.TRIAL, candidate=C), TrialPassed(), NOW).record
    assert later.committed == C and later.previous == B and later.degraded is None


def test_first_install_trial_that_misses_only_on_latency_commits_degraded_with_an_alert() -> None:
    decision = decide(first_install(S.TRIAL), TrialFailed("p95 over budget", latency_only=True, numbers=SLOW), NOW)
    assert decision.record.state == S.COMMITTED and decision.record.committed == B
    assert [e.code for e in decision.effects if isinstance(e, RaiseAlert)] == ["first_install.latency_miss"]


def test_first_install_inconclusive_canary_serves_rather_than_nothing() -> None:
    record = first_install(S.CANARY)
    while record.state == S.CANARY:
        decision = decide(record, CanaryInconclusive("only 3 frames"), NOW)
        record = decision.record
    assert record.state == S.TRIAL and record.degraded is not None
    assert [e.code for e in decision.effects if isinstance(e, RaiseAlert)] == ["first_install.inconclusive"]
    rejected_by_policy = decide(first_install(S.CANARY), CanaryFailed("inconclusive 2 times", inconclusive=True), NOW)
    assert rejected_by_policy.record.state == S.TRIAL


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.CANARY, CanaryFailed("golden case 0: output differs by 0.3")),
        (S.CANARY, CanaryFailed("3 inference errors in 60 candidate frames")),
        (S.TRIAL, TrialFailed("2 frames with NaN outputs")),
        (S.STAGED, CandidateLoadFailed("cannot create the session")),
    ],
)
def test_first_install_errors_and_golden_mismatches_refuse(state: UpdateState, event: UpdateEvent) -> None:
    decision = decide(first_install(state), event, NOW)
    assert decision.record.state == S.ROLLED_BACK and decision.record.committed is None
    assert decision.record.rejected == B and decision.record.degraded is None
    assert not any(isinstance(e, RaiseAlert) for e in decision.effects)


def test_a_degraded_first_install_candidate_abandoned_leaves_nothing_degraded() -> None:
    trial = decide(first_install(S.CANARY), CanaryFailed("slow", latency_only=True), NOW).record
    errored = decide(trial, TrialFailed("5 inference errors"), NOW).record
    assert errored.state == S.ROLLED_BACK and errored.committed is None and errored.degraded is None


def test_latency_miss_with_a_committed_bundle_still_rolls_back() -> None:
    decision = decide(record_in(S.CANARY), CanaryFailed("p95 over budget", latency_only=True, numbers=SLOW), NOW)
    assert decision.record.state == S.ROLLED_BACK and decision.record.committed == A and decision.record.rejected == B
    trial = decide(record_in(S.TRIAL), TrialFailed("p95 over budget", latency_only=True), NOW)
    assert trial.record.state == S.ROLLED_BACK and trial.effects[0] == SwapToCommitted(A)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_first_install_never_ends_with_nothing_after_only_latency_misses(data: st.DataObject) -> None:
    """From nothing, a bundle whose only problems are latency (and restarts) always ends up serving."""
    record = UpdateRecord.initial(NOW, committed=None)
    record = decide(record, desired(B), NOW).record
    noise = st.sampled_from(
        [
            CanaryFailed("slow", latency_only=True),
            TrialFailed("slow", latency_only=True),
            CanaryInconclusive("few frames"),
            Recovered(clean_shutdown=True),
        ]
    )
    for i in range(data.draw(st.integers(0, 40), label="length")):
        happy = HAPPY_NEXT.get(record.state)
        event = data.draw(st.one_of(noise, st.just(happy)) if happy else noise)
        record = decide(record, event, NOW + timedelta(seconds=i)).record
        assert record.state not in (S.ROLLED_BACK, S.FAILED), record.failure
    # Driven to the end, it serves B.
    for _ in range(10):
        happy = HAPPY_NEXT.get(record.state)
        if happy is None:
            break
        record = decide(record, happy, NOW).record
    assert record.committed == B
