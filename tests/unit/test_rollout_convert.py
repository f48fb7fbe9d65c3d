"""Rollout conversions (model ⇄ stored JSON, wire/manifest → model, model → wire) and the pure fact rules."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.contract.manifest import parse_manifests
from edgefleet.v1 import common_pb2, fleet_pb2
from edgefleet_controller.rollout.convert import (
    device_status,
    phase_from_proto,
    phase_to_proto,
    rollout_message,
    spec_from_dict,
    spec_from_manifest,
    spec_from_request,
    spec_to_dict,
    state_from_dict,
    state_to_dict,
)
from edgefleet_controller.rollout.errors import RolloutSpecError
from edgefleet_controller.rollout.facts import device_fact, inconclusive_counts
from edgefleet_controller.rollout.model import (
    Assignment,
    DeviceFact,
    Gates,
    OnAbort,
    RolloutPhase,
    RolloutSpec,
    RolloutState,
    Selector,
    Strategy,
)
from edgefleet_controller.store.records import DeviceRecord, EventRecord
from edgefleet_controller.store.rollouts import DesiredRow

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
V1 = "sha256:" + "1" * 64
V2 = "sha256:" + "2" * 64

waves = st.lists(st.one_of(st.integers(1, 50), st.integers(1, 100).map(lambda p: f"{p}%")), min_size=1, max_size=5)
names = st.text("abcdefgh-", min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    waves=waves,
    bake=st.floats(0, 1e5, allow_nan=False),
    parallel=st.integers(0, 20),
    per_site=st.booleans(),
    ratio=st.floats(0, 1),
    canary=st.integers(0, 5),
    limit=st.integers(1, 5),
    manual=st.booleans(),
    on_abort=st.sampled_from(list(OnAbort)),
    sites=st.lists(names, max_size=3, unique=True),
    tags=st.dictionaries(names, names, max_size=3),
    target=st.sampled_from([(V2, None), (None, "SiteConfig/lab"), (V2, "FleetConfig/default")]),
)
def test_spec_round_trips_through_stored_json(
    waves: list[Any],
    bake: float,
    parallel: int,
    per_site: bool,
    ratio: float,
    canary: int,
    limit: int,
    manual: bool,
    on_abort: OnAbort,
    sites: list[str],
    tags: dict[str, str],
    target: tuple[str | None, str | None],
) -> None:
    spec = RolloutSpec(
        id="ro_1",
        bundle_digest=target[0],
        config=target[1],
        selector=Selector(tuple(sites), tags),
        strategy=Strategy(tuple(waves), bake, parallel, per_site),
        gates=Gates(ratio, canary, limit, manual),
        on_abort=on_abort,
    )
    assert spec_from_dict(spec_to_dict(spec)) == spec


@settings(max_examples=100, deadline=None)
@given(
    phase=st.sampled_from(list(RolloutPhase)),
    wave=st.integers(0, 10),
    assigned=st.dictionaries(
        names, st.tuples(st.integers(1, 5), st.sampled_from([None, V1]), st.integers(0, 10**6)), max_size=5
    ),
    message=st.text(max_size=30),
)
def test_state_round_trips_through_stored_json(
    phase: RolloutPhase, wave: int, assigned: dict[str, tuple[int, str | None, int]], message: str
) -> None:
    state = RolloutState(
        phase=phase,
        wave=wave,
        wave_started_at=T0,
        baked_since=None,
        assigned={
            d: Assignment(w, p, T0 + timedelta(seconds=s), "berlin", f"ro_1/{d}/w{w}", p, p and V2)
            for d, (w, p, s) in assigned.items()
        },
        reverting=frozenset(list(assigned)[:2]),
        message=message,
    )
    assert state_from_dict(state_to_dict(state)) == state


def test_phases_map_both_ways_and_unspecified_is_refused() -> None:
    for phase in RolloutPhase:
        assert phase_from_proto(phase_to_proto(phase)) is phase
    with pytest.raises(RolloutSpecError, match="got 0"):
        phase_from_proto(fleet_pb2.ROLLOUT_PHASE_UNSPECIFIED)


def test_request_defaults_follow_proto3_zero_values() -> None:
    spec = spec_from_request("ro_1", V2, fleet_pb2.CreateRolloutRequest(bundle=V2))
    assert spec.strategy.waves == (1, "100%")
    assert spec.gates.inconclusive_limit == 2 and spec.on_abort is OnAbort.ROLLBACK
    request = fleet_pb2.CreateRolloutRequest(
        strategy=fleet_pb2.RolloutStrategy(waves=["1", " 10% ", "100%"], bake_s=30, max_parallel=2),
        gates=fleet_pb2.RolloutGates(max_failed_ratio=0.1, inconclusive_limit=3, manual_approval=True),
        on_abort="halt",
    )
    spec = spec_from_request("ro_1", V2, request)
    assert spec.strategy == Strategy((1, "10%", "100%"), 30.0, 2, True)
    assert spec.gates == Gates(0.1, 0, 3, True) and spec.on_abort is OnAbort.HALT


@pytest.mark.parametrize(
    ("waves", "on_abort", "message"),
    [
        (["0"], "", r"strategy.waves\[0\] must be a device count >= 1, got 0"),
        (["1", "101%"], "", r"strategy.waves\[1\] must be a device count >= 1 or a percentage"),
        (["1", ""], "", r"strategy.waves\[1\] must be a device count >= 1 or a percentage, got ''"),
        (["1"], "later", "on_abort must be 'rollback' or 'halt', got 'later'"),
    ],
)
def test_bad_requests_name_field_and_value(waves: list[str], on_abort: str, message: str) -> None:
    request = fleet_pb2.CreateRolloutRequest(strategy=fleet_pb2.RolloutStrategy(waves=waves), on_abort=on_abort)
    with pytest.raises(RolloutSpecError, match=message):
        spec_from_request("ro_1", V2, request)


def test_manifest_document_becomes_a_spec() -> None:
    text = """
apiVersion: edgefleet.io/v1
kind: Rollout
metadata: {name: v2}
spec:
  target: {bundle: shelf@2.0.0}
  selector: {sites: [a, b], tags: {line: "3"}}
  strategy: {waves: [1, "50%"], bake_s: 60, max_parallel: 2, per_site: false}
  gates: {max_failed_ratio: 0.05, canary_max_failed: 1, abort_on_inconclusive: true, manual_approval: true}
  on_abort: halt
"""
    (doc,) = parse_manifests(text, source="r.yaml")
    spec = spec_from_manifest("ro_1", V2, doc)
    assert spec.selector == Selector(("a", "b"), {"line": "3"})
    assert spec.strategy == Strategy((1, "50%"), 60.0, 2, False)
    assert spec.gates == Gates(0.05, 1, 1, True) and spec.on_abort is OnAbort.HALT


def test_rollout_message_lists_assigned_then_pending_with_verdicts() -> None:
    spec = RolloutSpec(id="ro_1", bundle_digest=V2, selector=Selector(("berlin",)), strategy=Strategy((1, "100%")))
    state = RolloutState(
        phase=RolloutPhase.RUNNING, wave=1, assigned={"d2": Assignment(1, V1, T0, "berlin")}, message="wave 1 of 2"
    )
    facts = [
        DeviceFact("d1", "berlin", running_bundle=V1),
        DeviceFact("d2", "berlin", running_bundle=V1, update_state="canary"),
        DeviceFact("d3", "paris", running_bundle=V1),
    ]
    verdict = {"outcome": "OUTCOME_PASS", "candidate_digest": V2, "psi": 0.02, "frames": "200"}
    message = rollout_message(
        name="r", spec=spec, state=state, created_at=T0, updated_at=T0, facts=facts, verdicts={"d2": verdict}
    )
    assert message.phase == fleet_pb2.ROLLOUT_PHASE_RUNNING and message.waves_total == 2
    assert [(d.device_id, d.status, d.wave) for d in message.devices] == [("d2", "canary", 1), ("d1", "pending", 0)]
    canary = message.devices[0]
    assert canary.update_state == common_pb2.UPDATE_STATE_CANARY and canary.previous_bundle_digest == V1
    assert canary.verdict.outcome == common_pb2.CanaryVerdict.OUTCOME_PASS and canary.verdict.frames == 200


def test_device_status_while_reverting() -> None:
    spec = RolloutSpec(id="ro_1", bundle_digest=V2)
    state = RolloutState(
        phase=RolloutPhase.ROLLING_BACK, assigned={"d": Assignment(1, V1, T0)}, reverting=frozenset({"d"})
    )
    assert device_status(spec, state, "d", DeviceFact("d", "s", running_bundle=V2)) == "reverting"
    assert device_status(spec, state, "d", DeviceFact("d", "s", running_bundle=V1)) == "rolled_back"
    # a rolled-back rollout's reverts are done, whatever the device has run since (a later rollout moved it)
    done = replace(state, phase=RolloutPhase.ROLLED_BACK)
    assert device_status(spec, done, "d", DeviceFact("d", "s", running_bundle="sha256:" + "9" * 64)) == "rolled_back"


# ------------------------------------------------------------------ fact rules (reconciler, pure)


def record(state: dict[str, Any], running: str | None = V1, last_seen: datetime | None = T0) -> DeviceRecord:
    return DeviceRecord(
        id="d",
        name="cam",
        site="berlin",
        tags={},
        hardware_class="x86-avx2",
        facts={},
        enrolled_at=T0,
        last_seen=last_seen,
        reported={"running_bundle": running, "state": state},
        health="serving",
        running_bundle=running,
        enrollment_token_id=None,
    )


ASG = "ro_1/d/w1"
ASSIGNED = Assignment(1, V1, T0, "berlin", assignment_id=ASG)
OURS = frozenset({ASG})


def fact(state: dict[str, Any], running: str | None = V1, **kwargs: Any) -> DeviceFact:
    kwargs.setdefault("assignment", ASSIGNED)
    kwargs.setdefault("accepted", OURS)
    at = kwargs.pop("now", T0)
    return device_fact(record(state, running=running), DesiredRow(V2, 3, ASG, "ro_1"), V2, at, **kwargs)


def test_fact_rules_count_only_outcomes_under_the_assignment() -> None:
    committed = fact({"update_state": "UPDATE_STATE_COMMITTED", "assignment_id": ASG}, running=V2)
    assert committed.succeeded and not committed.failed and committed.update_state == "committed"
    failed = fact({"update_state": "UPDATE_STATE_FAILED", "assignment_id": ASG})
    assert failed.failed and failed.update_state == "failed"
    rolled = fact({"update_state": "UPDATE_STATE_ROLLED_BACK", "candidate_bundle_digest": V2, "assignment_id": ASG})
    assert rolled.rolled_back and not rolled.failed
    verdict = {"outcome": "OUTCOME_FAIL", "candidate_digest": V2, "assignment_id": ASG}
    assert fact({"last_verdict": verdict}).failed
    inconclusive = {"outcome": "OUTCOME_INCONCLUSIVE", "candidate_digest": V2, "assignment_id": ASG}
    assert fact({"last_verdict": inconclusive}).inconclusive_count == 1
    offline = fact({}, now=T0 + timedelta(seconds=121))
    assert not offline.online and not offline.succeeded
    assert fact({}, now=T0 + timedelta(seconds=120)).online


@pytest.mark.parametrize("echo", ["", "ro_0/d/w1", "asg_0123456789abcdef"])
def test_fact_rules_never_count_an_earlier_assignment(echo: str) -> None:
    """The same outcomes under another (or no) assignment: for or against, nothing counts; in flight."""
    old = {"assignment_id": echo} if echo else {}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"update_state": "UPDATE_STATE_COMMITTED", **old}, V2),  # committed V2 under another assignment
        ({"update_state": "UPDATE_STATE_FAILED", **old}, V1),
        ({"update_state": "UPDATE_STATE_ROLLED_BACK", "candidate_bundle_digest": V2, **old}, V1),
        ({"last_verdict": {"outcome": "OUTCOME_FAIL", "candidate_digest": V2, **old}}, V1),
        ({"last_verdict": {"outcome": "OUTCOME_INCONCLUSIVE", "candidate_digest": V2, **old}}, V1),
    ]
    for state, running in cases:
        seen = fact(state, running=running)
        assert not (seen.failed or seen.rolled_back or seen.succeeded), (state, seen)
        assert seen.inconclusive_count == 0 and seen.update_state == "" and seen.last_verdict_outcome is None
    # not assigned at all: nothing counts either, and the state is shown as reported
    pending = fact({"update_state": "UPDATE_STATE_ROLLED_BACK", "assignment_id": ASG}, assignment=None)
    assert not (pending.failed or pending.rolled_back or pending.succeeded)
    assert pending.update_state == "rolled_back"


def test_a_device_already_on_the_target_when_assigned_succeeds_without_an_echo() -> None:
    already = Assignment(1, V2, T0, "berlin", assignment_id=ASG)
    seen = fact(
        {"update_state": "UPDATE_STATE_ROLLED_BACK", "assignment_id": "ro_0/d/w1"}, running=V2, assignment=already
    )
    assert seen.succeeded and not seen.rolled_back
    # but a device that ran something else when assigned must commit the target under this assignment
    assert not fact({"update_state": "UPDATE_STATE_COMMITTED", "assignment_id": "ro_0/d/w1"}, running=V2).succeeded


def test_config_target_succeeds_on_the_running_config_under_the_assignment() -> None:
    c_live, c_target = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    state = {"update_state": "UPDATE_STATE_COMMITTED", "assignment_id": ASG, "running_config_digest": c_live}
    kwargs: dict[str, Any] = {"target_config": c_target, "live_config": c_live}
    assert not fact(state, running=V2, **kwargs).succeeded
    done = fact({**state, "running_config_digest": c_target}, running=V2, **kwargs)
    assert done.succeeded and done.running_config_digest == c_target and done.live_config_digest == c_live


def test_inconclusive_counts_are_in_a_row_since_assignment_under_it() -> None:
    def event(i: int, device: str, outcome: str, assignment: str = ASG, at: datetime = T0) -> EventRecord:
        payload = {"verdict": {"outcome": f"OUTCOME_{outcome}", "candidate_digest": V2, "assignment_id": assignment}}
        return EventRecord(i, device, "canary_verdict", i, payload, at, at)

    events = [
        event(1, "a", "INCONCLUSIVE", at=T0 - timedelta(seconds=1)),  # before the assignment
        event(2, "a", "INCONCLUSIVE"),
        event(3, "a", "INCONCLUSIVE"),
        event(4, "b", "INCONCLUSIVE"),
        event(5, "b", "PASS"),
        event(6, "c", "INCONCLUSIVE", assignment="ro_0/c/w1"),  # an earlier rollout's verdict for the same bundle
    ]
    accepted = {"a": OURS, "b": OURS, "c": frozenset({"ro_1/c/w1"})}
    assert inconclusive_counts(events, accepted, {"a": T0, "b": T0, "c": T0}) == {"a": 2, "b": 0}


def test_state_stored_before_assignment_ids_reads_with_none() -> None:
    """A rollout stored by the previous version (no assignment ids): its devices stay in flight, never judged."""
    stored = {"phase": "running", "wave": 1, "assigned": {"d": {"wave": 1, "assigned_at": T0.isoformat()}}}
    assignment = state_from_dict(stored).assigned["d"]
    assert (assignment.assignment_id, assignment.previous_bundle_digest, assignment.config_digest) == ("", None, None)
    old_spec = {"id": "ro_1", "bundle_digest": V2, "config_digest": None}
    assert spec_from_dict(old_spec) == RolloutSpec(id="ro_1", bundle_digest=V2)


def test_rollout_message_shows_the_config_target_per_device() -> None:
    spec = RolloutSpec(id="ro_1", config="SiteConfig/lab", selector=Selector(("lab",)))
    target = "sha256:" + "c" * 64
    state = RolloutState(
        phase=RolloutPhase.RUNNING,
        wave=1,
        assigned={"d1": Assignment(1, V1, T0, "lab", "ro_1/d1/w1", None, target)},
    )
    facts = [DeviceFact("d1", "lab", running_bundle=V1), DeviceFact("d2", "lab", target_config_digest=V2)]
    message = rollout_message(
        name="r", spec=spec, state=state, created_at=T0, updated_at=T0, facts=facts, config_content_digest=V1
    )
    assert (message.bundle_digest, message.config, message.config_content_digest) == ("", "SiteConfig/lab", V1)
    rows = {d.device_id: d for d in message.devices}
    assert (rows["d1"].assignment_id, rows["d1"].target_config_digest) == ("ro_1/d1/w1", target)
    assert (rows["d2"].status, rows["d2"].target_config_digest) == ("pending", V2)
