"""The pure update state machine: every TRANSITIONS row, ignored pairs, loop caps, recovery, invariants."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.update.effects import (
    CollectGarbage,
    Commit,
    CommitConfig,
    DiscardCandidate,
    RaiseAlert,
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
from edge_runtime.update.recovery import crash_attributable
from edge_runtime.update.state import TRANSITIONS, decide, recover
from edgefleet.contract.digests import is_digest

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
A = "sha256:" + "a" * 64  # committed
B = "sha256:" + "b" * 64  # candidate
C = "sha256:" + "c" * 64  # another bundle

S = UpdateState


def arts(digest: str) -> tuple[ArtifactRef, ...]:
    return (ArtifactRef("bundle.json", digest, 10), ArtifactRef("model.onnx", "sha256:" + "f" * 64, 100))


def desired(digest: str) -> DesiredBundleChanged:
    return DesiredBundleChanged(digest, arts(digest))


def record_in(state: UpdateState, **changes: object) -> UpdateRecord:
    base = UpdateRecord.initial(NOW - timedelta(minutes=5), committed=A)
    if state in IN_PROGRESS:
        base = replace(
            base,
            candidate=B,
            candidate_artifacts=arts(B),
            candidate_since=NOW - timedelta(minutes=5),
            download_attempts=1,
            canary_attempts=1 if state in (S.CANARY, S.TRIAL) else 0,
        )
    return replace(base, state=state, **changes)  # type: ignore[arg-type]


def kinds(effects: tuple[object, ...]) -> tuple[type, ...]:
    return tuple(type(e) for e in effects)


R = ReportState
# (id, state, event, expected state, expected effect types)
CASES: list[tuple[str, UpdateState, UpdateEvent, UpdateState, tuple[type, ...]]] = [
    *[(f"{s}-desired-new", s, desired(C), S.DOWNLOADING, (StartDownload, R)) for s in sorted(SETTLED)],
    *[(f"{s}-recovered", s, Recovered(), s, (SwapToCommitted, CollectGarbage, R)) for s in sorted(SETTLED)],
    (
        "downloading-desired-new",
        S.DOWNLOADING,
        desired(C),
        S.DOWNLOADING,
        (DiscardCandidate, StartDownload, R),
    ),
    ("verifying-desired-new", S.VERIFYING, desired(C), S.DOWNLOADING, (DiscardCandidate, StartDownload, R)),
    (
        "staged-desired-new",
        S.STAGED,
        desired(C),
        S.DOWNLOADING,
        (StopEvaluation, DiscardCandidate, StartDownload, R),
    ),
    (
        "canary-desired-new",
        S.CANARY,
        desired(C),
        S.DOWNLOADING,
        (StopEvaluation, DiscardCandidate, StartDownload, R),
    ),
    (
        "trial-desired-new",
        S.TRIAL,
        desired(C),
        S.DOWNLOADING,
        (SwapToCommitted, StopEvaluation, DiscardCandidate, StartDownload, R),
    ),
    # Restarts resume: the committed bundle serves, the same candidate picks up where it stood.
    (
        "downloading-recovered",
        S.DOWNLOADING,
        Recovered(),
        S.DOWNLOADING,
        (SwapToCommitted, CollectGarbage, StartDownload, R),
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
    ("download-failed-retry", S.DOWNLOADING, DownloadFailed("reset"), S.DOWNLOADING, (StartDownload, R)),
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
    assert decision.effects[2] == StartDownload(C, arts(C))
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
        assert decision.effects[0] == StartDownload(B, arts(B))
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


def test_recover_resumes_a_download_keeping_its_partial_files() -> None:
    decision = recover(record_in(S.DOWNLOADING), NOW)
    assert decision.record.state == S.DOWNLOADING and decision.record.candidate == B
    assert decision.effects[:3] == (SwapToCommitted(A), CollectGarbage(keep=(A, B)), StartDownload(B, arts(B)))
    assert not any(isinstance(e, DiscardCandidate) for e in decision.effects)
    # A death while downloading is no crash of the candidate: no candidate code ran.
    assert (decision.record.interruptions, decision.record.crashes) == (1, 0)
    assert decision.record.failure == "resumed at downloading after the process died"


@pytest.mark.parametrize("state", [S.STAGED, S.CANARY])
def test_restart_during_canary_reverifies_then_resumes_the_canary(state: UpdateState) -> None:
    decision = recover(record_in(state, candidate_loaded_at=NOW - timedelta(seconds=30)), NOW)
    record = decision.record
    assert record.state == S.VERIFYING and record.resuming == S.CANARY and record.candidate == B
    assert decision.effects[0] == SwapToCommitted(A)
    assert Verify(B, arts(B)) in decision.effects
    staged = decide(record, VerificationPassed(), NOW)
    assert staged.record.state == S.STAGED and staged.effects[:2] == (Stage(B), StartCanary(B))
    assert staged.record.candidate_loaded_at == NOW and staged.record.resuming is None


def test_restart_during_trial_reverifies_then_serves_and_watches_the_same_candidate() -> None:
    record = recover(record_in(S.TRIAL, canary_summary="p95 3 ms"), NOW, clean_shutdown=True).record
    assert record.state == S.VERIFYING and record.resuming == S.TRIAL
    assert record.failure == "resumed at trial after the process stopped cleanly"
    trial = decide(record, VerificationPassed(), NOW)
    assert trial.record.state == S.TRIAL and trial.record.resuming is None
    assert trial.effects[:3] == (Stage(B), SwapToCandidate(B), StartWatch(B))
    assert decide(trial.record, TrialPassed(), NOW).record.committed == B
    # A slot that no longer verifies is rejected, the committed bundle keeps serving.
    broken = decide(record, VerificationFailed("sha256 mismatch"), NOW).record
    assert broken.state == S.FAILED and broken.rejected == B and broken.committed == A


LOADED_30S_AGO = NOW - timedelta(seconds=30)


@pytest.mark.parametrize(
    ("state", "clean", "loaded_at", "counts"),
    [
        (S.CANARY, False, LOADED_30S_AGO, True),
        (S.TRIAL, False, LOADED_30S_AGO, True),
        (S.STAGED, False, LOADED_30S_AGO, True),  # died loading it
        (S.TRIAL, True, LOADED_30S_AGO, False),  # a clean SIGTERM stop never counts
        (S.TRIAL, False, NOW - timedelta(seconds=DEFAULT_LIMITS.crash_window_s + 1), False),  # long after loading
        (S.DOWNLOADING, False, None, False),
        (S.VERIFYING, False, None, False),
    ],
)
def test_only_crashes_attributable_to_the_candidate_count(
    state: UpdateState, clean: bool, loaded_at: datetime | None, counts: bool
) -> None:
    record = record_in(state, candidate_loaded_at=loaded_at)
    assert crash_attributable(record, Recovered(clean_shutdown=clean), NOW, DEFAULT_LIMITS) is counts
    after = recover(record, NOW, clean_shutdown=clean).record
    assert after.crashes == (1 if counts else 0) and after.interruptions == 1
    assert after.candidate == B and after.state in IN_PROGRESS  # one crash never rejects


def test_a_candidate_that_keeps_killing_the_process_is_rejected() -> None:
    record = record_in(S.TRIAL)
    for crash in range(1, DEFAULT_LIMITS.max_interruptions + 1):
        record = recover(record, NOW).record
        assert record.committed == A and record.crashes == crash
        if record.rejected:
            break
        # The resumed trial is reached again and the process dies again, right after loading it.
        record = decide(record, VerificationPassed(), NOW).record
        assert record.state == S.TRIAL
    assert record.state == S.ROLLED_BACK and record.rejected == B
    assert record.interruptions == record.crashes == DEFAULT_LIMITS.max_interruptions
    assert "crashed 3 times" in (record.failure or "")
    assert decide(record, desired(B), NOW).ignored is not None


def test_clean_restarts_resume_without_limit() -> None:
    record = record_in(S.CANARY)
    for _ in range(10):
        record = recover(record, NOW, clean_shutdown=True).record
        record = decide(record, VerificationPassed(), NOW).record
        record = decide(record, CanaryStarted(), NOW).record
    assert record.state == S.CANARY and record.crashes == 0 and record.interruptions == 10 and not record.rejected


def test_recover_in_settled_state_serves_committed() -> None:
    decision = recover(record_in(S.COMMITTED), NOW)
    assert decision.record.state == S.COMMITTED
    assert decision.effects[0] == SwapToCommitted(A)


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

DIGESTS = (A, B, C)
events_strategy: st.SearchStrategy[UpdateEvent] = st.one_of(
    st.sampled_from(DIGESTS).map(desired),
    st.sampled_from(
        [
            DownloadCompleted(),
            DownloadFailed("drop"),
            DiskInsufficient(100, 1),
            VerificationPassed(),
            VerificationFailed("bad"),
            CanaryStarted(),
            CanaryPassed("ok"),
            CanaryFailed("p95"),
            CanaryInconclusive("few"),
            TrialPassed(),
            TrialFailed("hot"),
            Recovered(),
            Recovered(clean_shutdown=True),
            CandidateLoadFailed("oom"),
            CanaryFailed("slow", latency_only=True),
            TrialFailed("slow", latency_only=True),
            Cancelled(),
        ]
    ),
)


HAPPY_NEXT: dict[UpdateState, UpdateEvent] = {
    S.DOWNLOADING: DownloadCompleted(),
    S.VERIFYING: VerificationPassed(),
    S.STAGED: CanaryStarted(),
    S.CANARY: CanaryPassed("ok"),
    S.TRIAL: TrialPassed(),
}


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


# --- assignments -------------------------------------------------------------------------------------------


def desired_under(digest: str, assignment: str) -> DesiredBundleChanged:
    return DesiredBundleChanged(digest, arts(digest), assignment)


def test_candidate_carries_its_assignment_and_rejection_remembers_it() -> None:
    started = decide(record_in(S.IDLE), desired_under(B, "as-1"), NOW).record
    assert started.assignment_id == "as-1"
    rejected = decide(replace(started, state=S.CANARY), CanaryFailed("p95 41 ms"), NOW).record
    assert (rejected.rejected, rejected.rejected_assignment, rejected.assignment_id) == (B, "as-1", "as-1")
    # The same bundle under the same assignment: not retried.
    again = decide(rejected, desired_under(B, "as-1"), NOW)
    assert again.ignored is not None and "rejected under assignment as-1" in again.ignored
    # Under a new assignment (the operator forced a re-rollout): retried from scratch.
    retried = decide(rejected, desired_under(B, "as-2"), NOW)
    assert retried.record.state == S.DOWNLOADING and retried.record.assignment_id == "as-2"
    assert retried.record.interruptions == 0
    assert retried.record.rejected_under(B, "as-1") and not retried.record.rejected_under(B, "as-2")
    assert StartDownload(B, arts(B)) in retried.effects


def test_new_assignment_of_the_committed_bundle_reports_committed_under_it() -> None:
    rolled_back = record_in(S.ROLLED_BACK, assignment_id="as-1", rejected=B, rejections=((B, "as-1"),))
    decision = decide(rolled_back, desired_under(A, "as-2"), NOW)
    assert decision.record.state == S.COMMITTED and decision.record.assignment_id == "as-2"
    assert decision.record.failure is None and decision.effects == (ReportState(),)
    assert decision.record.rejected == B  # still remembered for its own assignment
    assert decide(decision.record, desired_under(A, "as-2"), NOW).ignored is not None


def test_new_assignment_of_the_candidate_in_progress_keeps_going_under_it() -> None:
    canary = record_in(S.CANARY, assignment_id="as-1")
    decision = decide(canary, desired_under(B, "as-2"), NOW)
    assert decision.record.state == S.CANARY and decision.record.assignment_id == "as-2"
    assert decision.record.entered_at == canary.entered_at
    assert decision.effects == (ReportState(),)


def test_revert_to_the_committed_bundle_under_a_new_assignment_is_reached_at_once() -> None:
    decision = decide(record_in(S.TRIAL, assignment_id="as-1"), desired_under(A, "revert-1"), NOW)
    assert decision.record.state == S.COMMITTED and decision.record.assignment_id == "revert-1"
    assert decision.effects[0] == SwapToCommitted(A)
    assert DiscardCandidate(B, keep_partial=False) in decision.effects
    assert decision.record.committed == A and decision.record.candidate == B


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_bundle_rejected_under_an_assignment_is_never_downloaded_again_under_it(data: st.DataObject) -> None:
    record = UpdateRecord.initial(NOW, committed=A)
    rejected_under: set[tuple[str, str, str]] = set()
    assignment_events = st.builds(desired_under, st.sampled_from(DIGESTS), st.sampled_from(["", "as-1", "as-2"]))
    for i in range(data.draw(st.integers(0, 60), label="length")):
        happy = HAPPY_NEXT.get(record.state)
        choices = [events_strategy, assignment_events] + ([st.just(happy)] if happy else [])
        event = data.draw(st.one_of(*choices))
        decision = decide(record, event, NOW + timedelta(seconds=i))
        for effect in decision.effects:
            if isinstance(effect, StartDownload) and isinstance(event, DesiredBundleChanged):
                assert (effect.digest, "", event.assignment_id) not in rejected_under
        nxt = decision.record
        if decision.ignored is None and isinstance(event, DesiredBundleChanged) and is_digest(event.digest):
            assert nxt.assignment_id == event.assignment_id, "the record acts on the newest assignment"
        rejected_under.update(nxt.rejections)
        record = nxt


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
