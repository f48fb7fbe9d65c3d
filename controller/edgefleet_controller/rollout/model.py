"""The values of a canary-gated rollout: what the operator asked for, where it stands, what the fleet shows.

Owns ``RolloutSpec`` (selector, wave strategy, gates, on_abort), ``RolloutState`` (phase, current wave,
bake clock, the devices assigned so far — persisted by the shell between plans), ``DeviceFact`` (one
device as observed right now), the operator ``Command``s and the ``Step``s the planner returns. All
frozen; validation happens at construction so the planner never meets a spec it cannot plan.

A rollout's target is a bundle, a staged config document revision, or both (``RolloutSpec.bundle_digest``
and ``RolloutSpec.config``). For a config target the per-device target is the device's effective config with
the staged revision in place of the live one, so it differs per device; the shell computes it
(``DeviceFact.target_config_digest``) and the planner assigns it wave by wave exactly like a bundle.

Waves are cumulative per-site targets: ``(1, "10%", "50%", "100%")`` means one canary device per site,
then 10 % of each site's selected devices (rounded up), and so on; a count is capped at the site's size,
and a wave never shrinks below the one before it. If the last wave is not ``"100%"`` an implicit
``"100%"`` wave is appended (as Argo Rollouts promotes to full weight after its last step): a rollout
that stopped short of its selector would leave the fleet split for good; scope a partial rollout with
the selector, or pause/abort it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from edgefleet.contract.shown import shown
from edgefleet_controller.rollout.errors import RolloutSpecError

_PERCENT = re.compile(r"^(100|[1-9][0-9]?)%$")
#: The config document kinds a config rollout may target, as ``Kind/name``.
CONFIG_TARGET_KINDS = ("FleetConfig", "SiteConfig", "DeviceConfig")
_CONFIG_REF = re.compile(r"^(FleetConfig|SiteConfig|DeviceConfig)/[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


class RolloutPhase(StrEnum):
    """Where a rollout is. Stored values never change (they are persisted and shown to operators)."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    WAITING_APPROVAL = "waiting_approval"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def aborting(self) -> bool:
        """Aborted, or on the way back: nothing may ever be assigned again."""
        return self in _ABORT_PHASES


_TERMINAL = frozenset({RolloutPhase.COMPLETED, RolloutPhase.ABORTED, RolloutPhase.ROLLED_BACK})
_ABORT_PHASES = frozenset({RolloutPhase.ABORTED, RolloutPhase.ROLLING_BACK, RolloutPhase.ROLLED_BACK})


class OnAbort(StrEnum):
    """What an abort does to devices already moved: send them back, or leave them where they are."""

    ROLLBACK = "rollback"
    HALT = "halt"


@dataclass(frozen=True)
class WaveSize:
    """One wave's cumulative per-site target: a device ``count`` or a ``percent`` of the site."""

    count: int | None = None
    percent: int | None = None

    @staticmethod
    def parse(value: int | str, index: int) -> WaveSize:
        where = f"strategy.waves[{index}]"
        if isinstance(value, bool):
            raise RolloutSpecError(f"{where} must be a device count >= 1 or a percentage, got {shown(value)}")
        if isinstance(value, int):
            if value < 1:
                raise RolloutSpecError(f"{where} must be a device count >= 1, got {value}")
            return WaveSize(count=value)
        if isinstance(value, str):
            text = value.strip()
            if text.isdigit():
                return WaveSize.parse(int(text), index)
            if _PERCENT.match(text):
                return WaveSize(percent=int(text[:-1]))
        raise RolloutSpecError(
            f"{where} must be a device count >= 1 or a percentage from '1%' to '100%', got {shown(value)}"
        )

    def target(self, site_size: int) -> int:
        """Devices this wave covers in a site of ``site_size`` selected devices (ceil for percentages)."""
        if self.count is not None:
            return min(self.count, site_size)
        assert self.percent is not None
        # Integer arithmetic: ceil(0.1 * 30) in floats is 4, not 3.
        return min(site_size, -(-(self.percent * site_size) // 100))

    def __str__(self) -> str:
        return f"{self.percent}%" if self.percent is not None else str(self.count)


FULL_WAVE = WaveSize(percent=100)


@dataclass(frozen=True)
class Selector:
    """Which devices a rollout covers: any of ``sites`` (empty = every site) and ALL of ``tags``."""

    sites: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)

    def matches(self, site: str, tags: Mapping[str, str]) -> bool:
        if self.sites and site not in self.sites:
            return False
        return all(tags.get(key) == value for key, value in self.tags.items())


@dataclass(frozen=True)
class Strategy:
    """Waves (cumulative targets), bake time between waves, devices in flight at once per site.

    ``max_parallel`` 0 means the whole wave at once. ``per_site`` False applies the waves (and
    ``max_parallel``) to the selected fleet as one group instead of to each site.
    """

    waves: tuple[int | str, ...] = (1, "100%")
    bake_s: float = 0.0
    max_parallel: int = 0
    per_site: bool = True

    def __post_init__(self) -> None:
        if not self.waves:
            raise RolloutSpecError("strategy.waves must list at least one wave, e.g. [1, '50%', '100%']")
        if isinstance(self.bake_s, bool) or not (math.isfinite(self.bake_s) and self.bake_s >= 0):
            raise RolloutSpecError(f"strategy.bake_s must be a number of seconds >= 0, got {shown(self.bake_s)}")
        if isinstance(self.max_parallel, bool) or not isinstance(self.max_parallel, int) or self.max_parallel < 0:
            raise RolloutSpecError(
                f"strategy.max_parallel must be an integer >= 0 (0 = the whole wave), got {shown(self.max_parallel)}"
            )
        self.wave_sizes  # noqa: B018 - validates every wave now, not at the first plan

    @property
    def wave_sizes(self) -> tuple[WaveSize, ...]:
        """The parsed waves, with the implicit final ``100%`` appended when missing."""
        sizes = tuple(WaveSize.parse(w, i) for i, w in enumerate(self.waves))
        return sizes if sizes[-1] == FULL_WAVE else (*sizes, FULL_WAVE)

    def targets(self, site_size: int) -> tuple[int, ...]:
        """Cumulative device targets of each wave in a site of ``site_size``, never decreasing."""
        result: list[int] = []
        for size in self.wave_sizes:
            result.append(max(size.target(site_size), result[-1] if result else 0))
        return tuple(result)


@dataclass(frozen=True)
class Gates:
    """When a wave's failures abort the rollout.

    Wave 1 is the canary wave: more than ``canary_max_failed`` failed devices aborts (default 0 — any
    failure). Later waves abort when failed / wave size > ``max_failed_ratio``. A device with
    ``inconclusive_count >= inconclusive_limit`` counts as failed. ``manual_approval`` holds the
    rollout in ``waiting_approval`` between waves until an ``Approve`` command.
    """

    max_failed_ratio: float = 0.0
    canary_max_failed: int = 0
    inconclusive_limit: int = 2
    manual_approval: bool = False

    def __post_init__(self) -> None:
        ratio = self.max_failed_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio <= 1.0:
            raise RolloutSpecError(f"gates.max_failed_ratio must be between 0 and 1, got {shown(ratio)}")
        for name in ("canary_max_failed", "inconclusive_limit"):
            value = getattr(self, name)
            low = 1 if name == "inconclusive_limit" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise RolloutSpecError(f"gates.{name} must be an integer >= {low}, got {shown(value)}")


@dataclass(frozen=True)
class RolloutSpec:
    """What the operator asked for: a target bundle, a staged config document (``config``, as
    ``Kind/name``), or both. ``config`` None = a bundle-only rollout; ``bundle_digest`` None = config-only
    (every device keeps its bundle)."""

    id: str
    bundle_digest: str | None = None
    config: str | None = None
    selector: Selector = field(default_factory=Selector)
    strategy: Strategy = field(default_factory=Strategy)
    gates: Gates = field(default_factory=Gates)
    on_abort: OnAbort = OnAbort.ROLLBACK

    def __post_init__(self) -> None:
        if not self.id:
            raise RolloutSpecError("rollout id must be non-empty, e.g. 'ro_01H…'")
        if not self.bundle_digest and not self.config:
            raise RolloutSpecError(
                f"rollout {self.id}: the target needs a bundle ('sha256:…' digest), a config document "
                "('SiteConfig/<name>'), or both; got neither"
            )
        if self.bundle_digest == "":
            object.__setattr__(self, "bundle_digest", None)
        if self.config == "":
            object.__setattr__(self, "config", None)
        if self.config is not None and not _CONFIG_REF.match(self.config):
            raise RolloutSpecError(
                f"rollout {self.id}: config target must be 'Kind/name' with Kind one of "
                f"{', '.join(CONFIG_TARGET_KINDS)}, e.g. 'SiteConfig/warehouse-a'; got {shown(self.config)}"
            )
        try:
            object.__setattr__(self, "on_abort", OnAbort(self.on_abort))
        except ValueError:
            raise RolloutSpecError(
                f"rollout {self.id}: on_abort must be 'rollback' or 'halt', got {shown(self.on_abort)}"
            ) from None

    @property
    def waves_total(self) -> int:
        return len(self.strategy.wave_sizes)

    @property
    def target_text(self) -> str:
        """``sha256:…``, ``SiteConfig/a`` or ``sha256:… with SiteConfig/a``, as messages name the target."""
        if self.bundle_digest and self.config:
            return f"{self.bundle_digest} with {self.config}"
        return self.bundle_digest or self.config or ""

    def assignment_id(self, device_id: str, wave: int) -> str:
        """The id of this rollout's assignment of ``device_id`` (each device is assigned at most once)."""
        return f"{self.id}/{device_id}/w{wave}"

    def revert_id(self, device_id: str) -> str:
        """The id of this rollout's revert of ``device_id`` (each device is reverted at most once)."""
        return f"{self.id}/{device_id}/revert"


@dataclass(frozen=True)
class Assignment:
    """A device this rollout moved: in which wave, from which bundle (None = it ran none), when.

    ``site`` is the device's site (or group) at assignment time, so a device that later leaves the
    selector or stops reporting still counts against its wave. ``assignment_id`` is the identity of the
    desired state the assignment gave the device: only outcomes the device reports under it (or under a
    later desired state of this same rollout, see ``reconciler``) count for this rollout.
    ``previous_config_digest`` is the config the device ran when assigned, ``config_digest`` the target
    config assigned (config rollouts only).
    """

    wave: int
    previous_bundle_digest: str | None
    assigned_at: datetime
    site: str = ""
    assignment_id: str = ""
    previous_config_digest: str | None = None
    config_digest: str | None = None


@dataclass(frozen=True)
class RolloutState:
    """Where a rollout stands; the shell persists ``Plan.next_state`` and hands it back next time.

    ``wave`` is 1-based (0 before the first). ``baked_since`` is when the planner first saw the current
    wave settled (the bake clock; facts carry no timestamps). ``reverting`` holds the devices already
    sent a ``RevertDevice``, so a re-plan never repeats it.
    """

    phase: RolloutPhase = RolloutPhase.PENDING
    wave: int = 0
    wave_started_at: datetime | None = None
    baked_since: datetime | None = None
    assigned: Mapping[str, Assignment] = field(default_factory=dict)
    reverting: frozenset[str] = frozenset()
    message: str = ""


@dataclass(frozen=True)
class DeviceFact:
    """One device as the controller observes it now, relative to this rollout's target.

    ``succeeded`` = committed the target; ``failed`` = its update to the target failed; ``rolled_back``
    = it ran the target (canary/trial/watch) and went back; ``inconclusive_count`` = inconclusive
    canary verdicts for the target in a row. The shell sets these only from outcomes reported under this
    rollout's assignment of the device (never from an earlier one).

    Configs: ``running_config_digest`` is what the device reports it runs; ``live_config_digest`` its
    effective config from the live documents (what it goes back to); ``target_config_digest`` its
    effective config with the rollout's staged revision in place (None for a bundle-only rollout).
    """

    device_id: str
    site: str
    tags: Mapping[str, str] = field(default_factory=dict)
    online: bool = True
    running_bundle: str | None = None
    desired_bundle: str | None = None
    update_state: str = "idle"
    last_verdict_outcome: str | None = None
    failed: bool = False
    succeeded: bool = False
    rolled_back: bool = False
    inconclusive_count: int = 0
    running_config_digest: str | None = None
    live_config_digest: str | None = None
    target_config_digest: str | None = None


def reverted(spec: RolloutSpec, assignment: Assignment, fact: DeviceFact | None) -> bool:
    """Whether a device the rollout sent back is back: it runs its previous bundle again (when the rollout
    changed its bundle) and its live config (when the rollout changed its config). A device with no fact
    (gone), or one that ran no bundle before, has nothing to wait for on the bundle side."""
    if fact is None:
        return True
    previous = assignment.previous_bundle_digest
    if spec.bundle_digest is not None and previous is not None and fact.running_bundle != previous:
        return False
    live = fact.live_config_digest
    return spec.config is None or live is None or fact.running_config_digest == live


# ------------------------------------------------------------------ operator commands


@dataclass(frozen=True)
class OperatorCommand:
    """An operator's command to a rollout, with the reason they gave; one subclass per command."""

    reason: str = ""


class Pause(OperatorCommand):
    """The operator's ``pause`` command."""


class Resume(OperatorCommand):
    """The operator's ``resume`` command."""


class Approve(OperatorCommand):
    """The operator's ``approve`` command."""


class Abort(OperatorCommand):
    """The operator's ``abort`` command."""


Command = Pause | Resume | Approve | Abort

#: Stored command names (``rollout_commands.command``) → the command they queue.
COMMANDS: Mapping[str, type[Pause | Resume | Approve | Abort]] = {
    "pause": Pause,
    "resume": Resume,
    "approve": Approve,
    "abort": Abort,
}


# ------------------------------------------------------------------ steps (planner output)


@dataclass(frozen=True)
class AssignBundle:
    """Set the device's desired target to the rollout's, under a new ``assignment_id``: the bundle
    (``bundle_digest``; None = config-only, the bundle is left as it is) and the config (``config_digest``,
    the device's own target config; None = left as it is)."""

    device_id: str
    bundle_digest: str | None
    config_digest: str | None
    wave: int
    previous_bundle: str | None
    assignment_id: str = ""


@dataclass(frozen=True)
class RevertDevice:
    """Send the device back, under a new ``assignment_id``: its desired bundle to ``to_bundle`` and, for a
    config rollout, its desired config to ``to_config`` (its live effective config).

    ``to_bundle`` None means the device ran no bundle before this rollout: the shell clears its desired
    bundle (there is nothing to go back to, and the planner does not wait for it). ``keep_bundle`` leaves
    the bundle alone (a config-only rollout, or a halted one that only takes its config back).
    """

    device_id: str
    to_bundle: str | None
    assignment_id: str = ""
    to_config: str | None = None
    keep_bundle: bool = False


@dataclass(frozen=True)
class SetPhase:
    """Record the rollout's new phase and message (watchers are woken by it)."""

    phase: RolloutPhase
    message: str


@dataclass(frozen=True)
class Emit:
    """An event for the log / event stream, e.g. ``rollout.wave_started`` with its fields."""

    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)


Step = AssignBundle | RevertDevice | SetPhase | Emit
