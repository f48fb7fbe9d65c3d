"""The rollout planner: ``plan(spec, state, facts, now, commands) -> Plan(next_state, steps)``.

Pure: every fact, the time and the operator's commands come in as values; the decision goes out as a new
state plus steps (``AssignBundle``, ``RevertDevice``, ``SetPhase``, ``Emit``) that a shell executes and
persists. An empty ``steps`` means nothing to do. Re-planning with the persisted ``next_state`` and the
same facts yields no step again — a device in ``state.assigned`` is never assigned twice, a device in
``state.reverting`` never reverted twice — which is what makes a controller restart safe.

Rules, in the order ``plan`` applies them:

1. Commands, in order: ``Abort`` (unless already aborting or completed), ``Pause`` (pending, running or
   waiting_approval → paused), ``Resume`` (paused → running, or pending before the first wave),
   ``Approve`` (waiting_approval → next wave). A command that does not apply is ignored with a
   ``rollout.command_ignored`` event.
2. Terminal phases (completed, aborted, rolled_back) do nothing. ``rolling_back`` reverts every assigned
   device once (to its previous bundle) and becomes ``rolled_back`` once every one of them runs its
   previous bundle again (a device no longer in the facts, or one that ran no bundle before, counts as
   reverted: there is nothing to wait for). After an abort NOTHING is ever assigned again.
3. ``pending`` starts wave 1.
4. Gates, checked in running, paused and waiting_approval alike (a pause must not hide a failure): a
   device counts as failed when its fact says failed or rolled back, or its inconclusive count reached
   ``gates.inconclusive_limit``. Wave 1 (canary) aborts with more than ``gates.canary_max_failed``
   failures; a later wave aborts when failed / wave size > ``gates.max_failed_ratio`` (wave size =
   the wave's planned new devices across groups). Abort: ``on_abort=rollback`` → rolling_back (and the
   reverts at once); ``halt`` → aborted, no bundle reverted (a config target is still taken back, below).
5. Running: per group (a site, or the whole selection when ``per_site`` is off) assign up to the wave's
   cumulative target, choosing unassigned selected devices online first, then by id; never more than
   ``max_parallel`` in flight (assigned, neither succeeded nor failed) per group. A wave is settled when
   every group reached its target and every assigned device succeeded (or failed within the gate). The
   bake clock starts when the planner first sees the wave settled and resets if it unsettles; after
   ``bake_s`` the next wave starts — or, with ``manual_approval``, the rollout waits for ``Approve``.
   The last wave settled → completed. With no device selected at all the rollout completes at once.
6. Every wave transition re-checks the gates of EVERY wave started so far, right before the next wave
   is started (by the bake clock or by ``Approve``), so a failure that appeared in an earlier wave while a
   later one settled aborts instead of spreading; the check at the start of a pass (rule 4) is the same
   function over the same facts.

Outcomes belong to an assignment: each ``AssignBundle`` carries ``spec.assignment_id(device, wave)``
(recorded in ``Assignment.assignment_id``) and each ``RevertDevice`` ``spec.revert_id(device)``; the
shell counts a device's reports for this rollout only under those ids. On top of that the planner never
counts the fact of a device it assigns in the same pass: that fact was observed before the assignment
existed, so whatever it says (committed, failed, rolled back) belongs to an earlier target. A device
assigned in this pass is in flight.

Config targets: a config-only rollout selects only the devices whose target config differs from their
live one (a device the staged revision does not change has nothing to canary, and must not be the canary
that lets it spread); with a bundle target every selected device is in. ``AssignBundle.config_digest`` is
the device's own target config. A revert sets the device's config back to its live effective config
(``RevertDevice.to_config``) — also under ``on_abort=halt``, since the staged revision is discarded on
abort and no document describes it any more; the rollout is rolled back once every reverted device runs
its previous bundle and its live config again (``model.reverted``).

Facts for devices the selector does not match are ignored except for devices this rollout assigned.
A group's size counts its selected devices plus the devices assigned there that left the selection,
so targets do not shrink under devices already moved. An assigned device with no fact is in flight:
the wave waits for it rather than guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import assert_never

from edgefleet_controller.rollout.model import (
    Abort,
    Approve,
    AssignBundle,
    Assignment,
    Command,
    DeviceFact,
    Emit,
    OnAbort,
    Pause,
    Resume,
    RevertDevice,
    RolloutPhase,
    RolloutSpec,
    RolloutState,
    SetPhase,
    Step,
    reverted,
)

# Groups when waves are fleet-wide rather than per site.
FLEET_GROUP = "*"


@dataclass(frozen=True)
class Plan:
    """The planner's answer: the state to persist and the steps to execute, in order."""

    next_state: RolloutState
    steps: tuple[Step, ...]


def plan(
    spec: RolloutSpec,
    state: RolloutState,
    facts: Sequence[DeviceFact],
    now: datetime,
    *,
    commands: Sequence[Command] = (),
) -> Plan:
    """Decide the next steps of a rollout (see the module docstring for the rules)."""
    planning = _Planning(spec, state, facts, now)
    planning.run(commands)
    return planning.result()


def wave_targets(spec: RolloutSpec, facts: Sequence[DeviceFact], state: RolloutState) -> dict[str, tuple[int, ...]]:
    """Cumulative per-group device targets of every wave, as the planner computes them."""
    return _Planning(spec, state, facts, datetime.min).targets


class _Planning:
    """One planning pass: mutable scratch state, frozen into a ``Plan`` at the end."""

    def __init__(self, spec: RolloutSpec, state: RolloutState, facts: Sequence[DeviceFact], now: datetime):
        self.spec = spec
        self.initial = state
        self.now = now
        self.phase = state.phase
        self.wave = state.wave
        self.wave_started_at = state.wave_started_at
        self.baked_since = state.baked_since
        self.assigned: dict[str, Assignment] = dict(state.assigned)
        self.reverting: set[str] = set(state.reverting)
        self.message = state.message
        self.events: list[Emit] = []
        self.actions: list[Step] = []
        self.facts = {fact.device_id: fact for fact in facts}
        # devices assigned in this pass: their facts predate the assignment, so they are in flight
        self.fresh: set[str] = set()
        self.selected = [f for f in facts if spec.selector.matches(f.site, f.tags) and self._in_scope(f)]
        self.population: dict[str, set[str]] = {}
        for fact in self.selected:
            self.population.setdefault(self._group(fact), set()).add(fact.device_id)
        for device_id, assignment in self.assigned.items():
            self.population.setdefault(assignment.site, set()).add(device_id)
        self.targets = {g: spec.strategy.targets(len(ids)) for g, ids in self.population.items()}

    # ------------------------------------------------------------ device status

    def _group(self, fact: DeviceFact) -> str:
        return fact.site if self.spec.strategy.per_site else FLEET_GROUP

    def _in_scope(self, fact: DeviceFact) -> bool:
        """A bundle target covers every selected device; a config-only target those it changes."""
        if self.spec.bundle_digest is not None:
            return True
        target = fact.target_config_digest
        return target is not None and target != fact.live_config_digest

    def _failure(self, device_id: str) -> str | None:
        """Why an assigned device counts as failed, or None."""
        fact = self.facts.get(device_id)
        if fact is None or device_id in self.fresh:
            return None
        if fact.failed:
            return "failed"
        if fact.rolled_back:
            return "rolled back"
        if fact.inconclusive_count >= self.spec.gates.inconclusive_limit:
            return f"{fact.inconclusive_count} inconclusive verdicts"
        return None

    def _succeeded(self, device_id: str) -> bool:
        fact = self.facts.get(device_id)
        return fact is not None and device_id not in self.fresh and fact.succeeded and self._failure(device_id) is None

    def _settled(self, device_id: str) -> bool:
        """Succeeded, failed, or gone: an assigned device without a fact was deleted (every assigned device
        that exists has one), which is neither a success nor a failure and nothing to wait for."""
        gone = device_id not in self.facts
        return gone or self._succeeded(device_id) or self._failure(device_id) is not None

    # ------------------------------------------------------------ transitions

    def _emit(self, event: str, **fields: object) -> None:
        self.events.append(Emit(event, {"rollout_id": self.spec.id, **fields}))

    def _start_wave(self, wave: int) -> None:
        self.wave = wave
        self.wave_started_at = self.now
        self.baked_since = None
        size = self.spec.strategy.wave_sizes[wave - 1]
        self.message = f"wave {wave} of {self.spec.waves_total} ({size})"
        self._emit("rollout.wave_started", wave=wave, waves_total=self.spec.waves_total, size=str(size))

    def _abort(self, reason: str) -> None:
        self.message = reason
        self._emit("rollout.aborted", reason=reason, on_abort=str(self.spec.on_abort), wave=self.wave)
        if self.spec.on_abort is OnAbort.HALT:
            self.phase = RolloutPhase.ABORTED
            if self.spec.config is not None:
                self._send_back(keep_bundle=True)
            return
        self.phase = RolloutPhase.ROLLING_BACK
        self._emit("rollout.rolling_back", devices=len(self.assigned))
        self._revert()

    def _send_back(self, *, keep_bundle: bool) -> None:
        """One ``RevertDevice`` per assigned device not yet sent back."""
        for device_id in sorted(self.assigned):
            if device_id in self.reverting:
                continue
            fact = self.facts.get(device_id)
            self.actions.append(
                RevertDevice(
                    device_id,
                    self.assigned[device_id].previous_bundle_digest,
                    assignment_id=self.spec.revert_id(device_id),
                    to_config=fact.live_config_digest if self.spec.config is not None and fact else None,
                    keep_bundle=keep_bundle,
                )
            )
            self.reverting.add(device_id)

    def _revert(self) -> None:
        self._send_back(keep_bundle=self.spec.bundle_digest is None)
        # A device that ran no bundle before has nothing to go back to: its RevertDevice clears the
        # desired bundle and there is nothing further to wait for.
        waiting = [d for d, a in self.assigned.items() if not reverted(self.spec, a, self.facts.get(d))]
        if not waiting:
            self.phase = RolloutPhase.ROLLED_BACK
            back = "previous bundles" if self.spec.config is None else "live configs"
            if self.spec.config is not None and self.spec.bundle_digest is not None:
                back = "previous bundles and live configs"
            self.message = f"{self.message}; {len(self.assigned)} devices back on their {back}"
            self._emit("rollout.rolled_back", devices=len(self.assigned))

    def _command(self, command: Command) -> None:
        phase = self.phase
        applied = True
        match command:
            case Abort(reason=reason):
                if phase.aborting or phase is RolloutPhase.COMPLETED:
                    applied = False
                else:
                    self._abort(f"aborted by operator: {reason}" if reason else "aborted by operator")
            case Pause(reason=reason):
                if phase in (RolloutPhase.PENDING, RolloutPhase.RUNNING, RolloutPhase.WAITING_APPROVAL):
                    self.phase = RolloutPhase.PAUSED
                    self.message = f"paused by operator: {reason}" if reason else "paused by operator"
                    self._emit("rollout.paused", wave=self.wave, reason=reason)
                else:
                    applied = False
            case Resume(reason=reason):
                if phase is RolloutPhase.PAUSED:
                    self.phase = RolloutPhase.RUNNING if self.wave >= 1 else RolloutPhase.PENDING
                    self.message = f"resumed at wave {self.wave}" if self.wave else "resumed"
                    self._emit("rollout.resumed", wave=self.wave, reason=reason)
                else:
                    applied = False
            case Approve(reason=reason):
                if phase is RolloutPhase.WAITING_APPROVAL:
                    self.phase = RolloutPhase.RUNNING
                    self._emit("rollout.approved", wave=self.wave + 1, reason=reason)
                    self._next_wave()
                else:
                    applied = False
            case _:
                assert_never(command)
        if not applied:
            self._emit("rollout.command_ignored", command=type(command).__name__.lower(), phase=str(phase))

    # ------------------------------------------------------------ gates and waves

    def _check_gates(self) -> str | None:
        """The abort reason when a wave's failures exceed its gate, else None."""
        gates = self.spec.gates
        for wave in range(1, self.wave + 1):
            members = sorted(d for d, a in self.assigned.items() if a.wave == wave)
            failures = [(d, why) for d in members if (why := self._failure(d)) is not None]
            if not failures:
                continue
            listed = ", ".join(f"{d} ({why})" for d, why in failures)
            planned = sum(t[wave - 1] - (t[wave - 2] if wave > 1 else 0) for t in self.targets.values())
            size = max(planned, len(members), 1)
            if wave == 1:
                if len(failures) > gates.canary_max_failed:
                    return (
                        f"wave 1 (canary): {len(failures)} of {size} devices failed, more than the "
                        f"{gates.canary_max_failed} allowed: {listed}"
                    )
            elif len(failures) / size > gates.max_failed_ratio:
                return (
                    f"wave {wave}: {len(failures)} of {size} devices failed ({len(failures) / size:.0%}), "
                    f"more than max_failed_ratio {gates.max_failed_ratio:.0%}: {listed}"
                )
        return None

    def _assign(self) -> None:
        strategy = self.spec.strategy
        for group in sorted(self.population):
            target = self.targets[group][self.wave - 1]
            members = [d for d, a in self.assigned.items() if a.site == group]
            room = target - len(members)
            if strategy.max_parallel:
                in_flight = sum(1 for d in members if not self._settled(d))
                room = min(room, strategy.max_parallel - in_flight)
            if room <= 0:
                continue
            candidates = sorted(
                (f for f in self.selected if self._group(f) == group and f.device_id not in self.assigned),
                key=lambda f: (not f.online, f.device_id),
            )
            for fact in candidates[:room]:
                assignment_id = self.spec.assignment_id(fact.device_id, self.wave)
                config = fact.target_config_digest if self.spec.config is not None else None
                self.assigned[fact.device_id] = Assignment(
                    wave=self.wave,
                    previous_bundle_digest=fact.running_bundle,
                    assigned_at=self.now,
                    site=group,
                    assignment_id=assignment_id,
                    previous_config_digest=fact.running_config_digest,
                    config_digest=config,
                )
                self.fresh.add(fact.device_id)
                self.actions.append(
                    AssignBundle(
                        device_id=fact.device_id,
                        bundle_digest=self.spec.bundle_digest,
                        config_digest=config,
                        wave=self.wave,
                        previous_bundle=fact.running_bundle,
                        assignment_id=assignment_id,
                    )
                )

    def _wave_settled(self) -> bool:
        for group, targets in self.targets.items():
            if sum(1 for a in self.assigned.values() if a.site == group) < targets[self.wave - 1]:
                return False
        return all(self._settled(d) for d in self.assigned)

    def _complete(self) -> None:
        failed = sorted(d for d in self.assigned if self._failure(d) is not None)
        gone = sorted(d for d in self.assigned if d not in self.facts)
        groups = len(self.population)
        self.phase = RolloutPhase.COMPLETED
        self.message = (
            f"{len(self.assigned) - len(failed) - len(gone)} devices on {self.spec.target_text} across {groups} "
            f"{'sites' if self.spec.strategy.per_site else 'groups'}"
        )
        if failed:
            self.message += f"; {len(failed)} failed within the gates: {', '.join(failed)}"
        if gone:
            self.message += f"; {len(gone)} deleted during the rollout: {', '.join(gone)}"
        self._emit("rollout.completed", devices=len(self.assigned), failed=len(failed))

    def _advance(self) -> None:
        total = self.spec.waves_total
        for _ in range(total + 1):
            self._assign()
            if not self._wave_settled():
                self.baked_since = None
                return
            if self.wave >= total:
                self._complete()
                return
            if self.baked_since is None:
                self.baked_since = self.now
                self._emit("rollout.wave_baking", wave=self.wave, bake_s=self.spec.strategy.bake_s)
            if (self.now - self.baked_since).total_seconds() < self.spec.strategy.bake_s:
                return
            if self.spec.gates.manual_approval:
                self.phase = RolloutPhase.WAITING_APPROVAL
                nxt = self.spec.strategy.wave_sizes[self.wave]
                self.message = f"wave {self.wave} of {total} settled; approve to start wave {self.wave + 1} ({nxt})"
                self._emit("rollout.waiting_approval", wave=self.wave)
                return
            if not self._next_wave():
                return

    def _next_wave(self) -> bool:
        """Start the next wave unless a gate of any wave so far is exceeded (then abort); True if started."""
        reason = self._check_gates()
        if reason is not None:
            self._abort(reason)
            return False
        self._start_wave(self.wave + 1)
        return True

    # ------------------------------------------------------------ driver

    def run(self, commands: Sequence[Command]) -> None:
        for command in commands:
            self._command(command)
        if self.phase.terminal:
            return
        if self.phase is RolloutPhase.ROLLING_BACK:
            self._revert()
            return
        if self.phase is RolloutPhase.PENDING:
            self.phase = RolloutPhase.RUNNING
            self._emit("rollout.started", devices=sum(len(ids) for ids in self.population.values()))
            self._start_wave(1)
        if not self.population and self.phase is RolloutPhase.RUNNING:
            self.phase = RolloutPhase.COMPLETED
            self.message = "no device matches the selector; nothing to do"
            if self.spec.bundle_digest is None:
                self.message = f"the staged {self.spec.config} changes no selected device's config; nothing to do"
            self._emit("rollout.completed", devices=0, failed=0)
            return
        reason = self._check_gates()
        if reason is not None:
            self._abort(reason)
            return
        if self.phase is RolloutPhase.RUNNING:
            self._advance()

    def result(self) -> Plan:
        next_state = replace(
            self.initial,
            phase=self.phase,
            wave=self.wave,
            wave_started_at=self.wave_started_at,
            baked_since=self.baked_since,
            assigned=self.assigned,
            reverting=frozenset(self.reverting),
            message=self.message,
        )
        steps: list[Step] = []
        if self.phase != self.initial.phase or self.message != self.initial.message:
            steps.append(SetPhase(self.phase, self.message))
        steps.extend(self.events)
        steps.extend(self.actions)
        return Plan(next_state=next_state, steps=tuple(steps))
