"""A bundle that failed a canary is known to be bad: which device reports say so, and how it is shown.

Owns the rules that turn what a device reports into a ``BundleFailure`` record (pure; the controller stores
the records at ingestion, idempotently per (bundle, device, assignment)):

- a ``CanaryVerdict`` (a ``canary_verdict`` event, or the reported ``last_verdict``) with outcome FAIL that
  carries an ``assignment_id`` records ``canary_fail`` for its candidate bundle, with the verdict's reasons.
  A verdict of a config-only candidate (candidate bundle == baseline bundle) says nothing about the bundle
  and records nothing;
- a report in ``update_state`` ROLLED_BACK under an ``assignment_id`` records ``rolled_back`` for its
  candidate bundle (the reported FAIL verdict of the same assignment, when there is one, is preferred for
  its reasons). A rollback of a config-only candidate (candidate bundle == running bundle) records nothing;
- a ``rollback`` event (a rollback with no FAIL verdict, e.g. a crash attributed to the candidate) records
  ``rolled_back`` for the event's bundle under the assignment the device was acting on (``failure_from_rollback``:
  the caller finds it from the device's report or its desired revision; without one nothing is recorded).

Outcomes without an assignment id (devices that predate assignments) are not recorded: only an outcome the
device ties to a decision the controller made counts. Devices are untrusted: the candidate must look like a
digest and the caller records it only for a bundle published here; summaries are bounded.

``refusal_message`` words the refusal CreateRollout returns, ``override_line`` the admission line a forced
rollout keeps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from edgefleet.contract.digests import is_digest
from edgefleet_controller.store.bundle_failures import SUMMARY_MAX, BundleFailure

SHOWN_REASONS_MAX = 240


def _outcome(verdict: Mapping[str, Any]) -> str:
    return str(verdict.get("outcome") or "").removeprefix("OUTCOME_").lower()


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary_of(reasons: Sequence[object], fallback: str) -> str:
    text = "; ".join(str(r) for r in reasons if str(r)) or fallback
    return _truncate(text, SUMMARY_MAX)


def rollout_of(assignment_id: str) -> str | None:
    """The rollout a rollout-made assignment id names (``ro_…/<device>/w<n>``), else None."""
    head = assignment_id.split("/", 1)[0]
    return head if head.startswith("ro_") and "/" in assignment_id else None


def _record(
    bundle_digest: str,
    assignment_id: str,
    kind: str,
    summary: str,
    device_id: str,
    device_name: str,
    at: datetime,
    rollout_id: str | None,
    /,
) -> BundleFailure:
    return BundleFailure(
        bundle_digest=bundle_digest,
        device_id=device_id,
        device_name=device_name,
        rollout_id=rollout_id or rollout_of(assignment_id),
        assignment_id=assignment_id[:128],
        kind=kind,
        summary=summary,
        at=at,
    )


def failure_from_verdict(
    verdict: Mapping[str, Any], *, device_id: str, device_name: str, at: datetime, rollout_id: str | None = None
) -> BundleFailure | None:
    """The failure a FAIL verdict records, or None (passed, inconclusive, no assignment, config-only)."""
    assignment_id = str(verdict.get("assignment_id") or "")
    candidate = str(verdict.get("candidate_digest") or "")
    if _outcome(verdict) != "fail" or not assignment_id or not is_digest(candidate):
        return None
    if candidate == verdict.get("baseline_digest"):
        return None  # a config-only candidate: the bundle ran before and after
    reasons = verdict.get("reasons")
    phase = str(verdict.get("phase") or "canary")
    summary = summary_of(reasons if isinstance(reasons, list) else [], f"{phase} verdict FAIL")
    return _record(candidate, assignment_id, "canary_fail", summary, device_id, device_name, at, rollout_id)


def failure_from_report(
    state: Mapping[str, Any], *, device_id: str, device_name: str, at: datetime, rollout_id: str | None = None
) -> BundleFailure | None:
    """The failure a reported state records (a FAIL last verdict, or a rollback), or None."""
    verdict = state.get("last_verdict")
    if isinstance(verdict, Mapping):
        found = failure_from_verdict(
            verdict, device_id=device_id, device_name=device_name, at=at, rollout_id=rollout_id
        )
        if found is not None:
            return found
    update_state = str(state.get("update_state") or "").removeprefix("UPDATE_STATE_").lower()
    if update_state != "rolled_back":
        return None
    # a reported rollback is the same fact as a rollback event: the candidate, under the reported assignment
    running = state.get("running_bundle_digest")
    return failure_from_rollback(
        str(state.get("candidate_bundle_digest") or ""),
        str(state.get("update_reason") or ""),
        str(state.get("assignment_id") or ""),
        running_bundle=running if isinstance(running, str) else None,
        device_id=device_id,
        device_name=device_name,
        at=at,
        rollout_id=rollout_id,
    )


def failure_from_rollback(
    bundle_digest: str,
    reason: str,
    assignment_id: str,
    *,
    running_bundle: str | None,
    device_id: str,
    device_name: str,
    at: datetime,
    rollout_id: str | None = None,
) -> BundleFailure | None:
    """The failure a ``rollback`` event (or a report in ``rolled_back``) records, or None (no assignment, not a
    digest, or a config-only candidate: the bundle went back to itself and is not to blame)."""
    if not assignment_id or not is_digest(bundle_digest) or bundle_digest == running_bundle:
        return None
    summary = summary_of([reason], "rolled back")
    return _record(bundle_digest, assignment_id, "rolled_back", summary, device_id, device_name, at, rollout_id)


def describe(failure: BundleFailure) -> str:
    """``lab-1 in rollout ro_… at 2025-03-01T12:00:00Z: canary FAIL: confidence drift …`` (reasons truncated)."""
    where = f" in rollout {failure.rollout_id}" if failure.rollout_id else " (set-bundle)"
    what = "canary FAIL" if failure.kind == "canary_fail" else "rolled back"
    when = failure.at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"{failure.device_name or failure.device_id}{where} at {when}: {what}: "
        f"{_truncate(failure.summary, SHOWN_REASONS_MAX)}"
    )


def refusal_message(ref: str, digest: str, failures: Sequence[BundleFailure]) -> str:
    """Why CreateRollout refuses a bundle that failed before, and what to do."""
    newest = failures[-1]
    more = f" (and {len(failures) - 1} earlier failure{'s' if len(failures) > 2 else ''})" if len(failures) > 1 else ""
    return (
        f"bundle {ref} ({digest}) failed its canary before: {describe(newest)}{more}; fix the bundle and publish "
        "a new version, or pass --force (CreateRolloutRequest.force / spec.force) to roll it out anyway"
    )


def override_line(failures: Sequence[BundleFailure]) -> str:
    """The admission line a forced rollout of a bundle that failed before keeps."""
    newest = failures[-1]
    return (
        f"failed-canary refusal overridden (forced): {len(failures)} earlier failure"
        f"{'s' if len(failures) > 1 else ''}, newest {describe(newest)}"
    )
