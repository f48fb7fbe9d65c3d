"""Handlers of a new desired state (``DesiredBundleChanged``) and of ``Cancelled``.

What the controller asks for becomes a candidate (bundle, config): a new bundle is downloaded; a new config
for the committed bundle is staged and canaried in shadow, or put in force for a watch window when it keeps
every inference key; a config change while a bundle is installed retargets that candidate; a config with
nothing to judge it on is committed at once; what already serves is adopted under the new assignment; a
rejection is not retried under the same assignment. On a first install, the candidate serving its trial is
committed before anything replaces it, so it serves until something better is proven. See
``edge_runtime.update.state`` for the rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from edge_runtime.update.decision import (
    Decision,
    abandon,
    abandon_effects,
    commit_changes,
    fresh_candidate_changes,
    ignore,
    serve_candidate,
    serve_committed,
    stage_candidate,
    target_config,
    transition,
    watch_candidate,
)
from edge_runtime.update.effects import (
    Commit,
    CommitConfig,
    RaiseAlert,
    StartCanary,
    StartDownload,
    StopEvaluation,
    UpdateEffect,
)
from edge_runtime.update.events import Cancelled, DesiredBundleChanged
from edge_runtime.update.record import CANDIDATE_RAN, IN_PROGRESS, SETTLED, RetryLimits, UpdateRecord, UpdateState
from edgefleet.contract.digests import is_digest
from edgefleet.contract.shown import shown


def _cancel(record: UpdateRecord, now: datetime, why: str) -> Decision:
    target = UpdateState.ROLLED_BACK if record.state in CANDIDATE_RAN else UpdateState.IDLE
    return abandon(record, target, now, f"cancelled at {record.state.value}: {why}")


def _start_candidate(
    record: UpdateRecord, event: DesiredBundleChanged, config: str | None, inference: str | None, now: datetime
) -> Decision:
    cleanup = abandon_effects(record, keep_partial=False) if record.state in IN_PROGRESS else ()
    same = event.digest == record.candidate and record.state in SETTLED and event.digest != record.rejected
    return transition(
        record,
        UpdateState.DOWNLOADING,
        now,
        *cleanup,
        StartDownload(event.digest, event.artifacts),
        **{
            **fresh_candidate_changes(record, now, same=same),
            "candidate": event.digest,
            "candidate_artifacts": event.artifacts,
            "candidate_config": config,
            "candidate_config_inference": inference,
            "download_attempts": 1,
            "assignment_id": event.assignment_id,
        },
    )


def _start_config_candidate(
    record: UpdateRecord, config: str | None, inference: str | None, assignment_id: str, now: datetime
) -> Decision:
    """The committed bundle under a new config: canaried in shadow when the change changes inference (a
    new engine from the same slot), else put in force for a watch window (the engine is kept)."""
    bundle = record.committed
    assert bundle is not None
    cleanup = abandon_effects(record, keep_partial=False) if record.state in IN_PROGRESS else ()
    changes: dict[str, Any] = {
        **fresh_candidate_changes(record, now, same=False),
        "candidate": bundle,
        "candidate_artifacts": (),
        "candidate_config": config,
        "candidate_config_inference": inference,
        "assignment_id": assignment_id,
    }
    candidate = replace(record, **changes)
    if candidate.keeps_engine:
        return transition(
            record, UpdateState.TRIAL, now, *cleanup, serve_candidate(candidate), watch_candidate(candidate), **changes
        )
    # The committed bundle's digest names this candidate too: the evaluator forgets the runs it had for it.
    fresh = () if StopEvaluation(bundle) in cleanup else (StopEvaluation(bundle),)
    return transition(
        record,
        UpdateState.STAGED,
        now,
        *cleanup,
        *fresh,
        stage_candidate(candidate),
        StartCanary(bundle),
        **{**changes, "candidate_loaded_at": now},
    )


def _retarget_config(
    record: UpdateRecord, config: str | None, inference: str | None, assignment_id: str, now: datetime
) -> Decision:
    """The bundle being installed is now wanted with another config."""
    candidate = record.candidate
    assert candidate is not None
    changes: dict[str, Any] = {
        "candidate_config": config,
        "candidate_config_inference": inference,
        "assignment_id": assignment_id,
    }
    if record.state in (UpdateState.DOWNLOADING, UpdateState.VERIFYING):
        return transition(record, record.state, now, **changes)  # nothing was loaded yet: staging will use it
    # Loaded (and maybe serving) with the old config: load it again with the new one and canary that.
    retargeted = replace(record, **changes)
    back = (serve_committed(record),) if record.state == UpdateState.TRIAL else ()
    return transition(
        record,
        UpdateState.STAGED,
        now,
        *back,
        StopEvaluation(candidate),
        stage_candidate(retargeted),
        StartCanary(candidate),
        **changes,
        canary_attempts=0,
        candidate_loaded_at=now,
        failure=None,
    )


def _keep_first_install_serving(
    record: UpdateRecord, now: datetime, wanted: str, keep: str, then: Callable[[UpdateRecord], Decision]
) -> Decision:
    """``then`` on ``record``, except on a first install whose candidate serves its trial: that candidate is
    committed first (its watch window cut short, an alert says so, a degraded mark kept), then ``then`` runs
    on the committed record. So it serves while the new candidate (``wanted``) is installed, and stays when
    that one fails: nothing committed means nothing to fall back to, so serving nothing would be the fallback.
    One decision, one journal write: a restart after it serves the committed bundle. ``keep``: the slot the
    new candidate may reuse."""
    if record.state != UpdateState.TRIAL or record.committed is not None:
        return then(record)
    serving = record.candidate
    assert serving is not None
    message = (
        f"first install: committed {serving} before its trial window ended, so it keeps serving while "
        f"{wanted} is installed"
    )
    first: tuple[UpdateEffect, ...] = (
        StopEvaluation(serving),
        Commit(serving, keep=tuple(dict.fromkeys((serving, keep))), config=target_config(record)),
        RaiseAlert("first_install.committed_early", serving, message),
    )
    committed = replace(
        record, state=UpdateState.COMMITTED, entered_at=now, updated_at=now, **commit_changes(record, serving, None)
    )
    decision = then(committed)
    if decision.ignored is not None:
        return ignore(record, decision.ignored)
    return replace(decision, effects=(*first, *decision.effects))


def _settled_state(record: UpdateRecord) -> UpdateState:
    return UpdateState.COMMITTED if record.committed is not None else UpdateState.IDLE


def _adopt_assignment(record: UpdateRecord, assignment_id: str, now: datetime) -> Decision:
    """A new assignment that names what the device already runs or installs: only the id changes.

    Settled: the outcome for this assignment is reached (``committed``; ``idle`` with nothing to run)."""
    if record.state in SETTLED:
        state = _settled_state(record)
        return transition(record, state, now, assignment_id=assignment_id, failure=record.degraded)
    return transition(record, record.state, now, assignment_id=assignment_id)


def _describe(bundle: str | None, config: str | None) -> str:
    return f"bundle {bundle or '(none)'} with config {config or '(none)'}"


def on_desired(record: UpdateRecord, event: DesiredBundleChanged, now: datetime, limits: RetryLimits) -> Decision:
    if event.digest and not is_digest(event.digest):
        return ignore(record, f"desired bundle digest must be sha256:<64 hex>, got {shown(event.digest)}")
    if event.config is not None and not is_digest(event.config):
        return ignore(record, f"desired config digest must be sha256:<64 hex>, got {shown(event.config)}")
    in_progress = record.state in IN_PROGRESS
    # An empty desired bundle keeps the bundle the device runs or installs; no config keeps the config.
    bundle = event.digest or (record.candidate if in_progress else record.committed)
    config: str | None
    inference: str | None
    if event.config is not None:
        config, inference = event.config, event.config_inference
    elif in_progress and bundle == record.candidate and record.candidate_config is not None:
        config, inference = record.candidate_config, record.candidate_config_inference
    else:
        config, inference = record.committed_config, record.committed_config_inference
    new_assignment = event.assignment_id != (record.assignment_id or "")
    wanted = _describe(bundle, config)

    if bundle is None:
        # Nothing installed and no bundle assigned: a config has nothing to be judged on; it applies at once.
        if config is not None and config != record.committed_config:
            return transition(
                record,
                _settled_state(record) if new_assignment else record.state,
                now,
                CommitConfig(config),
                committed_config=config,
                committed_config_inference=inference,
                assignment_id=event.assignment_id,
            )
        if new_assignment:
            return _adopt_assignment(record, event.assignment_id, now)
        return ignore(record, f"desired state names no bundle and no new config ({wanted})")
    if bundle == record.committed and config == record.committed_config:
        if in_progress:
            cancelled = _cancel(record, now, f"desired state is the committed {wanted} again")
            if not new_assignment:
                return cancelled
            # The new assignment asks for what serves: its outcome is reached, the old candidate's was not.
            return transition(
                cancelled.record,
                UpdateState.COMMITTED,
                now,
                *cancelled.effects[:-1],
                assignment_id=event.assignment_id,
            )
        if new_assignment:
            return _adopt_assignment(record, event.assignment_id, now)
        return ignore(record, f"desired {wanted} is already committed")
    if in_progress and bundle == record.candidate and config == record.candidate_config:
        if new_assignment:
            return _adopt_assignment(record, event.assignment_id, now)
        return ignore(record, f"desired {wanted} is already being installed ({record.state})")
    if record.rejected_under(bundle, event.assignment_id, config):
        return ignore(
            record,
            f"desired {wanted} was rejected under assignment "
            f"{event.assignment_id or '(none)'} ({record.failure}); a new assignment is needed to retry it",
        )
    if bundle == record.committed:
        return _start_config_candidate(record, config, inference, event.assignment_id, now)
    if in_progress and bundle == record.candidate:
        return _keep_first_install_serving(
            record,
            now,
            wanted,
            bundle,
            lambda r: (
                _start_config_candidate(r, config, inference, event.assignment_id, now)
                if r.committed == bundle
                else _retarget_config(r, config, inference, event.assignment_id, now)
            ),
        )
    if not event.artifacts:
        return ignore(record, f"desired bundle {bundle} lists no artifacts; cannot download it")
    bad = [a for a in event.artifacts if not is_digest(a.digest) or a.size < 0]
    if bad:
        return ignore(record, f"desired bundle {bundle} has malformed artifacts: {shown(bad)}")
    return _keep_first_install_serving(
        record, now, wanted, bundle, lambda r: _start_candidate(r, event, config, inference, now)
    )


def on_cancelled(record: UpdateRecord, event: Cancelled, now: datetime, limits: RetryLimits) -> Decision:
    return _cancel(record, now, event.reason)
