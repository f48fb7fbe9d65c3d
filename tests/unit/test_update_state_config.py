"""The update machine with config candidates: inference and telemetry-only changes, joining a bundle, restarts, legacy
records."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.update.effects import (
    CollectGarbage,
    Commit,
    CommitConfig,
    ReportState,
    Stage,
    StartCanary,
    StartWatch,
    StopEvaluation,
    SwapToCandidate,
    SwapToCommitted,
)
from edge_runtime.update.events import (
    CanaryFailed,
    CanaryPassed,
    CanaryStarted,
    DesiredBundleChanged,
    DownloadCompleted,
    TrialFailed,
    TrialPassed,
    VerificationPassed,
)
from edge_runtime.update.record import UpdateRecord, UpdateState
from edge_runtime.update.state import decide, recover
from tests.unit.update_state_cases import (
    HAPPY_NEXT,
    NOW,
    A,
    B,
    C,
    R,
    S,
    arts,
    desired,
    events_strategy,
    kinds,
    record_in,
)

# --- config candidates -------------------------------------------------------------------------------------

X = "sha256:" + "1" * 64  # committed config
X2 = "sha256:" + "2" * 64  # a config that changes inference (another threshold)
X3 = "sha256:" + "3" * 64  # a config that changes telemetry only
FP_X = "sha256:" + "d" * 64  # inference fingerprint of X (and of X3)
FP_X2 = "sha256:" + "e" * 64


def configured(state: UpdateState = S.COMMITTED, **changes: object) -> UpdateRecord:
    """Committed A under config X."""
    return replace(record_in(S.COMMITTED), state=state, committed_config=X, committed_config_inference=FP_X, **changes)  # type: ignore[arg-type]


def config_desired(config: str, inference: str, assignment: str = "cfg-1", digest: str = "") -> DesiredBundleChanged:
    return DesiredBundleChanged(digest, arts(digest) if digest else (), assignment, config, inference)


def test_an_inference_config_change_is_canaried_in_shadow_then_committed() -> None:
    staged = decide(configured(), config_desired(X2, FP_X2), NOW)
    record = staged.record
    assert record.state == S.STAGED and (record.candidate, record.candidate_config) == (A, X2)
    assert record.config_only and not record.keeps_engine and record.assignment_id == "cfg-1"
    # A new engine from the committed slot; the evaluator's runs of A's own canary are forgotten first.
    assert staged.effects[:3] == (StopEvaluation(A), Stage(A, X2), StartCanary(A))
    canary = decide(record, CanaryStarted(), NOW).record
    trial = decide(canary, CanaryPassed("agreement 1.000"), NOW)
    assert trial.effects[:2] == (SwapToCandidate(A, X2), StartWatch(A, paired=True))
    committed = decide(trial.record, TrialPassed(), NOW)
    assert committed.record.committed == A and committed.record.previous is None
    assert (committed.record.committed_config, committed.record.committed_config_inference) == (X2, FP_X2)
    assert committed.record.candidate_config is None
    assert committed.effects[0] == Commit(A, keep=(A,), config=X2)


def test_a_config_change_that_does_not_change_inference_is_watched_without_a_shadow() -> None:
    decision = decide(configured(), config_desired(X3, FP_X), NOW)
    assert decision.record.state == S.TRIAL and decision.record.keeps_engine
    assert decision.effects[:2] == (SwapToCandidate(A, X3), StartWatch(A, paired=False))
    assert not any(isinstance(e, Stage | StartCanary) for e in decision.effects)
    failed = decide(decision.record, TrialFailed("p95 latency 90 ms exceeds budget 64 ms", latency_only=True), NOW)
    assert failed.record.state == S.ROLLED_BACK and failed.record.committed_config == X
    assert failed.effects[0] == SwapToCommitted(A, X), "the previous config is restored"


def test_a_failed_config_candidate_restores_the_previous_config_and_is_rejected_under_its_assignment() -> None:
    canary = replace(decide(configured(), config_desired(X2, FP_X2), NOW).record, state=S.CANARY)
    failed = decide(canary, CanaryFailed("agreement 0.000 < 0.90"), NOW)
    record = failed.record
    assert record.state == S.ROLLED_BACK and (record.committed, record.committed_config) == (A, X)
    assert record.assignment_id == "cfg-1" and record.rejected_under(A, "cfg-1", X2)
    assert not record.rejected_under(A, "cfg-1", X), "the committed bundle and config are not rejected"
    assert StopEvaluation(A) in failed.effects
    again = decide(record, config_desired(X2, FP_X2), NOW)
    assert again.ignored is not None and "rejected under assignment cfg-1" in again.ignored
    assert decide(record, config_desired(X2, FP_X2, "cfg-2"), NOW).record.state == S.STAGED
    # Back to the committed config under a new assignment: reached at once.
    back = decide(record, config_desired(X, FP_X, "cfg-3"), NOW).record
    assert back.state == S.COMMITTED and back.assignment_id == "cfg-3"


def test_a_trial_config_failure_swaps_engine_and_config_back() -> None:
    trial = replace(decide(configured(), config_desired(X2, FP_X2), NOW).record, state=S.TRIAL)
    failed = decide(trial, TrialFailed("agreement 0.1 against the previous bundle"), NOW)
    assert failed.effects[:2] == (SwapToCommitted(A, X), StopEvaluation(A))
    assert failed.record.committed_config == X and failed.record.candidate_config == X2


def test_a_bundle_with_a_new_config_is_one_candidate() -> None:
    decision = decide(configured(), config_desired(X2, FP_X2, digest=B), NOW)
    record = decision.record
    assert record.state == S.DOWNLOADING and (record.candidate, record.candidate_config) == (B, X2)
    staged = decide(decide(record, DownloadCompleted(), NOW).record, VerificationPassed(), NOW)
    assert staged.effects[0] == Stage(B, X2)
    trial = replace(staged.record, state=S.TRIAL)
    committed = decide(trial, TrialPassed(), NOW).record
    assert (committed.committed, committed.committed_config, committed.previous) == (B, X2, A)
    # A bundle candidate that keeps the config commits the committed config.
    plain = decide(decide(configured(), desired(C), NOW).record, DownloadCompleted(), NOW).record
    assert plain.candidate_config == X and not plain.config_candidate
    assert decide(replace(plain, state=S.TRIAL), TrialPassed(), NOW).record.committed_config == X


def test_a_config_change_while_a_bundle_is_installed_joins_the_candidate() -> None:
    downloading = decide(configured(), desired(B), NOW).record
    joined = decide(downloading, config_desired(X2, FP_X2, digest=B), NOW)
    assert joined.record.state == S.DOWNLOADING and joined.record.candidate_config == X2
    assert joined.effects == (ReportState(),), "the download goes on"
    in_canary = replace(downloading, state=S.CANARY)
    restaged = decide(in_canary, config_desired(X2, FP_X2, digest=B), NOW)
    assert restaged.record.state == S.STAGED
    assert restaged.effects[:3] == (StopEvaluation(B), Stage(B, X2), StartCanary(B))
    in_trial = replace(downloading, state=S.TRIAL)
    restaged = decide(in_trial, config_desired(X2, FP_X2, digest=B), NOW)
    assert restaged.effects[0] == SwapToCommitted(A, X)
    # A config alone (no bundle named) while B installs joins B too; it does not cancel it.
    alone = decide(downloading, config_desired(X2, FP_X2), NOW)
    assert alone.record.candidate == B and alone.record.candidate_config == X2


def test_a_config_with_nothing_to_run_applies_at_once() -> None:
    fresh = UpdateRecord.initial(NOW)
    decision = decide(fresh, config_desired(X, FP_X), NOW)
    assert decision.record.state == S.IDLE and decision.record.committed_config == X
    assert decision.effects == (CommitConfig(X), ReportState())
    assert decide(decision.record, config_desired(X, FP_X), NOW).ignored is not None


def test_restart_during_a_config_canary_resumes_it_without_verifying_the_committed_slot() -> None:
    canary = replace(decide(configured(), config_desired(X2, FP_X2), NOW).record, state=S.CANARY)
    resumed = recover(canary, NOW)
    assert resumed.record.state == S.STAGED
    assert kinds(resumed.effects) == (SwapToCommitted, CollectGarbage, Stage, StartCanary, R)
    assert resumed.effects[0] == SwapToCommitted(A, X) and resumed.effects[2] == Stage(A, X2)
    passive = decide(configured(), config_desired(X3, FP_X), NOW).record
    resumed_trial = recover(passive, NOW, clean_shutdown=True)
    assert resumed_trial.record.state == S.TRIAL
    assert kinds(resumed_trial.effects) == (SwapToCommitted, CollectGarbage, SwapToCandidate, StartWatch, R)
    assert resumed_trial.effects[3] == StartWatch(A, paired=False)


CONFIGS = {X: FP_X, X2: FP_X2, X3: FP_X}


@settings(max_examples=300, deadline=None)
@given(start_committed=st.sampled_from([None, A]), data=st.data())
def test_random_sequences_with_configs_keep_the_config_in_force_consistent(
    start_committed: str | None, data: st.DataObject
) -> None:
    record = replace(
        UpdateRecord.initial(NOW, committed=start_committed), committed_config=X, committed_config_inference=FP_X
    )
    in_force: str | None = X
    bundle_or_config = st.builds(
        lambda d, c, a: DesiredBundleChanged(d, arts(d) if d else (), a, c, CONFIGS[c] if c else None),
        st.sampled_from(["", A, B]),
        st.sampled_from([None, X, X2, X3]),
        st.sampled_from(["", "as-1", "as-2"]),
    )
    for i in range(data.draw(st.integers(0, 50), label="length")):
        happy = HAPPY_NEXT.get(record.state)
        choices = [events_strategy, bundle_or_config] + ([st.just(happy)] if happy else [])
        event = data.draw(st.one_of(*choices))
        decision = decide(record, event, NOW + timedelta(seconds=i))
        nxt = decision.record
        if decision.ignored is not None:
            continue
        for effect in decision.effects:
            if isinstance(effect, SwapToCandidate):
                in_force = effect.config
            elif isinstance(effect, SwapToCommitted):
                assert (effect.digest, effect.config) == (nxt.committed, nxt.committed_config)
                in_force = effect.config
            elif isinstance(effect, CommitConfig):
                in_force = effect.config
        if nxt.committed_config != record.committed_config:
            assert any(
                isinstance(e, Commit | CommitConfig) and e.config == nxt.committed_config for e in decision.effects
            ), "the committed config changes only by a commit of it"
        if nxt.state == S.TRIAL:
            assert in_force == (nxt.candidate_config if nxt.candidate_config is not None else nxt.committed_config)
        else:
            assert in_force == nxt.committed_config, "outside a trial the committed config is in force"
        if nxt.committed_config is not None:
            assert nxt.committed_config_inference == CONFIGS[nxt.committed_config]
        record = nxt


def test_a_record_from_before_config_candidates_adopts_the_config_saved_on_disk() -> None:
    legacy = record_in(S.COMMITTED)  # committed A, no committed_config
    adopted = recover(legacy, NOW, saved_config=(X, FP_X)).record
    assert (adopted.committed_config, adopted.committed_config_inference) == (X, FP_X)
    # The same config desired (under a new assignment) is already committed: nothing to trial.
    again = decide(adopted, config_desired(X, FP_X), NOW)
    assert again.record.state == S.COMMITTED and again.record.candidate_config is None
    assert again.effects == (ReportState(),)
    # A record that names its config keeps it.
    assert recover(configured(), NOW, saved_config=(X2, FP_X2)).record.committed_config == X
