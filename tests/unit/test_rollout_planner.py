"""The rollout planner: table-driven scenarios on a simulated fleet, then Hypothesis properties."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from edgefleet_controller.rollout.errors import RolloutSpecError
from edgefleet_controller.rollout.model import (
    Abort,
    Approve,
    AssignBundle,
    Command,
    DeviceFact,
    Emit,
    Gates,
    OnAbort,
    Pause,
    Resume,
    RevertDevice,
    RolloutPhase,
    RolloutSpec,
    RolloutState,
    Selector,
    SetPhase,
    Strategy,
    WaveSize,
)
from edgefleet_controller.rollout.planner import Plan, plan, wave_targets

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64


def spec(
    waves: tuple[int | str, ...] = (1, "50%", "100%"),
    *,
    bake_s: float = 0.0,
    max_parallel: int = 0,
    gates: Gates | None = None,
    on_abort: OnAbort = OnAbort.ROLLBACK,
    selector: Selector | None = None,
) -> RolloutSpec:
    return RolloutSpec(
        id="ro_test",
        bundle_digest=NEW,
        selector=selector or Selector(),
        strategy=Strategy(waves=waves, bake_s=bake_s, max_parallel=max_parallel),
        gates=gates or Gates(),
        on_abort=on_abort,
    )


@dataclass
class Fleet:
    """A fake fleet driven by the planner's steps: devices take a step per tick towards what they are told."""

    facts: dict[str, DeviceFact]
    failing: set[str] = field(default_factory=set)
    inconclusive: set[str] = field(default_factory=set)
    assigned_log: list[str] = field(default_factory=list)

    @staticmethod
    def of(sites: dict[str, int], *, offline: Sequence[str] = ()) -> Fleet:
        facts = {}
        for site, count in sites.items():
            for i in range(count):
                device_id = f"dev_{site}_{i:02d}"
                facts[device_id] = DeviceFact(
                    device_id=device_id,
                    site=site,
                    online=device_id not in offline,
                    running_bundle=OLD,
                    desired_bundle=OLD,
                    update_state="committed",
                )
        return Fleet(facts)

    def apply(self, steps: Sequence[object]) -> None:
        for step in steps:
            if isinstance(step, AssignBundle):
                self.assigned_log.append(step.device_id)
                fact = self.facts[step.device_id]
                self.facts[step.device_id] = replace(fact, desired_bundle=step.bundle_digest, update_state="idle")
            elif isinstance(step, RevertDevice):
                fact = self.facts[step.device_id]
                self.facts[step.device_id] = replace(fact, desired_bundle=step.to_bundle)

    def tick(self) -> None:
        """Every online device converges on its desired bundle (or fails trying)."""
        for device_id, fact in list(self.facts.items()):
            if not fact.online or fact.desired_bundle == fact.running_bundle:
                continue
            if fact.desired_bundle == NEW:
                if device_id in self.failing:
                    fact = replace(fact, failed=True, update_state="rolled_back")
                elif device_id in self.inconclusive:
                    fact = replace(fact, inconclusive_count=fact.inconclusive_count + 1)
                else:
                    fact = replace(fact, running_bundle=NEW, succeeded=True, update_state="committed")
            else:
                fact = replace(fact, running_bundle=fact.desired_bundle, succeeded=False, update_state="committed")
            self.facts[device_id] = fact

    def view(self) -> list[DeviceFact]:
        return list(self.facts.values())


@dataclass
class Run:
    spec: RolloutSpec
    fleet: Fleet
    state: RolloutState = field(default_factory=RolloutState)
    now: datetime = T0
    history: list[Plan] = field(default_factory=list)

    def step(self, *commands: Command, dt: float = 1.0, tick: bool = True) -> Plan:
        result = plan(self.spec, self.state, self.fleet.view(), self.now, commands=commands)
        self.history.append(result)
        self.state = result.next_state
        self.fleet.apply(result.steps)
        if tick:
            self.fleet.tick()
        self.now += timedelta(seconds=dt)
        return result

    def until(self, done: Callable[[Run], bool], limit: int = 50, **kwargs: float) -> None:
        for _ in range(limit):
            if done(self):
                return
            self.step(**kwargs)  # type: ignore[arg-type]
        raise AssertionError(f"did not converge in {limit} plans: {self.state.phase} {self.state.message}")


def phase_of(run: Run) -> RolloutPhase:
    """The current phase, read through a call so mypy does not narrow it across steps."""
    return run.state.phase


def assigns(p: Plan) -> list[str]:
    return [s.device_id for s in p.steps if isinstance(s, AssignBundle)]


def reverts(p: Plan) -> list[str]:
    return [s.device_id for s in p.steps if isinstance(s, RevertDevice)]


def events(p: Plan) -> list[str]:
    return [s.event for s in p.steps if isinstance(s, Emit)]


TWO_SITES = {"a": 4, "b": 2}


# ------------------------------------------------------------------ scenarios


def test_success_path_two_sites_waves_1_50_100() -> None:
    run = Run(spec(), Fleet.of(TWO_SITES))
    first = run.step()
    assert assigns(first) == ["dev_a_00", "dev_b_00"]  # one canary per site
    assert phase_of(run) is RolloutPhase.RUNNING and run.state.wave == 1
    assert isinstance(first.steps[0], SetPhase) and first.steps[0].phase is RolloutPhase.RUNNING
    assert events(first)[:2] == ["rollout.started", "rollout.wave_started"]
    second = run.step()  # wave 1 succeeded; no bake -> wave 2: ceil(50% of 4) = 2 in a, 1 in b
    assert assigns(second) == ["dev_a_01"]
    assert run.state.wave == 2
    third = run.step()
    assert assigns(third) == ["dev_a_02", "dev_a_03", "dev_b_01"]
    assert run.state.wave == 3
    run.step()
    assert phase_of(run) is RolloutPhase.COMPLETED
    assert run.state.message == f"6 devices on {NEW} across 2 sites"
    assert sorted(run.fleet.assigned_log) == sorted(run.fleet.facts)
    first_assignment = run.state.assigned["dev_a_00"]
    assert first_assignment.wave == 1 and first_assignment.previous_bundle_digest == OLD
    assert first_assignment.assigned_at == T0
    # Terminal: nothing more, ever.
    assert run.step().steps == ()


def test_canary_failure_aborts_and_reverts() -> None:
    fleet = Fleet.of(TWO_SITES)
    fleet.failing.add("dev_a_00")
    run = Run(spec(), fleet)
    run.step()
    aborted = run.step()
    assert phase_of(run) is RolloutPhase.ROLLING_BACK
    assert "wave 1 (canary): 1 of 2 devices failed, more than the 0 allowed: dev_a_00 (failed)" in run.state.message
    assert sorted(reverts(aborted)) == ["dev_a_00", "dev_b_00"]
    assert all(s.to_bundle == OLD for s in aborted.steps if isinstance(s, RevertDevice))
    assert assigns(aborted) == []
    assert "rollout.aborted" in events(aborted)
    # dev_b_00 had committed NEW; after the revert tick it runs OLD again -> rolled_back.
    done = run.step()
    assert reverts(done) == []  # never reverted twice
    assert phase_of(run) is RolloutPhase.ROLLED_BACK
    assert "2 devices back on their previous bundles" in run.state.message
    for _ in range(3):
        assert run.step().steps == ()


def test_halt_aborts_without_reverting() -> None:
    fleet = Fleet.of(TWO_SITES)
    fleet.failing.add("dev_b_00")
    run = Run(spec(on_abort=OnAbort.HALT), fleet)
    run.step()
    halted = run.step()
    assert phase_of(run) is RolloutPhase.ABORTED
    assert reverts(halted) == [] and assigns(halted) == []
    assert fleet.facts["dev_a_00"].running_bundle == NEW  # left where it is
    assert run.step().steps == ()


def test_operator_abort_and_ignored_commands() -> None:
    run = Run(spec(on_abort=OnAbort.HALT), Fleet.of(TWO_SITES))
    run.step()
    aborted = run.step(Abort("camera firmware issue"))
    assert phase_of(run) is RolloutPhase.ABORTED
    assert run.state.message == "aborted by operator: camera firmware issue"
    assert assigns(aborted) == []
    again = run.step(Resume(), Abort())
    assert events(again) == ["rollout.command_ignored", "rollout.command_ignored"]
    assert phase_of(run) is RolloutPhase.ABORTED


def test_pause_and_resume() -> None:
    run = Run(spec(), Fleet.of(TWO_SITES))
    run.step()
    paused = run.step(Pause("night shift"))
    assert phase_of(run) is RolloutPhase.PAUSED and run.state.message == "paused by operator: night shift"
    assert assigns(paused) == []
    for _ in range(3):
        assert assigns(run.step()) == []
    resumed = run.step(Resume())
    assert phase_of(run) is RolloutPhase.RUNNING
    assert assigns(resumed) == ["dev_a_01"]


def test_a_pause_does_not_hide_a_failure() -> None:
    fleet = Fleet.of(TWO_SITES)
    fleet.failing.add("dev_a_00")
    run = Run(spec(), fleet)
    run.step()
    run.step(Pause())
    assert phase_of(run) is RolloutPhase.ROLLING_BACK


def test_manual_approval_between_waves() -> None:
    run = Run(spec(gates=Gates(manual_approval=True)), Fleet.of(TWO_SITES))
    run.step()
    waiting = run.step()
    assert phase_of(run) is RolloutPhase.WAITING_APPROVAL
    assert run.state.message == "wave 1 of 3 settled; approve to start wave 2 (50%)"
    assert assigns(waiting) == []
    assert run.step().steps == ()  # still waiting, nothing repeated
    approved = run.step(Approve("looks good"))
    assert phase_of(run) is RolloutPhase.RUNNING and run.state.wave == 2
    assert assigns(approved) == ["dev_a_01"]
    assert "rollout.approved" in events(approved)


def test_max_parallel_bounds_devices_in_flight_per_site() -> None:
    fleet = Fleet.of({"a": 5})
    run = Run(spec(("100%",), max_parallel=2), fleet)
    first = run.step(tick=False)
    assert assigns(first) == ["dev_a_00", "dev_a_01"]
    assert assigns(run.step(tick=False)) == []  # both still in flight
    fleet.tick()
    assert assigns(run.step()) == ["dev_a_02", "dev_a_03"]
    assert assigns(run.step()) == ["dev_a_04"]
    run.step()
    assert phase_of(run) is RolloutPhase.COMPLETED


def test_bake_time_holds_the_next_wave() -> None:
    run = Run(spec(bake_s=60.0), Fleet.of(TWO_SITES))
    run.step(dt=10)
    baking = run.step(dt=10)  # wave 1 settled at T0 + 10 s
    assert "rollout.wave_baking" in events(baking) and run.state.baked_since == T0 + timedelta(seconds=10)
    for _ in range(5):  # T0 + 20 … 60 s
        assert run.step(dt=10).steps == ()
    advanced = run.step(dt=10)  # T0 + 70 s: 60 s since the wave settled
    assert run.state.wave == 2 and assigns(advanced) == ["dev_a_01"]
    assert run.state.baked_since is None


def test_inconclusive_verdicts_at_the_limit_count_as_failure() -> None:
    fleet = Fleet.of({"a": 3})
    fleet.inconclusive.add("dev_a_00")
    run = Run(spec(gates=Gates(inconclusive_limit=2)), fleet)
    run.step()
    run.step(tick=False)
    assert fleet.facts["dev_a_00"].inconclusive_count == 1
    assert phase_of(run) is RolloutPhase.RUNNING
    fleet.tick()
    run.step()
    # It never left OLD, so the revert is already done.
    assert phase_of(run) is RolloutPhase.ROLLED_BACK
    assert "dev_a_00 (2 inconclusive verdicts)" in run.state.message


def test_later_waves_tolerate_failures_within_the_ratio() -> None:
    fleet = Fleet.of({"a": 10})
    fleet.failing.add("dev_a_03")
    run = Run(spec((1, "100%"), gates=Gates(max_failed_ratio=0.2)), fleet)
    run.until(lambda r: r.state.phase.terminal)
    assert phase_of(run) is RolloutPhase.COMPLETED
    assert "1 failed within the gates: dev_a_03" in run.state.message
    fleet2 = Fleet.of({"a": 10})
    fleet2.failing.update({"dev_a_03", "dev_a_04", "dev_a_05"})
    run2 = Run(spec((1, "100%"), gates=Gates(max_failed_ratio=0.2)), fleet2)
    run2.until(lambda r: r.state.phase.terminal or r.state.phase is RolloutPhase.ROLLING_BACK)
    assert "wave 2: 3 of 9 devices failed (33%), more than max_failed_ratio 20%" in run2.state.message


def test_online_devices_go_first_then_by_id() -> None:
    run = Run(spec((2, "100%")), Fleet.of({"a": 4}, offline=["dev_a_00", "dev_a_02"]))
    assert assigns(run.step()) == ["dev_a_01", "dev_a_03"]


def test_replanning_the_same_facts_is_idempotent() -> None:
    fleet = Fleet.of(TWO_SITES)
    s = spec()
    first = plan(s, RolloutState(), fleet.view(), T0)
    again = plan(s, first.next_state, fleet.view(), T0 + timedelta(seconds=5))
    assert again.steps == ()
    assert again.next_state == first.next_state


def test_selector_filters_sites_and_tags() -> None:
    fleet = Fleet.of(TWO_SITES)
    fleet.facts["dev_a_01"] = replace(fleet.facts["dev_a_01"], tags={"cam": "ir"})
    run = Run(spec(("100%",), selector=Selector(sites=("a",), tags={"cam": "ir"})), fleet)
    assert assigns(run.step()) == ["dev_a_01"]
    run.step()
    assert phase_of(run) is RolloutPhase.COMPLETED
    nobody = plan(spec(selector=Selector(sites=("zz",))), RolloutState(), fleet.view(), T0)
    assert nobody.next_state.phase is RolloutPhase.COMPLETED
    assert nobody.next_state.message == "no device matches the selector; nothing to do"


def test_waves_parse_and_targets() -> None:
    strategy = Strategy(waves=(1, "10%", "50%"))
    assert [str(w) for w in strategy.wave_sizes] == ["1", "10%", "50%", "100%"]  # implicit final 100%
    assert strategy.targets(30) == (1, 3, 15, 30)
    assert strategy.targets(1) == (1, 1, 1, 1)
    assert Strategy(waves=(5, "10%")).targets(20) == (5, 5, 20)  # never shrinks
    assert WaveSize.parse("3", 0) == WaveSize(count=3)
    fleet = Fleet.of(TWO_SITES)
    assert wave_targets(spec(), fleet.view(), RolloutState()) == {"a": (1, 2, 4), "b": (1, 1, 2)}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Strategy(waves=()), "strategy.waves must list at least one wave"),
        (lambda: Strategy(waves=(0,)), r"strategy.waves\[0\] must be a device count >= 1, got 0"),
        (lambda: Strategy(waves=(1, "150%")), r"strategy.waves\[1\] must be .* got '150%'"),
        (lambda: Strategy(bake_s=-1), "strategy.bake_s must be a number of seconds >= 0, got -1"),
        (lambda: Strategy(max_parallel=-2), "strategy.max_parallel must be an integer >= 0"),
        (lambda: Gates(max_failed_ratio=1.5), "gates.max_failed_ratio must be between 0 and 1, got 1.5"),
        (lambda: Gates(inconclusive_limit=0), "gates.inconclusive_limit must be an integer >= 1, got 0"),
        (
            lambda: RolloutSpec(id="ro_x", bundle_digest=NEW, on_abort="explode"),  # type: ignore[arg-type]
            "on_abort must be 'rollback' or 'halt', got 'explode'",
        ),
    ],
)
def test_spec_errors_name_the_field_and_value(build: Callable[[], object], message: str) -> None:
    with pytest.raises(RolloutSpecError, match=message):
        build()


# ------------------------------------------------------------------ properties

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


# ------------------------------------------------------------------ config targets

LIVE = "sha256:" + "e" * 64


def config_spec(waves: tuple[int | str, ...] = (1, "100%"), *, bundle: str | None = None, **kwargs: Any) -> RolloutSpec:
    return RolloutSpec(
        id="ro_cfg",
        bundle_digest=bundle,
        config="SiteConfig/a",
        selector=Selector(sites=("a",)),
        strategy=Strategy(waves=waves),
        **kwargs,
    )


def config_facts(changed: Sequence[str], unchanged: Sequence[str]) -> dict[str, DeviceFact]:
    out = {}
    for device_id in [*changed, *unchanged]:
        target = "sha256:" + device_id[-1] * 64 if device_id in changed else LIVE
        out[device_id] = DeviceFact(
            device_id,
            "a",
            running_bundle=OLD,
            running_config_digest=LIVE,
            live_config_digest=LIVE,
            target_config_digest=target,
        )
    return out


def test_a_config_rollout_assigns_each_device_its_own_target_and_skips_unchanged_devices() -> None:
    facts = config_facts(["d1", "d2", "d3"], ["d0"])
    first = plan(config_spec(), RolloutState(), list(facts.values()), T0)
    (canary,) = [s for s in first.steps if isinstance(s, AssignBundle)]
    # d0's config does not change: it is neither the canary nor ever assigned
    assert canary.device_id == "d1" and canary.bundle_digest is None and canary.config_digest == "sha256:" + "1" * 64
    assert first.next_state.assigned["d1"].config_digest == canary.config_digest
    facts["d1"] = replace(facts["d1"], running_config_digest=canary.config_digest, succeeded=True)
    second = plan(config_spec(), first.next_state, list(facts.values()), T0 + timedelta(seconds=1))
    assigned = {s.device_id: s.config_digest for s in second.steps if isinstance(s, AssignBundle)}
    assert assigned == {"d2": "sha256:" + "2" * 64, "d3": "sha256:" + "3" * 64}
    for device_id in ("d2", "d3"):
        facts[device_id] = replace(facts[device_id], succeeded=True)
    done = plan(config_spec(), second.next_state, list(facts.values()), T0 + timedelta(seconds=2))
    assert done.next_state.phase is RolloutPhase.COMPLETED
    assert done.next_state.message == "3 devices on SiteConfig/a across 1 sites"


@pytest.mark.parametrize("on_abort", list(OnAbort))
def test_an_aborted_config_rollout_sends_configs_back_to_live(on_abort: OnAbort) -> None:
    facts = config_facts(["d1", "d2"], [])
    s = config_spec(on_abort=on_abort)
    first = plan(s, RolloutState(), list(facts.values()), T0)
    target = first.next_state.assigned["d1"].config_digest
    facts["d1"] = replace(facts["d1"], running_config_digest=target, rolled_back=True)
    aborted = plan(s, first.next_state, list(facts.values()), T0)
    (revert,) = [x for x in aborted.steps if isinstance(x, RevertDevice)]
    assert (revert.device_id, revert.to_config, revert.keep_bundle) == ("d1", LIVE, True)
    assert revert.assignment_id == "ro_cfg/d1/revert"
    if on_abort is OnAbort.HALT:
        assert aborted.next_state.phase is RolloutPhase.ABORTED
        return
    assert aborted.next_state.phase is RolloutPhase.ROLLING_BACK  # d1 still runs the target config
    facts["d1"] = replace(facts["d1"], running_config_digest=LIVE)
    back = plan(s, aborted.next_state, list(facts.values()), T0)
    assert back.next_state.phase is RolloutPhase.ROLLED_BACK
    assert back.next_state.message.endswith("1 devices back on their live configs")


def test_a_bundle_and_config_rollout_takes_both_and_covers_unchanged_configs() -> None:
    facts = config_facts(["d1"], ["d0"])
    s = config_spec((1, "100%"), bundle=NEW)
    first = plan(s, RolloutState(), list(facts.values()), T0)
    (canary,) = [x for x in first.steps if isinstance(x, AssignBundle)]
    assert canary.device_id == "d0" and canary.bundle_digest == NEW and canary.config_digest == LIVE


def test_a_config_rollout_that_changes_no_selected_device_completes_at_once() -> None:
    facts = config_facts([], ["d0", "d1"])
    done = plan(config_spec(), RolloutState(), list(facts.values()), T0)
    assert done.next_state.phase is RolloutPhase.COMPLETED
    assert "changes no selected device's config" in done.next_state.message


def test_spec_needs_a_bundle_or_a_config_document() -> None:
    with pytest.raises(RolloutSpecError, match=r"needs a bundle .* a config document .* got neither"):
        RolloutSpec(id="ro_x")
    with pytest.raises(RolloutSpecError, match=r"config target must be 'Kind/name'.*got 'warehouse-a'"):
        RolloutSpec(id="ro_x", config="warehouse-a")
