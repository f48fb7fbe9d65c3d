"""The update machine with nothing committed yet: latency misses serve degraded with an alert, errors still refuse."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.update.effects import (
    Commit,
    DiscardCandidate,
    RaiseAlert,
    Stage,
    StartCanary,
    StartDownload,
    StartWatch,
    StopEvaluation,
    SwapToCandidate,
    SwapToCommitted,
)
from edge_runtime.update.events import (
    CanaryFailed,
    CanaryInconclusive,
    CandidateLoadFailed,
    DesiredBundleChanged,
    DownloadFailed,
    Recovered,
    TrialFailed,
    TrialPassed,
    UpdateEvent,
    VerificationFailed,
)
from edge_runtime.update.record import UpdateRecord, UpdateState
from edge_runtime.update.state import decide
from tests.unit.update_state_cases import HAPPY_NEXT, NOW, A, B, C, R, S, arts, desired, kinds, record_in

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
    noise: st.SearchStrategy[UpdateEvent] = st.sampled_from(
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


# --- first install: what serves keeps serving until something better is proven -------------------------------

X = "sha256:" + "1" * 64  # the trial candidate's config
X3 = "sha256:" + "3" * 64  # telemetry-only change of X (same inference fingerprint)
X2 = "sha256:" + "2" * 64  # an inference change
FP_X, FP_X2 = "sha256:" + "d" * 64, "sha256:" + "e" * 64


def first_trial(**changes: object) -> UpdateRecord:
    """Nothing committed; B, the first bundle, serves its trial under config X."""
    return replace(first_install(S.TRIAL), candidate_config=X, candidate_config_inference=FP_X, **changes)  # type: ignore[arg-type]


def _no_swap_away(effects: tuple[object, ...]) -> None:
    assert not any(isinstance(e, SwapToCommitted) and e.digest is None for e in effects), effects
    assert not any(isinstance(e, DiscardCandidate) and e.digest == B for e in effects), effects


@pytest.mark.parametrize(
    ("event", "state", "candidate", "first_effects"),
    [
        # A new bundle: B is committed first, then C downloads beside it.
        (desired(C), S.DOWNLOADING, C, (StopEvaluation, Commit, RaiseAlert, StartDownload)),
        # A telemetry-only config change: B is committed, the config watched on B's engine (no reload).
        (
            DesiredBundleChanged("", (), "cfg-2", X3, FP_X),
            S.TRIAL,
            B,
            (StopEvaluation, Commit, RaiseAlert, SwapToCandidate, StartWatch),
        ),
        # An inference config change: B is committed and serves; a second engine of B canaries in shadow.
        (
            DesiredBundleChanged("", (), "cfg-3", X2, FP_X2),
            S.STAGED,
            B,
            (StopEvaluation, Commit, RaiseAlert, StopEvaluation, Stage, StartCanary),
        ),
    ],
)
def test_a_new_desired_state_during_a_first_install_trial_commits_what_serves_first(
    event: DesiredBundleChanged, state: UpdateState, candidate: str, first_effects: tuple[type, ...]
) -> None:
    decision = decide(first_trial(), event, NOW)
    record = decision.record
    assert (record.state, record.committed, record.candidate) == (state, B, candidate)
    assert record.committed_config == X and record.committed_config_inference == FP_X and record.previous is None
    # (``ReportState`` once, wherever ``transition`` puts it.)
    assert tuple(k for k in kinds(decision.effects) if k is not R) == first_effects
    assert kinds(decision.effects).count(R) == 1
    assert decision.effects[1] == Commit(B, keep=(B,) if candidate == B else (B, C), config=X)
    alert = decision.effects[2]
    assert isinstance(alert, RaiseAlert) and alert.code == "first_install.committed_early" and alert.digest == B
    _no_swap_away(decision.effects)


def test_after_a_first_install_trial_is_cut_short_a_failing_replacement_leaves_it_serving() -> None:
    """B serves its first-install trial; C arrives and fails at every step it can fail at: B still serves."""
    downloading = decide(first_trial(), desired(C), NOW).record
    failures: list[tuple[UpdateRecord, UpdateEvent]] = [
        (replace(downloading, download_attempts=5), DownloadFailed("DATA_LOSS: blob corrupt on the controller")),
        (replace(downloading, state=S.VERIFYING), VerificationFailed("model.onnx has the wrong sha256")),
        (replace(downloading, state=S.CANARY), CanaryFailed("3 inference errors")),
        (replace(downloading, state=S.CANARY), CanaryFailed("p95 over budget", latency_only=True)),
        (replace(downloading, state=S.TRIAL), TrialFailed("2 frames with NaN outputs")),
    ]
    for before, event in failures:
        after = decide(before, event, NOW)
        assert after.record.state in (S.FAILED, S.ROLLED_BACK), (event, after.record)
        assert after.record.committed == B and after.record.committed_config == X
        back = [e for e in after.effects if isinstance(e, SwapToCommitted)]
        assert back in ([], [SwapToCommitted(B, X)]), back
        # A restart afterwards serves B.
        assert decide(after.record, Recovered(), NOW).effects[0] == SwapToCommitted(B, X)
    # C passes instead: it replaces B, B kept as the previous bundle.
    passed = decide(replace(downloading, state=S.TRIAL), TrialPassed(), NOW).record
    assert (passed.state, passed.committed, passed.previous) == (S.COMMITTED, C, B)


def test_a_degraded_first_install_cut_short_commits_degraded() -> None:
    trial = decide(first_install(S.CANARY), CanaryFailed("slow", latency_only=True, numbers=SLOW), NOW).record
    record = decide(trial, desired(C), NOW).record
    assert record.committed == B and record.degraded == trial.degraded and record.candidate == C
    failed = decide(replace(record, state=S.CANARY), CanaryFailed("golden mismatch"), NOW).record
    assert failed.committed == B and failed.degraded == trial.degraded, "still the degraded first install"


@pytest.mark.parametrize(
    "record",
    [first_install(S.DOWNLOADING), first_install(S.STAGED), first_install(S.CANARY), record_in(S.TRIAL)],
    ids=["first-downloading", "first-staged", "first-canary", "committed-device-trial"],
)
def test_only_a_serving_first_install_trial_is_committed_early(record: UpdateRecord) -> None:
    decision = decide(record, desired(C), NOW)
    assert decision.record.committed == record.committed and decision.record.candidate == C
    assert not any(isinstance(e, Commit | RaiseAlert) for e in decision.effects)


@pytest.mark.parametrize(
    "event",
    [
        desired(B),  # what is being installed already
        DesiredBundleChanged(C, (), "a-2"),  # nothing to download: refused
        DesiredBundleChanged(B, arts(B), "new-assignment"),  # adopted, the trial goes on
    ],
    ids=["same", "no-artifacts", "adopted"],
)
def test_a_refused_or_adopted_desired_state_leaves_the_first_install_trial_alone(event: DesiredBundleChanged) -> None:
    record = first_trial()
    decision = decide(record, event, NOW)
    assert decision.record.committed is None and decision.record.state == S.TRIAL
    assert not any(isinstance(e, Commit | SwapToCommitted) for e in decision.effects)
