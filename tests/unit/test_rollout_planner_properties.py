"""The rollout planner's Hypothesis properties on random fleets, and the assignment ids and wave-transition gates."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import event, given, settings
from hypothesis import strategies as st

from edgefleet_controller.rollout.model import (
    Abort,
    Approve,
    AssignBundle,
    Command,
    Emit,
    Gates,
    OnAbort,
    Pause,
    Resume,
    RevertDevice,
    RolloutPhase,
    RolloutState,
)
from edgefleet_controller.rollout.planner import Plan, plan, wave_targets
from tests.unit.rollout_planner_cases import (
    NEW,
    OLD,
    T0,
    TWO_SITES,
    Fleet,
    Run,
    assigns,
    events,
    phase_of,
    reverts,
    spec,
)

WAVES = st.sampled_from([(1, "50%", "100%"), (1, "100%"), ("100%",), (2, "25%", "75%"), (1, 3, "10%")])


@st.composite
def fleets(draw: st.DrawFn) -> Fleet:
    sites = draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 7), min_size=1, max_size=3))
    offline = draw(st.lists(st.sampled_from([f"dev_{s}_{i:02d}" for s in sites for i in range(7)] or ["x"])))
    return Fleet.of(sites, offline=offline)


def _check_invariants(run: Run, p: Plan, assigned_ever: set[str], aborted_seen: bool) -> None:
    new = assigns(p)
    assert len(new) == len(set(new))
    assert not (set(new) & assigned_ever), "a device was assigned twice"
    assert not (aborted_seen and new), "assigned after abort"
    if run.state.wave:
        targets = wave_targets(run.spec, run.fleet.view(), run.state)
        for group, per_wave in targets.items():
            in_group = sum(1 for a in run.state.assigned.values() if a.site == group)
            assert in_group <= per_wave[run.state.wave - 1]


@settings(max_examples=150, deadline=None)
@given(
    fleet=fleets(),
    waves=WAVES,
    max_parallel=st.integers(0, 3),
    bake_s=st.sampled_from([0.0, 10.0]),
    manual=st.booleans(),
)
def test_converges_to_completed_when_every_device_succeeds(
    fleet: Fleet, waves: tuple[int | str, ...], max_parallel: int, bake_s: float, manual: bool
) -> None:
    for device_id, fact in fleet.facts.items():  # offline devices would (rightly) stall the rollout
        fleet.facts[device_id] = replace(fact, online=True)
    run = Run(spec(waves, bake_s=bake_s, max_parallel=max_parallel, gates=Gates(manual_approval=manual)), fleet)
    assigned_ever: set[str] = set()
    for _ in range(50):
        if run.state.phase is RolloutPhase.COMPLETED:
            break
        approve = (Approve(),) if run.state.phase is RolloutPhase.WAITING_APPROVAL else ()
        p = run.step(*approve, dt=5.0)
        _check_invariants(run, p, assigned_ever, aborted_seen=False)
        assigned_ever.update(assigns(p))
    assert phase_of(run) is RolloutPhase.COMPLETED, run.state
    assert assigned_ever == set(fleet.facts)
    assert all(f.running_bundle == NEW for f in fleet.facts.values())


@settings(max_examples=150, deadline=None)
@given(
    fleet=fleets(),
    waves=WAVES,
    max_parallel=st.integers(0, 3),
    on_abort=st.sampled_from(list(OnAbort)),
    failing=st.sets(st.integers(0, 20), max_size=4),
    ratio=st.sampled_from([0.0, 0.5]),
    script=st.lists(st.sampled_from(["tick", "pause", "resume", "abort", "approve"]), max_size=25),
)
def test_safety_properties_under_failures_and_commands(
    fleet: Fleet,
    waves: tuple[int | str, ...],
    max_parallel: int,
    on_abort: OnAbort,
    failing: set[int],
    ratio: float,
    script: list[str],
) -> None:
    ids = sorted(fleet.facts)
    fleet.failing.update(ids[i] for i in failing if i < len(ids))
    run = Run(spec(waves, max_parallel=max_parallel, on_abort=on_abort, gates=Gates(max_failed_ratio=ratio)), fleet)
    commands: dict[str, Command] = {"pause": Pause(), "resume": Resume(), "abort": Abort(), "approve": Approve()}
    assigned_ever: set[str] = set()
    reverted_ever: set[str] = set()
    aborted_seen = False
    for action in [*script, *["tick"] * 20]:
        p = run.step(*([commands[action]] if action in commands else []), dt=5.0)
        _check_invariants(run, p, assigned_ever, aborted_seen)
        assigned_ever.update(assigns(p))
        assert not (set(reverts(p)) & reverted_ever), "a device was reverted twice"
        reverted_ever.update(reverts(p))
        if on_abort is OnAbort.HALT:
            assert reverts(p) == []
        aborted_seen = aborted_seen or run.state.phase.aborting
    event(f"final phase {run.state.phase}")
    if aborted_seen and on_abort is OnAbort.ROLLBACK:
        assert phase_of(run) is RolloutPhase.ROLLED_BACK
        assert reverted_ever == set(run.state.assigned)


@settings(max_examples=100, deadline=None)
@given(fleet=fleets(), waves=WAVES, max_parallel=st.integers(0, 3), ticks=st.integers(0, 8))
def test_replanning_persisted_state_never_assigns_again(
    fleet: Fleet, waves: tuple[int | str, ...], max_parallel: int, ticks: int
) -> None:
    run = Run(spec(waves, max_parallel=max_parallel), fleet)
    for _ in range(ticks):
        run.step(dt=5.0)
    facts = fleet.view()
    first = plan(run.spec, run.state, facts, run.now)
    second = plan(run.spec, first.next_state, facts, run.now)
    assert assigns(second) == [] and reverts(second) == []
    assert second.steps == ()


def test_revert_of_a_device_that_ran_no_bundle_does_not_wait() -> None:
    fleet = Fleet.of({"a": 2})
    fleet.facts["dev_a_00"] = replace(fleet.facts["dev_a_00"], running_bundle=None, desired_bundle=None)
    run = Run(spec(("100%",)), fleet)
    run.step()  # both assigned; both commit NEW on the tick
    aborted = run.step(Abort())
    assert [(s.device_id, s.to_bundle) for s in aborted.steps if isinstance(s, RevertDevice)] == [
        ("dev_a_00", None),
        ("dev_a_01", OLD),
    ]
    assert phase_of(run) is RolloutPhase.ROLLING_BACK  # dev_a_01 still runs NEW until its tick
    run.step()
    assert phase_of(run) is RolloutPhase.ROLLED_BACK


# ------------------------------------------------------------------ assignments, gates at transitions


def test_assignments_carry_ids_recorded_in_the_state() -> None:
    run = Run(spec(), Fleet.of(TWO_SITES))
    first = run.step()
    steps = [s for s in first.steps if isinstance(s, AssignBundle)]
    assert [s.assignment_id for s in steps] == ["ro_test/dev_a_00/w1", "ro_test/dev_b_00/w1"]
    assert run.state.assigned["dev_a_00"].assignment_id == "ro_test/dev_a_00/w1"
    fleet = Fleet.of(TWO_SITES)
    fleet.failing.add("dev_a_00")
    failing = Run(spec(), fleet)
    failing.step()
    aborted = failing.step()
    assert {s.assignment_id for s in aborted.steps if isinstance(s, RevertDevice)} == {
        "ro_test/dev_a_00/revert",
        "ro_test/dev_b_00/revert",
    }


def test_facts_of_devices_assigned_in_the_same_pass_never_count() -> None:
    """Whatever an unassigned device's fact says (failed, rolled back, succeeded), it predates the assignment."""
    fleet = Fleet.of({"a": 3})
    for device_id, fact in fleet.facts.items():
        fleet.facts[device_id] = replace(fact, failed=True, rolled_back=True, succeeded=True, inconclusive_count=5)
    first = plan(spec((1, "100%")), RolloutState(), fleet.view(), T0)
    assert [s.device_id for s in first.steps if isinstance(s, AssignBundle)] == ["dev_a_00"]
    assert first.next_state.phase is RolloutPhase.RUNNING and first.next_state.wave == 1
    assert not any(isinstance(s, RevertDevice) for s in first.steps)


def test_approve_rechecks_every_earlier_wave_before_starting_the_next() -> None:
    fleet = Fleet.of({"a": 4})
    run = Run(spec((1, "50%", "100%"), gates=Gates(manual_approval=True)), fleet)
    run.step()
    run.step()
    assert phase_of(run) is RolloutPhase.WAITING_APPROVAL
    run.step(Approve())
    assert run.state.wave == 2
    run.step()
    assert phase_of(run) is RolloutPhase.WAITING_APPROVAL and run.state.wave == 2
    # the canary (wave 1) rolls back in its watch window while wave 2 waits for approval
    fleet.facts["dev_a_00"] = replace(fleet.facts["dev_a_00"], rolled_back=True, succeeded=False)
    approved = plan(run.spec, run.state, fleet.view(), run.now, commands=[Approve()])
    assert approved.next_state.phase is RolloutPhase.ROLLING_BACK
    assert approved.next_state.wave == 2  # wave 3 never started
    assert not [s for s in approved.steps if isinstance(s, AssignBundle)]
    assert "wave 1 (canary): 1 of 1 devices failed" in approved.next_state.message
    assert "rollout.wave_started" not in events(approved)


@settings(max_examples=150, deadline=None)
@given(
    fleet=fleets(),
    waves=WAVES,
    bake_s=st.sampled_from([0.0, 10.0]),
    late=st.dictionaries(st.integers(0, 20), st.integers(0, 6), max_size=3),
    ratio=st.sampled_from([0.0, 0.5]),
)
def test_no_wave_starts_while_an_earlier_wave_exceeds_its_gate(
    fleet: Fleet, waves: tuple[int | str, ...], bake_s: float, late: dict[int, int], ratio: float
) -> None:
    """Devices that succeeded and later fail (a watch-window rollback at a drawn tick): whenever a wave
    starts, every earlier wave was within its gate on the facts of that very plan."""
    for device_id, fact in fleet.facts.items():
        fleet.facts[device_id] = replace(fact, online=True)
    run = Run(spec(waves, bake_s=bake_s, gates=Gates(max_failed_ratio=ratio)), fleet)
    ids = sorted(fleet.facts)
    for tick in range(30):
        for i, when in late.items():
            if i < len(ids) and tick == when and ids[i] in run.state.assigned:
                fleet.facts[ids[i]] = replace(fleet.facts[ids[i]], rolled_back=True, succeeded=False)
        before, facts = run.state, dict(fleet.facts)
        p = run.step(dt=5.0)
        started = [s.fields["wave"] for s in p.steps if isinstance(s, Emit) and s.event == "rollout.wave_started"]
        for wave in (w for w in started if w > 1):
            for earlier in range(1, wave):
                members = [d for d, a in before.assigned.items() if a.wave == earlier]
                failed = [d for d in members if facts[d].rolled_back]
                if earlier == 1 or ratio == 0.0:
                    assert not failed, (wave, earlier, failed)
        if run.state.phase.terminal:
            break
