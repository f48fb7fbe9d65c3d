"""The machine's answer to one event (``Decision``) and the pieces every handler builds it from.

``transition`` is the one way a handler moves the record (it stamps the times and adds ``ReportState``: after
the quick effects, but before a long-running one, ``StartDownload``, so the new state is published while the
download runs, not when it ends);
``ignore`` leaves it alone with a reason. The effect builders (serve, stage, watch, abandon) and the record
changes of a fresh, rejected or committed candidate are shared by the handlers of ``desired``, ``progress``
and ``recovery``, so each rule is written once. Pure, like the rest of the machine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from edge_runtime.update.effects import (
    DiscardCandidate,
    ReportState,
    Stage,
    StartDownload,
    StartWatch,
    StopEvaluation,
    SwapToCandidate,
    SwapToCommitted,
    UpdateEffect,
)
from edge_runtime.update.record import EVALUATING, MAX_REJECTIONS, UpdateRecord, UpdateState


@dataclass(frozen=True)
class Decision:
    """The next record and the effects to run after journaling it; ``ignored`` says why nothing happened."""

    record: UpdateRecord
    effects: tuple[UpdateEffect, ...] = ()
    ignored: str | None = None


def transition(
    record: UpdateRecord, state: UpdateState, now: datetime, *effects: UpdateEffect, **changes: Any
) -> Decision:
    """Move to ``state`` (re-entering the same state keeps ``entered_at``) and report it: ``ReportState``
    goes right before a ``StartDownload`` (the driver blocks in it until the download ends), else last."""
    entered_at = record.entered_at if state == record.state else now
    next_record = replace(record, state=state, entered_at=entered_at, updated_at=now, **changes)
    if next_record.committed is None and state != UpdateState.TRIAL and next_record.degraded is not None:
        # A first-install candidate served degraded was abandoned: nothing serves, nothing is degraded.
        next_record = replace(next_record, degraded=None)
    return Decision(record=next_record, effects=with_report(effects))


def with_report(effects: tuple[UpdateEffect, ...]) -> tuple[UpdateEffect, ...]:
    """``effects`` with ``ReportState`` before the first long-running effect (``StartDownload``), else last."""
    for i, effect in enumerate(effects):
        if isinstance(effect, StartDownload):
            return (*effects[:i], ReportState(), *effects[i:])
    return (*effects, ReportState())


def ignore(record: UpdateRecord, reason: str) -> Decision:
    """Nothing happens: the record stays as it is and ``reason`` says why."""
    return Decision(record=record, effects=(), ignored=reason)


def serve_committed(record: UpdateRecord) -> SwapToCommitted:
    return SwapToCommitted(record.committed, record.committed_config)


def stage_candidate(record: UpdateRecord) -> Stage:
    assert record.candidate is not None
    return Stage(record.candidate, record.candidate_config)


def serve_candidate(record: UpdateRecord) -> SwapToCandidate:
    assert record.candidate is not None
    return SwapToCandidate(record.candidate, record.candidate_config)


def watch_candidate(record: UpdateRecord) -> StartWatch:
    assert record.candidate is not None
    return StartWatch(record.candidate, paired=not record.keeps_engine)


def slots_to_keep(record: UpdateRecord, *extra: str | None) -> tuple[str, ...]:
    """The slots garbage collection must keep: the committed and previous bundles, and ``extra``."""
    kept = [d for d in (record.committed, record.previous, *extra) if d is not None]
    return tuple(dict.fromkeys(kept))


def abandon_effects(record: UpdateRecord, *, keep_partial: bool) -> tuple[UpdateEffect, ...]:
    """Effects that put the committed bundle back in charge and drop the candidate, for a live process."""
    assert record.candidate is not None
    effects: list[UpdateEffect] = []
    if record.state == UpdateState.TRIAL:
        effects.append(serve_committed(record))
    if record.state in EVALUATING:
        effects.append(StopEvaluation(record.candidate))
    effects.append(DiscardCandidate(record.candidate, keep_partial=keep_partial))
    return tuple(effects)


def abandon(
    record: UpdateRecord,
    state: UpdateState,
    now: datetime,
    failure: str,
    *,
    keep_partial: bool = False,
    reject: bool = False,
) -> Decision:
    """Give up on the candidate in a live process and move to ``state`` (``failed``, ``rolled_back``, ``idle``):
    the committed bundle is back in charge, the candidate is dropped (its partial download kept when
    ``keep_partial``), ``failure`` says why; ``reject`` remembers it as rejected under the assignment."""
    rejection = rejection_changes(record) if reject else {}
    return transition(
        record, state, now, *abandon_effects(record, keep_partial=keep_partial), **rejection, failure=failure
    )


def fresh_candidate_changes(record: UpdateRecord, now: datetime, *, same: bool) -> dict[str, Any]:
    """Bookkeeping of a candidate that starts now (``same``: the candidate tried before, counts kept)."""
    return {
        "candidate_since": now,
        "download_attempts": 0,
        "canary_attempts": 0,
        "interruptions": record.interruptions if same else 0,
        "crashes": record.crashes if same else 0,
        "candidate_loaded_at": None,
        "resuming": None,
        "degraded": record.degraded if record.committed is not None else None,
        "failure": None,
        "canary_summary": None,
    }


def rejection_changes(record: UpdateRecord) -> dict[str, Any]:
    """The record changes that reject the candidate (bundle and config) under the current assignment."""
    assert record.candidate is not None
    entry = (record.candidate, record.config_part(record.candidate_config), record.assignment_id or "")
    kept = tuple(r for r in record.rejections if r != entry)
    return {"rejected": record.candidate, "rejections": (*kept, entry)[-MAX_REJECTIONS:]}


def target_config(record: UpdateRecord) -> str | None:
    """The config the candidate brings (the committed one when it brings none)."""
    return record.candidate_config if record.candidate_config is not None else record.committed_config


def commit_changes(record: UpdateRecord, new: str, previous: str | None) -> dict[str, Any]:
    """The record changes of committing ``new`` (with the candidate's config) over ``previous``: the
    candidate's bookkeeping is cleared."""
    brings_config = record.candidate_config is not None
    return {
        "committed": new,
        "previous": previous,
        "committed_config": target_config(record),
        "committed_config_inference": (
            record.candidate_config_inference if brings_config else record.committed_config_inference
        ),
        "candidate_config": None,
        "candidate_config_inference": None,
        "candidate": None,
        "candidate_artifacts": (),
        "candidate_since": None,
        "download_attempts": 0,
        "canary_attempts": 0,
        "interruptions": 0,
        "crashes": 0,
        "candidate_loaded_at": None,
        "resuming": None,
    }
