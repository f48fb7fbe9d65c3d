"""The rollout planner, table-driven on a simulated fleet: waves, aborts, pauses, approval, bake time, gates, spec
errors, config targets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from edgefleet_controller.rollout.errors import RolloutSpecError
from edgefleet_controller.rollout.model import (
    Abort,
    Approve,
    AssignBundle,
    DeviceFact,
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
from edgefleet_controller.rollout.planner import plan, wave_targets
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


def test_a_deleted_device_is_gone_from_its_wave_neither_waited_for_nor_failed() -> None:
    fleet = Fleet.of(TWO_SITES)
    run = Run(spec(), fleet)
    assert assigns(run.step(tick=False)) == ["dev_a_00", "dev_b_00"]
    del fleet.facts["dev_a_00"]  # an operator deleted the canary before it reported (no fact any more)
    run.until(lambda r: phase_of(r) is RolloutPhase.COMPLETED)
    assert "dev_a_00" not in fleet.assigned_log[2:]  # never assigned again
    assert "failed" not in run.state.message
    assert (
        run.state.message.startswith("5 devices on") and "1 deleted during the rollout: dev_a_00" in run.state.message
    )
    assert all("rollout.aborted" not in events(p) for p in run.history)
