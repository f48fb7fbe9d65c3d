"""Outcomes belong to an assignment: the planner and ``device_fact`` together, fed device outcomes left over
from earlier rollouts, never count them — no wave advances and no abort happens because of them.

A simulated fleet of ``DeviceRecord``s and desired rows stands in for the store: a device "reports" by its
reported-state document exactly as the Sync RPC stores it, and an ``AssignBundle`` step replaces its desired
row as the reconciler's ``persist_plan`` would (new revision, the step's assignment id, this rollout's id).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet_controller.rollout.facts import accepted_assignments, device_fact, inconclusive_counts
from edgefleet_controller.rollout.model import (
    AssignBundle,
    Emit,
    RevertDevice,
    RolloutPhase,
    RolloutSpec,
    RolloutState,
    Selector,
    Strategy,
)
from edgefleet_controller.rollout.planner import plan
from edgefleet_controller.store.records import DeviceRecord, EventRecord
from edgefleet_controller.store.rollouts import DesiredRow

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
OLD = "sha256:" + "a" * 64
X = "sha256:" + "b" * 64  # the target: the same bundle an earlier rollout failed with
OTHER = "sha256:" + "c" * 64
EARLIER = ("", "ro_earlier/dev/w1", "ro_earlier/dev/revert", "asg_00112233aabbccdd")


def spec(waves: tuple[int | str, ...] = (1, "100%")) -> RolloutSpec:
    return RolloutSpec(id="ro_now", bundle_digest=X, selector=Selector(sites=("a", "b")), strategy=Strategy(waves))


def record(device_id: str, site: str, state: Mapping[str, Any], running: str | None) -> DeviceRecord:
    return DeviceRecord(
        id=device_id,
        name=device_id,
        site=site,
        tags={},
        hardware_class="x86-avx2",
        facts={},
        enrolled_at=T0,
        last_seen=T0,
        reported={"running_bundle": running, "state": dict(state)},
        health="serving",
        running_bundle=running,
        enrollment_token_id=None,
    )


@st.composite
def stale_states(draw: st.DrawFn) -> tuple[dict[str, Any], str | None]:
    """A report an earlier rollout (or set-bundle) left: any state, verdict or candidate, never this one's."""
    state: dict[str, Any] = {
        "update_state": "UPDATE_STATE_"
        + draw(st.sampled_from(["COMMITTED", "FAILED", "ROLLED_BACK", "CANARY", "TRIAL", "IDLE", "STAGED"])),
        "applied_revision": str(draw(st.integers(0, 9))),
    }
    echo = draw(st.sampled_from(EARLIER))
    if echo:
        state["assignment_id"] = echo
    candidate = draw(st.sampled_from(["", X, OTHER]))
    if candidate:
        state["candidate_bundle_digest"] = candidate
    if draw(st.booleans()):
        state["last_verdict"] = {
            "outcome": "OUTCOME_" + draw(st.sampled_from(["PASS", "FAIL", "INCONCLUSIVE"])),
            "candidate_digest": draw(st.sampled_from([X, OTHER])),
            "phase": draw(st.sampled_from(["canary", "watch"])),
            "assignment_id": draw(st.sampled_from(EARLIER)),
        }
    # never X itself: a device that runs the target committed when assigned has nothing to do (documented
    # success rule), which is a fact about now, not a left-over outcome
    running = draw(st.sampled_from([OLD, OTHER, None]))
    return state, running


@dataclass
class World:
    """Records, desired rows and verdict events as the store would hold them."""

    records: dict[str, DeviceRecord]
    desired: dict[str, DesiredRow]
    events: list[EventRecord] = field(default_factory=list)
    #: devices that act on this rollout's assignment (echo it and commit X); the others never do
    good: set[str] = field(default_factory=set)

    def facts(self, s: RolloutSpec, state: RolloutState, now: datetime) -> list[Any]:
        accepted = {
            d: accepted_assignments(s.id, a, self.desired.get(d), d in state.reverting)
            for d, a in state.assigned.items()
        }
        counts = inconclusive_counts(self.events, accepted, {d: a.assigned_at for d, a in state.assigned.items()})
        return [
            device_fact(
                rec,
                self.desired.get(d),
                s.bundle_digest,
                now,
                counts.get(d, 0),
                assignment=state.assigned.get(d),
                accepted=accepted.get(d, frozenset()),
            )
            for d, rec in self.records.items()
        ]

    def apply(self, steps: tuple[Any, ...]) -> None:
        for step in steps:
            if isinstance(step, AssignBundle):
                row = self.desired[step.device_id]
                self.desired[step.device_id] = DesiredRow(
                    step.bundle_digest, row.revision + 1, step.assignment_id, "ro_now"
                )

    def devices_act(self) -> None:
        """A good device echoes its current assignment and commits X; the others keep their stale report."""
        for device_id in self.good:
            row = self.desired[device_id]
            if row.rollout_id != "ro_now" or row.assignment_id is None:
                continue
            rec = self.records[device_id]
            state = {"update_state": "UPDATE_STATE_COMMITTED", "assignment_id": row.assignment_id}
            self.records[device_id] = replace(rec, reported={"running_bundle": X, "state": state}, running_bundle=X)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    records: dict[str, DeviceRecord] = {}
    desired: dict[str, DesiredRow] = {}
    events: list[EventRecord] = []
    sizes = draw(st.fixed_dictionaries({"a": st.integers(1, 4), "b": st.integers(0, 3)}))
    for site, count in sizes.items():
        for i in range(count):
            device_id = f"dev_{site}{i}"
            state, running = draw(stale_states())
            records[device_id] = record(device_id, site, state, running)
            # the desired row an earlier rollout left: maybe X itself, under that rollout's assignment
            desired[device_id] = DesiredRow(
                draw(st.sampled_from([OLD, X, None])),
                draw(st.integers(0, 5)),
                draw(st.sampled_from(EARLIER)) or None,
                draw(st.sampled_from([None, "ro_earlier"])),
            )
            for _ in range(draw(st.integers(0, 3))):
                outcome = draw(st.sampled_from(["FAIL", "INCONCLUSIVE", "PASS"]))
                verdict = {
                    "outcome": f"OUTCOME_{outcome}",
                    "candidate_digest": X,
                    "assignment_id": draw(st.sampled_from(EARLIER)),
                }
                at = T0 + timedelta(seconds=draw(st.integers(-60, 60)))
                events.append(
                    EventRecord(len(events) + 1, device_id, "canary_verdict", len(events), {"verdict": verdict}, at, at)
                )
    return World(records, desired, events)


def _aborted(steps: tuple[Any, ...]) -> bool:
    return any(isinstance(s, RevertDevice) or (isinstance(s, Emit) and s.event == "rollout.aborted") for s in steps)


@settings(max_examples=200, deadline=None)
@given(world=worlds(), waves=st.sampled_from([(1, "100%"), (1, "50%", "100%"), (2, "100%")]))
def test_left_over_outcomes_never_advance_a_wave_nor_abort(world: World, waves: tuple[int | str, ...]) -> None:
    s = spec(waves)
    state = RolloutState()
    now = T0
    for _ in range(8):
        result = plan(s, state, world.facts(s, state, now), now)
        assert not _aborted(result.steps), result.steps
        world.apply(result.steps)
        state = result.next_state
        now += timedelta(seconds=5)
    # nobody echoed this rollout's assignment: the first wave is in flight, nothing more was assigned
    assert state.phase is RolloutPhase.RUNNING and state.wave == 1, state
    targets = {site: s.strategy.targets(sum(1 for r in world.records.values() if r.site == site)) for site in "ab"}
    for site, per_wave in targets.items():
        assert sum(1 for a in state.assigned.values() if a.site == site) == (per_wave[0] if per_wave else 0)
    for device_id, assignment in state.assigned.items():
        assert assignment.assignment_id == f"ro_now/{device_id}/w1"
        assert world.desired[device_id].assignment_id == assignment.assignment_id


@settings(max_examples=200, deadline=None)
@given(world=worlds(), good=st.sets(st.sampled_from([f"dev_{s}{i}" for s in "ab" for i in range(4)])))
def test_a_wave_advances_only_on_outcomes_under_its_assignments(world: World, good: set[str]) -> None:
    world.good = good & set(world.records)
    s = spec((1, "100%"))
    state = RolloutState()
    now = T0
    for _ in range(12):
        result = plan(s, state, world.facts(s, state, now), now)
        assert not _aborted(result.steps), result.steps
        world.apply(result.steps)
        state = result.next_state
        world.devices_act()
        now += timedelta(seconds=5)
        if state.phase is RolloutPhase.COMPLETED:
            break
        # a wave past 1 means every canary (wave-1 device) acted on its assignment
        if state.wave > 1:
            assert all(d in world.good for d, a in state.assigned.items() if a.wave == 1)
    every_good = set(world.records) <= world.good
    assert (state.phase is RolloutPhase.COMPLETED) == every_good, (state.phase, state.message)
    if state.phase is not RolloutPhase.COMPLETED:
        assert state.phase is RolloutPhase.RUNNING
        stuck = [d for d in state.assigned if d not in world.good]
        assert stuck, "a rollout that did not complete waits for a device that never acted"


def test_an_earlier_rollouts_rolled_back_canary_does_not_abort_the_next_rollout() -> None:
    """The issue's sequence: after a rollback, the next rollout to that site (another bundle) must not abort
    on the earlier device's "rolled back" state before its canary device ran anything."""
    stale = {
        "update_state": "UPDATE_STATE_ROLLED_BACK",
        "candidate_bundle_digest": X,
        "assignment_id": "ro_earlier/dev_a0/w1",
        "last_verdict": {"outcome": "OUTCOME_FAIL", "candidate_digest": X, "assignment_id": "ro_earlier/dev_a0/w1"},
    }
    world = World(
        {
            "dev_a0": record("dev_a0", "a", stale, OLD),
            "dev_a1": record("dev_a1", "a", {"update_state": "UPDATE_STATE_COMMITTED"}, OLD),
        },
        {
            "dev_a0": DesiredRow(OLD, 2, "ro_earlier/dev_a0/revert", "ro_earlier"),
            "dev_a1": DesiredRow(OLD, 1, None, None),
        },
    )
    # the same bundle X again (forced), and then another bundle: neither aborts nor advances on the stale state
    for target in (X, OTHER):
        s = replace(spec(), bundle_digest=target)
        state = RolloutState()
        for _ in range(4):
            result = plan(s, state, world.facts(s, state, T0), T0)
            assert not _aborted(result.steps)
            state = result.next_state
        assert state.phase is RolloutPhase.RUNNING and state.wave == 1 and sorted(state.assigned) == ["dev_a0"]
