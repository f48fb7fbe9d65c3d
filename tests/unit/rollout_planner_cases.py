"""A simulated fleet and a driver for the rollout planner's tests: devices step towards what each plan tells them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from edgefleet_controller.rollout.model import (
    AssignBundle,
    Command,
    DeviceFact,
    Emit,
    Gates,
    OnAbort,
    RevertDevice,
    RolloutPhase,
    RolloutSpec,
    RolloutState,
    Selector,
    Strategy,
)
from edgefleet_controller.rollout.planner import Plan, plan

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
