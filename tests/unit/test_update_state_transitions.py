"""The pure update state machine: every TRANSITIONS row, ignored pairs, desired-bundle rules, loop caps, the record
format, random-sequence invariants."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.update.effects import (
    CollectGarbage,
    Commit,
    DiscardCandidate,
    ReportState,
    Stage,
    StartCanary,
    StartDownload,
    StartWatch,
    StopEvaluation,
    SwapToCandidate,
    SwapToCommitted,
    Verify,
)
from edge_runtime.update.errors import RecordFormatError
from edge_runtime.update.events import (
    EVENT_TYPES,
    CanaryFailed,
    CanaryInconclusive,
    CanaryPassed,
    CanaryStarted,
    Cancelled,
    CandidateLoadFailed,
    DesiredBundleChanged,
    DiskInsufficient,
    DownloadCompleted,
    DownloadFailed,
    Recovered,
    TrialFailed,
    TrialPassed,
    UpdateEvent,
    VerificationFailed,
    VerificationPassed,
)
from edge_runtime.update.record import DEFAULT_LIMITS, IN_PROGRESS, SETTLED, ArtifactRef, UpdateRecord, UpdateState
from edge_runtime.update.state import TRANSITIONS, decide
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

# (id, state, event, expected state, expected effect types). ReportState comes last, except before a
# StartDownload: the driver blocks in it until the download ends, so the new state is reported first.
CASES: list[tuple[str, UpdateState, UpdateEvent, UpdateState, tuple[type, ...]]] = [
    *[(f"{s}-desired-new", s, desired(C), S.DOWNLOADING, (R, StartDownload)) for s in sorted(SETTLED)],
    *[(f"{s}-recovered", s, Recovered(), s, (SwapToCommitted, CollectGarbage, R)) for s in sorted(SETTLED)],
    (
        "downloading-desired-new",
        S.DOWNLOADING,
        desired(C),
        S.DOWNLOADING,
        (DiscardCandidate, R, StartDownload),
    ),
    ("verifying-desired-new", S.VERIFYING, desired(C), S.DOWNLOADING, (DiscardCandidate, R, StartDownload)),
    (
        "staged-desired-new",
        S.STAGED,
        desired(C),
        S.DOWNLOADING,
        (StopEvaluation, DiscardCandidate, R, StartDownload),
    ),
    (
        "canary-desired-new",
        S.CANARY,
        desired(C),
        S.DOWNLOADING,
        (StopEvaluation, DiscardCandidate, R, StartDownload),
    ),
    (
        "trial-desired-new",
        S.TRIAL,
        desired(C),
        S.DOWNLOADING,
        (SwapToCommitted, StopEvaluation, DiscardCandidate, R, StartDownload),
    ),
    # Restarts resume: the committed bundle serves, the same candidate picks up where it stood.
    (
        "downloading-recovered",
        S.DOWNLOADING,
        Recovered(),
        S.DOWNLOADING,
        (SwapToCommitted, CollectGarbage, R, StartDownload),
    ),
    *[
        (f"{s}-recovered", s, Recovered(), S.VERIFYING, (SwapToCommitted, CollectGarbage, Verify, R))
        for s in (S.VERIFYING, S.STAGED, S.CANARY, S.TRIAL)
    ],
    ("staged-load-failed", S.STAGED, CandidateLoadFailed("oom"), S.ROLLED_BACK, (StopEvaluation, DiscardCandidate, R)),
    (
        "trial-load-failed",
        S.TRIAL,
        CandidateLoadFailed("oom"),
        S.ROLLED_BACK,
        (SwapToCommitted, StopEvaluation, DiscardCandidate, R),
    ),
    ("downloading-cancelled", S.DOWNLOADING, Cancelled(), S.IDLE, (DiscardCandidate, R)),
    ("verifying-cancelled", S.VERIFYING, Cancelled(), S.IDLE, (DiscardCandidate, R)),
    ("staged-cancelled", S.STAGED, Cancelled(), S.IDLE, (StopEvaluation, DiscardCandidate, R)),
    ("canary-cancelled", S.CANARY, Cancelled(), S.ROLLED_BACK, (StopEvaluation, DiscardCandidate, R)),
    (
        "trial-cancelled",
        S.TRIAL,
        Cancelled(),
        S.ROLLED_BACK,
        (SwapToCommitted, StopEvaluation, DiscardCandidate, R),
    ),
    ("download-completed", S.DOWNLOADING, DownloadCompleted(), S.VERIFYING, (Verify, R)),
    ("download-failed-retry", S.DOWNLOADING, DownloadFailed("reset"), S.DOWNLOADING, (R, StartDownload)),
    ("disk-insufficient", S.DOWNLOADING, DiskInsufficient(10, 5), S.FAILED, (DiscardCandidate, R)),
    ("verification-passed", S.VERIFYING, VerificationPassed(), S.STAGED, (Stage, StartCanary, R)),
    ("verification-failed", S.VERIFYING, VerificationFailed("bad sig"), S.FAILED, (DiscardCandidate, R)),
    ("canary-started", S.STAGED, CanaryStarted(), S.CANARY, (R,)),
    ("stage-failed", S.STAGED, CanaryFailed("load"), S.ROLLED_BACK, (StopEvaluation, DiscardCandidate, R)),
    ("canary-failed", S.CANARY, CanaryFailed("p95"), S.ROLLED_BACK, (StopEvaluation, DiscardCandidate, R)),
    ("canary-inconclusive", S.CANARY, CanaryInconclusive("few frames"), S.CANARY, (StartCanary, R)),
    ("canary-passed", S.CANARY, CanaryPassed("p95 12ms"), S.TRIAL, (SwapToCandidate, StartWatch, R)),
    ("trial-passed", S.TRIAL, TrialPassed(), S.COMMITTED, (Commit, R)),
    (
        "trial-failed",
        S.TRIAL,
        TrialFailed("thermal"),
        S.ROLLED_BACK,
        (SwapToCommitted, StopEvaluation, DiscardCandidate, R),
    ),
]


def test_every_transition_row_has_a_case() -> None:
    covered = {(state, type(event)) for _, state, event, _, _ in CASES}
    assert covered == set(TRANSITIONS)


@pytest.mark.parametrize(("state", "event", "expected", "effects"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_transition_row(
    state: UpdateState, event: UpdateEvent, expected: UpdateState, effects: tuple[type, ...]
) -> None:
    decision = decide(record_in(state), event, NOW)
    assert decision.ignored is None
    assert decision.record.state == expected
    assert kinds(decision.effects) == effects
    assert decision.record.updated_at == NOW
    assert decision.record.entered_at == (NOW if expected != state else record_in(state).entered_at)
    # Whatever happens, the committed bundle is never lost or replaced except by a trial that passed.
    if expected != S.COMMITTED:
        assert decision.record.committed == A
    for effect in decision.effects:
        if isinstance(effect, SwapToCommitted):
            assert effect.digest == A


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.IDLE, DownloadCompleted()),
        (S.COMMITTED, TrialPassed()),
        (S.TRIAL, CanaryPassed("late verdict")),
        (S.VERIFYING, DownloadCompleted()),
        (S.IDLE, Cancelled()),
        (S.FAILED, VerificationPassed()),
        (S.CANARY, CanaryStarted()),
        (S.DOWNLOADING, TrialPassed()),
    ],
)
def test_unknown_pairs_are_ignored_with_a_reason(state: UpdateState, event: UpdateEvent) -> None:
    record = record_in(state)
    decision = decide(record, event, NOW)
    assert decision.record == record
    assert decision.effects == ()
    assert decision.ignored is not None
    assert type(event).__name__ in decision.ignored and state.value in decision.ignored


def test_desired_equal_to_committed_is_a_no_op() -> None:
    for state in SETTLED:
        decision = decide(record_in(state), desired(A), NOW)
        assert decision.ignored is not None and "already committed" in decision.ignored
        assert decision.effects == ()


def test_desired_equal_to_committed_during_trial_rolls_back() -> None:
    decision = decide(record_in(S.TRIAL), desired(A), NOW)
    assert decision.record.state == S.ROLLED_BACK
    assert decision.effects[0] == SwapToCommitted(A)
    assert decision.record.failure is not None and decision.record.failure.startswith("cancelled at trial")
    assert DiscardCandidate(B, keep_partial=False) in decision.effects


def test_same_candidate_while_in_progress_is_ignored() -> None:
    decision = decide(record_in(S.CANARY), desired(B), NOW)
    assert decision.ignored is not None and "already being installed" in decision.ignored


def test_new_desired_during_canary_cancels_candidate_then_downloads_new_one() -> None:
    decision = decide(record_in(S.CANARY), desired(C), NOW)
    assert decision.effects[:2] == (StopEvaluation(B), DiscardCandidate(B, keep_partial=False))
    assert decision.effects[2:] == (ReportState(), StartDownload(C, arts(C))), "reported before the download blocks"
    assert decision.record.candidate == C
    assert decision.record.candidate_since == NOW
    assert decision.record.canary_attempts == 0


@pytest.mark.parametrize(
    ("event", "fragment"),
    [
        (DesiredBundleChanged("sha256:nothex", arts(B)), "sha256:<64 hex>"),
        (DesiredBundleChanged(C, ()), "lists no artifacts"),
        (DesiredBundleChanged(C, (ArtifactRef("x", "md5:1", 1),)), "malformed artifacts"),
    ],
)
def test_malformed_desired_bundles_are_ignored(event: DesiredBundleChanged, fragment: str) -> None:
    decision = decide(record_in(S.IDLE), event, NOW)
    assert decision.ignored is not None and fragment in decision.ignored


def test_rejected_bundle_is_not_retried() -> None:
    failed = decide(record_in(S.VERIFYING), VerificationFailed("signature by unknown key"), NOW).record
    assert failed.rejected == B
    decision = decide(failed, desired(B), NOW)
    assert decision.ignored is not None and "rejected" in decision.ignored
    assert "signature by unknown key" in decision.ignored
    # A different bundle is accepted.
    assert decide(failed, desired(C), NOW).record.state == S.DOWNLOADING


def test_download_failures_are_retried_up_to_the_cap() -> None:
    record = record_in(S.DOWNLOADING)
    for attempt in range(1, DEFAULT_LIMITS.max_download_attempts):
        decision = decide(record, DownloadFailed(f"drop {attempt}"), NOW)
        assert decision.record.state == S.DOWNLOADING
        assert decision.effects == (ReportState(), StartDownload(B, arts(B)))
        record = decision.record
    assert record.download_attempts == DEFAULT_LIMITS.max_download_attempts
    final = decide(record, DownloadFailed("drop last"), NOW)
    assert final.record.state == S.FAILED
    assert final.record.failure == "download failed after 5 attempts: drop last"
    assert final.effects[0] == DiscardCandidate(B, keep_partial=True)
    assert final.record.rejected is None


def test_inconclusive_canaries_are_capped_and_do_not_reject() -> None:
    record = record_in(S.CANARY)
    while True:
        decision = decide(record, CanaryInconclusive("only 12 frames"), NOW)
        record = decision.record
        if record.state != S.CANARY:
            break
        assert decision.effects[0] == StartCanary(B)
    assert record.state == S.ROLLED_BACK
    assert record.failure == "canary inconclusive after 3 runs: only 12 frames"
    assert record.rejected is None


def test_trial_passed_commits_and_keeps_previous() -> None:
    decision = decide(record_in(S.TRIAL), TrialPassed(), NOW)
    assert decision.record.committed == B
    assert decision.record.previous == A
    assert decision.record.candidate is None
    assert decision.effects[0] == Commit(B, keep=(B, A))


def test_first_ever_commit_has_no_previous() -> None:
    record = replace(record_in(S.TRIAL), committed=None)
    decision = decide(record, TrialPassed(), NOW)
    assert decision.record.committed == B and decision.record.previous is None
    failed = decide(record, TrialFailed("drift"), NOW)
    assert failed.effects[0] == SwapToCommitted(None)


def test_record_json_round_trip_and_errors() -> None:
    record = record_in(S.CANARY, failure="x", canary_summary="p95 9ms")
    assert UpdateRecord.from_json(record.to_json()) == record
    data = record.to_dict()
    with pytest.raises(RecordFormatError, match="'record_version' must be 1 or 2, got 3"):
        UpdateRecord.from_dict({**data, "record_version": 3})
    with pytest.raises(RecordFormatError, match=r"'state' must be one of .* got 'installing'"):
        UpdateRecord.from_dict({**data, "state": "installing"})
    with pytest.raises(RecordFormatError, match="'committed' must be sha256"):
        UpdateRecord.from_dict({**data, "committed": "v1"})
    with pytest.raises(RecordFormatError, match="'entered_at' must carry a UTC offset"):
        UpdateRecord.from_dict({**data, "entered_at": "2030-01-01T00:00:00"})
    with pytest.raises(RecordFormatError, match="not valid JSON"):
        UpdateRecord.from_json('{"state": ')


def test_state_values_never_change() -> None:
    assert [s.value for s in UpdateState] == [
        "idle",
        "downloading",
        "verifying",
        "staged",
        "canary",
        "trial",
        "committed",
        "rolled_back",
        "failed",
    ]


# --- random event sequences ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(start_committed=st.sampled_from([None, A]), data=st.data())
def test_random_sequences_keep_invariants(start_committed: str | None, data: st.DataObject) -> None:
    record = UpdateRecord.initial(NOW, committed=start_committed)
    verified: set[str] = {A} if start_committed else set()
    served: str | None = start_committed
    ever_committed = start_committed is not None
    for i in range(data.draw(st.integers(0, 60), label="length")):
        # Half the time the event that moves the update forward, so sequences reach trial and commit.
        happy = HAPPY_NEXT.get(record.state)
        event = data.draw(st.one_of(events_strategy, st.just(happy)) if happy else events_strategy)
        now = NOW + timedelta(seconds=i)
        decision = decide(record, event, now)
        assert decision == decide(record, event, now), "decide must be deterministic"
        nxt = decision.record
        assert isinstance(nxt.state, UpdateState) and nxt.state in set(UpdateState)
        assert UpdateRecord.from_json(nxt.to_json()) == nxt
        if decision.ignored is not None:
            assert nxt == record and decision.effects == ()
            continue
        if isinstance(event, VerificationPassed) and record.state == S.VERIFYING:
            assert record.candidate is not None
            verified.add(record.candidate)
        commits = [e for e in decision.effects if isinstance(e, Commit)]
        assert len(commits) <= 1, "never two commits in one decision"
        if nxt.committed != record.committed:
            assert commits and commits[0].digest == nxt.committed, "committed changes only by a Commit"
        if commits:
            assert commits[0].digest in verified, "committed a bundle that never passed verification"
        for effect in decision.effects:
            if isinstance(effect, Stage | SwapToCandidate):
                assert effect.digest in verified, f"{effect} on an unverified bundle"
            if isinstance(effect, SwapToCandidate):
                served = effect.digest
            if isinstance(effect, SwapToCommitted):
                assert effect.digest == nxt.committed
                served = effect.digest
        assert served is None or served in verified
        # The device serves its committed bundle, except the candidate during its trial.
        assert served == (nxt.candidate if nxt.state == S.TRIAL else nxt.committed)
        if ever_committed:
            assert nxt.committed is not None, "committed was lost"
        ever_committed = ever_committed or nxt.committed is not None
        assert nxt.download_attempts <= DEFAULT_LIMITS.max_download_attempts
        assert nxt.canary_attempts <= DEFAULT_LIMITS.max_canary_attempts
        # Restarts resume without limit; only attributable crashes are capped (they reject the candidate).
        assert nxt.crashes <= DEFAULT_LIMITS.max_interruptions
        if nxt.state in IN_PROGRESS:
            # A candidate is (bundle, config): the committed bundle is a candidate only under another config.
            assert nxt.candidate is not None and (nxt.candidate != nxt.committed or nxt.config_candidate)
        record = nxt


def test_event_types_match_the_union() -> None:
    # The table is the machine's match over events: a new variant must be listed and handled somewhere,
    # or decide() would ignore it silently in every state.
    assert set(get_args(UpdateEvent)) == set(EVENT_TYPES)
    assert {t for _, t in TRANSITIONS} == set(EVENT_TYPES)
