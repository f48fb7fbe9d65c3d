"""Handlers of a candidate's progress: download, verification, canary and trial outcomes.

Each moves the candidate one step along ``downloading → verifying → staged → canary → trial → committed``
or gives up on it (``failed`` before it ran, ``rolled_back`` after), rejecting it where the rules say so.
The first-install policy (nothing committed to fall back to) lives here too: a latency-only miss or an
inconclusive canary serves the candidate degraded, with an alert. See ``edge_runtime.update.state``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from edge_runtime.update.decision import (
    Decision,
    abandon,
    commit_changes,
    serve_candidate,
    stage_candidate,
    target_config,
    transition,
    watch_candidate,
)
from edge_runtime.update.effects import (
    Commit,
    RaiseAlert,
    StartCanary,
    StartDownload,
    StopEvaluation,
    UpdateEffect,
    Verify,
)
from edge_runtime.update.events import (
    CanaryFailed,
    CanaryInconclusive,
    CanaryPassed,
    CanaryStarted,
    CandidateLoadFailed,
    DiskInsufficient,
    DownloadCompleted,
    DownloadFailed,
    TrialFailed,
    TrialPassed,
    VerificationFailed,
    VerificationPassed,
    format_bytes,
)
from edge_runtime.update.record import RetryLimits, UpdateRecord, UpdateState


def _again(record: UpdateRecord, now: datetime, effect: UpdateEffect, counter: str, why: str) -> Decision:
    """Run ``effect`` once more in the same state, counting the attempt in the record field ``counter``."""
    return transition(record, record.state, now, effect, **{counter: getattr(record, counter) + 1}, failure=why)


def on_download_completed(
    record: UpdateRecord, event: DownloadCompleted, now: datetime, limits: RetryLimits
) -> Decision:
    assert record.candidate is not None
    return transition(record, UpdateState.VERIFYING, now, Verify(record.candidate, record.candidate_artifacts))


def on_download_failed(record: UpdateRecord, event: DownloadFailed, now: datetime, limits: RetryLimits) -> Decision:
    assert record.candidate is not None
    if record.download_attempts < limits.max_download_attempts:
        why = f"download attempt {record.download_attempts} failed: {event.reason}"
        return _again(
            record, now, StartDownload(record.candidate, record.candidate_artifacts), "download_attempts", why
        )
    return abandon(
        record,
        UpdateState.FAILED,
        now,
        f"download failed after {record.download_attempts} attempts: {event.reason}",
        keep_partial=True,
    )


def on_disk_insufficient(record: UpdateRecord, event: DiskInsufficient, now: datetime, limits: RetryLimits) -> Decision:
    assert record.candidate is not None
    needs = f"needs {format_bytes(event.needed)}, {format_bytes(event.free)} free"
    return abandon(record, UpdateState.FAILED, now, f"not enough disk for {record.candidate}: {needs}")


def on_verification_passed(
    record: UpdateRecord, event: VerificationPassed, now: datetime, limits: RetryLimits
) -> Decision:
    candidate = record.candidate
    assert candidate is not None
    if record.resuming == UpdateState.TRIAL:
        # The canary passed before the restart (the record was in trial): serve it again and watch anew.
        return transition(
            record,
            UpdateState.TRIAL,
            now,
            stage_candidate(record),
            serve_candidate(record),
            watch_candidate(record),
            candidate_loaded_at=now,
            resuming=None,
        )
    return transition(
        record,
        UpdateState.STAGED,
        now,
        stage_candidate(record),
        StartCanary(candidate),
        candidate_loaded_at=now,
        resuming=None,
    )


def on_verification_failed(
    record: UpdateRecord, event: VerificationFailed, now: datetime, limits: RetryLimits
) -> Decision:
    assert record.candidate is not None
    return abandon(record, UpdateState.FAILED, now, f"verification failed: {event.reason}", reject=True)


def on_canary_started(record: UpdateRecord, event: CanaryStarted, now: datetime, limits: RetryLimits) -> Decision:
    return transition(record, UpdateState.CANARY, now, canary_attempts=1)


def _serve_in_trial(record: UpdateRecord, now: datetime, *alerts: RaiseAlert, **changes: Any) -> Decision:
    """The candidate serves and its watch window starts (``trial``)."""
    effects: tuple[UpdateEffect, ...] = (serve_candidate(record), watch_candidate(record), *alerts)
    return transition(record, UpdateState.TRIAL, now, *effects, **changes)


def _first_install_degraded(
    record: UpdateRecord,
    now: datetime,
    *,
    commit: bool,
    code: str,
    why: str,
    numbers: tuple[tuple[str, float], ...],
) -> Decision:
    """First install: the candidate that missed only on latency (or stayed inconclusive) serves anyway,
    degraded: in trial after its canary, committed (``commit``) after its trial (one alert per candidate)."""
    candidate = record.candidate
    assert candidate is not None and record.committed is None
    message = f"first install: {'committed' if commit else 'serving'} {candidate} with degraded health although {why}"
    alert = RaiseAlert(code, candidate, message, numbers)
    if not commit:
        return _serve_in_trial(record, now, alert, degraded=message, failure=message)
    return transition(
        record,
        UpdateState.COMMITTED,
        now,
        StopEvaluation(candidate),
        Commit(candidate, keep=(candidate,), config=target_config(record)),
        *(() if record.degraded else (alert,)),
        **commit_changes(record, candidate, None),
        degraded=message,
        failure=message,
    )


def on_canary_failed(record: UpdateRecord, event: CanaryFailed, now: datetime, limits: RetryLimits) -> Decision:
    assert record.candidate is not None
    if record.committed is None and (event.latency_only or event.inconclusive):
        code = "first_install.latency_miss" if event.latency_only else "first_install.inconclusive"
        why = f"its canary failed: {event.reason}"
        return _first_install_degraded(record, now, commit=False, code=code, why=why, numbers=event.numbers)
    return abandon(record, UpdateState.ROLLED_BACK, now, f"canary failed: {event.reason}", reject=True)


def on_load_failed(record: UpdateRecord, event: CandidateLoadFailed, now: datetime, limits: RetryLimits) -> Decision:
    assert record.candidate is not None
    failure = f"candidate could not be loaded: {event.reason}"
    return abandon(record, UpdateState.ROLLED_BACK, now, failure, reject=True)


def on_canary_inconclusive(
    record: UpdateRecord, event: CanaryInconclusive, now: datetime, limits: RetryLimits
) -> Decision:
    assert record.candidate is not None
    if record.canary_attempts < limits.max_canary_attempts:
        why = f"canary run {record.canary_attempts} inconclusive: {event.reason}"
        return _again(record, now, StartCanary(record.candidate), "canary_attempts", why)
    why = f"its canary stayed inconclusive after {record.canary_attempts} runs: {event.reason}"
    if record.committed is None:
        code = "first_install.inconclusive"
        return _first_install_degraded(record, now, commit=False, code=code, why=why, numbers=())
    failure = f"canary inconclusive after {record.canary_attempts} runs: {event.reason}"
    return abandon(record, UpdateState.ROLLED_BACK, now, failure)


def on_canary_passed(record: UpdateRecord, event: CanaryPassed, now: datetime, limits: RetryLimits) -> Decision:
    assert record.candidate is not None
    return _serve_in_trial(record, now, canary_summary=event.summary, failure=None)


def on_trial_passed(record: UpdateRecord, event: TrialPassed, now: datetime, limits: RetryLimits) -> Decision:
    assert record.candidate is not None
    new = record.candidate
    previous = record.committed if record.committed != new else record.previous
    # A first-install candidate served despite a canary miss stays degraded: its window was short.
    degraded = record.degraded if record.committed is None else None
    return transition(
        record,
        UpdateState.COMMITTED,
        now,
        Commit(new, keep=tuple(d for d in (new, previous) if d is not None), config=target_config(record)),
        **commit_changes(record, new, previous),
        degraded=degraded,
        failure=degraded,
    )


def on_trial_failed(record: UpdateRecord, event: TrialFailed, now: datetime, limits: RetryLimits) -> Decision:
    assert record.candidate is not None
    if record.committed is None and event.latency_only:
        why = f"its trial failed: {event.reason}"
        code = "first_install.latency_miss"
        return _first_install_degraded(record, now, commit=True, code=code, why=why, numbers=event.numbers)
    return abandon(record, UpdateState.ROLLED_BACK, now, f"trial failed: {event.reason}", reject=True)
