"""The update machine after a restart: resuming each state, which crashes count against the candidate, the crash cap."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from edge_runtime.update.effects import (
    CollectGarbage,
    DiscardCandidate,
    ReportState,
    Stage,
    StartCanary,
    StartDownload,
    StartWatch,
    SwapToCandidate,
    SwapToCommitted,
    Verify,
)
from edge_runtime.update.events import CanaryStarted, Recovered, TrialPassed, VerificationFailed, VerificationPassed
from edge_runtime.update.record import DEFAULT_LIMITS, IN_PROGRESS, UpdateState
from edge_runtime.update.recovery import crash_attributable
from edge_runtime.update.state import decide, recover
from tests.unit.update_state_cases import NOW, A, B, S, arts, desired, record_in


def test_recover_resumes_a_download_keeping_its_partial_files() -> None:
    decision = recover(record_in(S.DOWNLOADING), NOW)
    assert decision.record.state == S.DOWNLOADING and decision.record.candidate == B
    assert decision.effects == (
        SwapToCommitted(A),
        CollectGarbage(keep=(A, B)),
        ReportState(),
        StartDownload(B, arts(B)),
    )
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
