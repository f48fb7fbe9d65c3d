"""What the reconciler knows of one device under a rollout: the ``DeviceFact`` rules. Pure: facts come from
stored device records, desired-state rows and verdict events passed in, and ``now`` is an argument.

Fact rules (``device_fact``), relative to the rollout's target T (a bundle, a per-device config, or both):

- Outcomes belong to an assignment. A device's ``update_state``, candidate, last verdict and verdict events
  count for this rollout only when the device echoes one of the rollout's assignment ids for it
  (``ReportedState.assignment_id``; ``CanaryVerdict.assignment_id`` for verdicts): the id the planner
  recorded in ``Assignment.assignment_id``, or the device's current desired-state id while that desired state
  still belongs to this rollout (``desired.rollout_id``: a config change that reached the device mid-rollout
  gives it a new assignment of the same rollout target) and the rollout has not sent the device back.
  Until the device echoes one, it is in flight. Stale outcomes from earlier rollouts or set-bundles never
  count, for or against, whatever they say (committed, failed, rolled back, verdicts for the same bundle).
- ``online``: the device was seen within ``OFFLINE_AFTER`` (120 s) of ``now``.
- ``running_bundle``: the committed bundle it reports; ``update_state``: its ``UpdateState`` name, lowercase
  without prefix (``"committed"``), when it belongs to this rollout's assignment (or the device is not
  assigned); ``""`` while an assigned device still reports an earlier assignment.
- ``succeeded``: it runs T (the bundle target, and the target config as ``running_config_digest``) and,
  under this assignment, its update state is ``committed`` (or ``idle``: a restarted device). Decision: a
  device that already ran T committed when it was assigned (``Assignment.previous_*`` equal to T) has
  nothing to do and succeeds while it still runs T, whether or not it echoed the assignment yet.
- ``failed``: update state ``failed`` under this assignment, or a FAIL last verdict under it.
- ``rolled_back``: update state ``rolled_back`` under this assignment (it ran T and went back).
- ``inconclusive_count``: INCONCLUSIVE ``canary_verdict`` events under this assignment received since the
  assignment, in a row (counted back from the newest such verdict), and at least 1 when the reported last
  verdict under it is INCONCLUSIVE.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from edgefleet_controller.rollout.model import Assignment, DeviceFact
from edgefleet_controller.store.records import DeviceRecord, EventRecord
from edgefleet_controller.store.rollouts import DesiredRow

OFFLINE_AFTER = timedelta(seconds=120)


def _enum_name(value: object, prefix: str) -> str:
    return str(value or "").removeprefix(prefix).lower()


def reported_state(record: DeviceRecord) -> Mapping[str, Any]:
    """The device's last ``ReportedState`` as a dict (``MessageToDict`` field names), or empty."""
    state = record.reported.get("state") if isinstance(record.reported, Mapping) else None
    return state if isinstance(state, Mapping) else {}


def hardware_class_of(record: DeviceRecord) -> str:
    """The hardware class the device enrolled with: what it reports later never replaces it (a claim that
    differs flags the device, ``devices.hardware_claims``; a device whose hardware changed re-enrolls)."""
    return record.hardware_class


def last_verdict(record: DeviceRecord) -> Mapping[str, Any]:
    verdict = reported_state(record).get("last_verdict")
    return verdict if isinstance(verdict, Mapping) else {}


SETTLED_STATES = ("committed", "idle")


def accepted_assignments(
    rollout_id: str, assignment: Assignment | None, desired: DesiredRow | None, reverting: bool
) -> frozenset[str]:
    """The assignment ids under which a device's outcomes count for this rollout (see the module docstring)."""
    if assignment is None:
        return frozenset()
    ids = {assignment.assignment_id} if assignment.assignment_id else set()
    if not reverting and desired is not None and desired.rollout_id == rollout_id and desired.assignment_id:
        ids.add(desired.assignment_id)
    return frozenset(ids)


def under_assignment(value: object, accepted: frozenset[str]) -> bool:
    """Whether an echoed assignment id is one of the ``accepted`` ones (an empty id never is)."""
    return isinstance(value, str) and value != "" and value in accepted


def device_fact(
    record: DeviceRecord,
    desired: DesiredRow | None,
    target: str | None,
    now: datetime,
    inconclusive: int = 0,
    *,
    assignment: Assignment | None = None,
    accepted: frozenset[str] = frozenset(),
    target_config: str | None = None,
    live_config: str | None = None,
) -> DeviceFact:
    """One device's ``DeviceFact`` relative to the bundle ``target`` and, for a config rollout, the device's
    ``target_config``, counting only outcomes under the ``accepted`` assignment ids (see the module
    docstring for each rule). ``assignment`` is this rollout's assignment of the device (None: not yet)."""
    if assignment is None:
        accepted = frozenset()  # nothing is this rollout's before it assigns the device
    state = reported_state(record)
    reported_update = _enum_name(state.get("update_state"), "UPDATE_STATE_") or "idle"
    ours = under_assignment(state.get("assignment_id"), accepted)
    verdict = last_verdict(record)
    verdict_ours = under_assignment(verdict.get("assignment_id"), accepted)
    outcome = _enum_name(verdict.get("outcome"), "OUTCOME_") or None
    running_config = str(state.get("running_config_digest") or "") or None
    if verdict_ours and outcome == "inconclusive":
        inconclusive = max(inconclusive, 1)
    at_target = (target is None or record.running_bundle == target) and (
        target_config is None or running_config == target_config
    )
    already = (
        assignment is not None
        and (target is None or assignment.previous_bundle_digest == target)
        and (target_config is None or assignment.previous_config_digest == target_config)
    )
    succeeded = assignment is not None and at_target and (reported_update in SETTLED_STATES if ours else already)
    return DeviceFact(
        device_id=record.id,
        site=record.site,
        tags=dict(record.tags),
        online=record.last_seen is not None and now - record.last_seen <= OFFLINE_AFTER,
        running_bundle=record.running_bundle,
        desired_bundle=desired.bundle_digest if desired is not None else None,
        update_state=reported_update if ours or assignment is None else "",
        last_verdict_outcome=outcome if verdict_ours else None,
        failed=(ours and reported_update == "failed") or (verdict_ours and outcome == "fail"),
        succeeded=succeeded,
        rolled_back=ours and reported_update == "rolled_back",
        inconclusive_count=inconclusive if assignment is not None else 0,
        running_config_digest=running_config,
        live_config_digest=live_config,
        target_config_digest=target_config,
    )


def verdicts_under(
    events: Iterable[EventRecord], accepted: Mapping[str, frozenset[str]]
) -> dict[str, Mapping[str, Any]]:
    """Per device, the newest verdict event under one of its ``accepted`` assignment ids: what the rollout
    shows for the device once later updates have replaced the device's reported last verdict."""
    newest: dict[str, Mapping[str, Any]] = {}
    for event in sorted(events, key=lambda e: e.id):
        verdict = event.payload.get("verdict")
        if isinstance(verdict, Mapping) and under_assignment(
            verdict.get("assignment_id"), accepted.get(event.device_id, frozenset())
        ):
            newest[event.device_id] = verdict
    return newest


def inconclusive_counts(
    events: Iterable[EventRecord], accepted: Mapping[str, frozenset[str]], assigned_at: Mapping[str, datetime]
) -> dict[str, int]:
    """Per device, INCONCLUSIVE verdicts under its ``accepted`` assignment ids in a row, newest backwards,
    received since its assignment."""
    outcomes: dict[str, list[str]] = {}
    for event in sorted(events, key=lambda e: e.id):
        since = assigned_at.get(event.device_id)
        if since is None or event.received_at < since:
            continue
        verdict = event.payload.get("verdict")
        if not isinstance(verdict, Mapping):
            continue
        if not under_assignment(verdict.get("assignment_id"), accepted.get(event.device_id, frozenset())):
            continue
        outcomes.setdefault(event.device_id, []).append(_enum_name(verdict.get("outcome"), "OUTCOME_"))
    counts: dict[str, int] = {}
    for device_id, seen in outcomes.items():
        run = 0
        for outcome in reversed(seen):
            if outcome != "inconclusive":
                break
            run += 1
        counts[device_id] = run
    return counts


def shown_verdicts(
    devices: Iterable[DeviceRecord],
    recorded: Mapping[str, Mapping[str, Any]],
    accepted: Mapping[str, frozenset[str]],
) -> dict[str, Mapping[str, Any]]:
    """Per device, the verdict the rollout shows: the reported last verdict when it is under this rollout's
    assignment (it may be newer than the stored events), else the newest ``recorded`` verdict event under
    it (``verdicts_under``: after the device moved on)."""
    verdicts = dict(recorded)
    verdicts.update(
        {
            d.id: verdict
            for d in devices
            if (verdict := last_verdict(d))
            and under_assignment(verdict.get("assignment_id"), accepted.get(d.id, frozenset()))
        }
    )
    return verdicts
