"""The handler of a restart (``Recovered``): serve the committed bundle, resume the candidate, count crashes.

A settled record serves its committed bundle and collects garbage. A candidate in progress picks up where
it stood (a download resumes, verification runs again, a loaded candidate is verified from its slot and
loaded again); a death attributable to the candidate (``crash_attributable``) counts towards rejecting it,
and at ``RetryLimits.max_interruptions`` it is rolled back. See ``edge_runtime.update.state`` for the rules.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, assert_never

from edge_runtime.update.decision import (
    Decision,
    rejection_changes,
    serve_candidate,
    serve_committed,
    slots_to_keep,
    stage_candidate,
    transition,
    watch_candidate,
)
from edge_runtime.update.effects import CollectGarbage, DiscardCandidate, StartCanary, StartDownload, Verify
from edge_runtime.update.events import Recovered
from edge_runtime.update.record import LOADED, SETTLED, RetryLimits, UpdateRecord, UpdateState


def crash_attributable(record: UpdateRecord, event: Recovered, now: datetime, limits: RetryLimits) -> bool:
    """Whether the restart ``event`` at ``now`` counts as a crash of the candidate (``edge_runtime.update.state``)."""
    if event.clean_shutdown or record.state not in LOADED or record.candidate is None:
        return False
    loaded_at = record.candidate_loaded_at or record.entered_at
    return (now - loaded_at).total_seconds() <= limits.crash_window_s


def on_recovered(record: UpdateRecord, event: Recovered, now: datetime, limits: RetryLimits) -> Decision:
    if record.committed_config is None and event.saved_config is not None:
        saved, inference = event.saved_config
        record = replace(record, committed_config=saved, committed_config_inference=inference)
    if record.state in SETTLED:
        keep = slots_to_keep(record, record.candidate if record.candidate != record.rejected else None)
        return transition(record, record.state, now, serve_committed(record), CollectGarbage(keep))
    candidate = record.candidate
    assert candidate is not None
    crashed = crash_attributable(record, event, now, limits)
    crashes = record.crashes + (1 if crashed else 0)
    interruptions = record.interruptions + 1
    how = "stopped cleanly" if event.clean_shutdown else ("crashed" if crashed else "died")
    if crashes >= limits.max_interruptions:
        # Nothing is running at start-up, so there is no evaluation to stop and no candidate being served.
        return transition(
            record,
            UpdateState.ROLLED_BACK,
            now,
            serve_committed(record),
            DiscardCandidate(candidate, keep_partial=False),
            CollectGarbage(slots_to_keep(record)),
            interruptions=interruptions,
            crashes=crashes,
            resuming=None,
            failure=(
                f"interrupted at {record.state.value}: the process crashed {crashes} times while {candidate} "
                f"was loaded or serving (max_interruptions {limits.max_interruptions}); giving up on it"
            ),
            **rejection_changes(record),
        )
    counted = f"; crash {crashes} of {limits.max_interruptions} counted against it" if crashed else ""
    note = f"resumed at {record.state.value} after the process {how}{counted}"
    changes: dict[str, Any] = {"interruptions": interruptions, "crashes": crashes, "failure": note}
    collect = CollectGarbage(slots_to_keep(record, candidate))
    serve = serve_committed(record)
    if record.config_only:
        # The committed bundle under another config: its slot is the committed one, nothing to verify.
        if record.state != UpdateState.TRIAL:
            return transition(
                record,
                UpdateState.STAGED,
                now,
                serve,
                collect,
                stage_candidate(record),
                StartCanary(candidate),
                candidate_loaded_at=now,
                **changes,
            )
        load = () if record.keeps_engine else (stage_candidate(record),)
        return transition(
            record,
            UpdateState.TRIAL,
            now,
            serve,
            collect,
            *load,
            serve_candidate(record),
            watch_candidate(record),
            candidate_loaded_at=now,
            **changes,
        )
    match record.state:
        case UpdateState.DOWNLOADING:
            artifacts = record.candidate_artifacts
            return transition(record, record.state, now, serve, collect, StartDownload(candidate, artifacts), **changes)
        case UpdateState.VERIFYING:
            return transition(
                record, record.state, now, serve, collect, Verify(candidate, record.candidate_artifacts), **changes
            )
        case UpdateState.STAGED | UpdateState.CANARY | UpdateState.TRIAL:
            # Verify the slot again, then load it and resume the canary or the trial.
            resuming = UpdateState.TRIAL if record.state == UpdateState.TRIAL else UpdateState.CANARY
            return transition(
                record,
                UpdateState.VERIFYING,
                now,
                serve,
                collect,
                Verify(candidate, record.candidate_artifacts),
                resuming=resuming,
                **changes,
            )
        case UpdateState.IDLE | UpdateState.COMMITTED | UpdateState.ROLLED_BACK | UpdateState.FAILED:
            raise AssertionError(f"a settled record ({record.state.value}) is recovered before this match")
        case _:
            assert_never(record.state)
