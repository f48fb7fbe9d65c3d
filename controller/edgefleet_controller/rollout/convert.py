"""Conversions of rollout values: model ⇄ stored JSON, wire requests and manifests → model, model → wire.

Owns the one JSON spelling of ``RolloutSpec`` and ``RolloutState`` the rollout store keeps (times as ISO
8601 with offset; ``reverting`` as a sorted list), the mapping between ``RolloutPhase`` and the proto
enum, how a ``CreateRolloutRequest`` or a ``Rollout`` manifest document becomes a ``RolloutSpec`` (proto3
defaults: no waves → ``[1, "100%"]``, ``inconclusive_limit`` 0 → 2, ``on_abort`` "" → rollback), and
how a rollout plus its devices' facts is shown on the wire. Pure: no I/O, no clock.

Manifest gates: ``abort_on_inconclusive: true`` means a single inconclusive canary verdict counts as a
failure (``inconclusive_limit`` 1); absent or false keeps the default (two in a row count).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from google.protobuf.json_format import ParseDict
from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.contract.manifest import ManifestDoc
from edgefleet.contract.shown import shown
from edgefleet.v1 import common_pb2, fleet_pb2
from edgefleet_controller.rollout.errors import RolloutSpecError
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
    reverted,
)

DEFAULT_INCONCLUSIVE_LIMIT = Gates().inconclusive_limit

# ------------------------------------------------------------------ stored JSON


def spec_to_dict(spec: RolloutSpec) -> dict[str, Any]:
    return {
        "id": spec.id,
        "bundle_digest": spec.bundle_digest,
        "config": spec.config,
        "selector": {"sites": list(spec.selector.sites), "tags": dict(spec.selector.tags)},
        "strategy": {
            "waves": list(spec.strategy.waves),
            "bake_s": spec.strategy.bake_s,
            "max_parallel": spec.strategy.max_parallel,
            "per_site": spec.strategy.per_site,
        },
        "gates": {
            "max_failed_ratio": spec.gates.max_failed_ratio,
            "canary_max_failed": spec.gates.canary_max_failed,
            "inconclusive_limit": spec.gates.inconclusive_limit,
            "manual_approval": spec.gates.manual_approval,
        },
        "on_abort": str(spec.on_abort),
    }


def spec_from_dict(data: Mapping[str, Any]) -> RolloutSpec:
    selector = data.get("selector", {})
    strategy = data.get("strategy", {})
    gates = data.get("gates", {})
    return RolloutSpec(
        id=data["id"],
        bundle_digest=data.get("bundle_digest"),
        config=data.get("config"),
        selector=Selector(sites=tuple(selector.get("sites", ())), tags=dict(selector.get("tags", {}))),
        strategy=Strategy(
            waves=tuple(strategy.get("waves", (1, "100%"))),
            bake_s=float(strategy.get("bake_s", 0.0)),
            max_parallel=int(strategy.get("max_parallel", 0)),
            per_site=bool(strategy.get("per_site", True)),
        ),
        gates=Gates(
            max_failed_ratio=float(gates.get("max_failed_ratio", 0.0)),
            canary_max_failed=int(gates.get("canary_max_failed", 0)),
            inconclusive_limit=int(gates.get("inconclusive_limit", DEFAULT_INCONCLUSIVE_LIMIT)),
            manual_approval=bool(gates.get("manual_approval", False)),
        ),
        on_abort=OnAbort(data.get("on_abort", "rollback")),
    )


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def state_to_dict(state: RolloutState) -> dict[str, Any]:
    return {
        "phase": str(state.phase),
        "wave": state.wave,
        "wave_started_at": _time(state.wave_started_at),
        "baked_since": _time(state.baked_since),
        "assigned": {
            device_id: {
                "wave": a.wave,
                "previous_bundle_digest": a.previous_bundle_digest,
                "assigned_at": a.assigned_at.isoformat(),
                "site": a.site,
                "assignment_id": a.assignment_id,
                "previous_config_digest": a.previous_config_digest,
                "config_digest": a.config_digest,
            }
            for device_id, a in sorted(state.assigned.items())
        },
        "reverting": sorted(state.reverting),
        "message": state.message,
    }


def state_from_dict(data: Mapping[str, Any]) -> RolloutState:
    assigned: dict[str, Assignment] = {}
    for device_id, a in data.get("assigned", {}).items():
        at = _parse_time(a["assigned_at"])
        assert at is not None
        assigned[device_id] = Assignment(
            wave=int(a["wave"]),
            previous_bundle_digest=a.get("previous_bundle_digest"),
            assigned_at=at,
            site=a.get("site", ""),
            # rows stored before assignment ids existed carry none: no report can match it, so such a
            # device stays in flight rather than be judged on an outcome of unknown origin (a rollout left
            # unfinished across the upgrade is aborted and created again)
            assignment_id=str(a.get("assignment_id", "")),
            previous_config_digest=a.get("previous_config_digest"),
            config_digest=a.get("config_digest"),
        )
    return RolloutState(
        phase=RolloutPhase(data.get("phase", RolloutPhase.PENDING)),
        wave=int(data.get("wave", 0)),
        wave_started_at=_parse_time(data.get("wave_started_at")),
        baked_since=_parse_time(data.get("baked_since")),
        assigned=assigned,
        reverting=frozenset(data.get("reverting", ())),
        message=str(data.get("message", "")),
    )


# ------------------------------------------------------------------ phases


def phase_to_proto(phase: RolloutPhase) -> fleet_pb2.RolloutPhase.ValueType:
    return fleet_pb2.RolloutPhase.Value(f"ROLLOUT_PHASE_{phase.name}")


def phase_from_proto(value: int) -> RolloutPhase:
    """The model phase of a proto enum value; ``RolloutSpecError`` for UNSPECIFIED or unknown values."""
    try:
        name = fleet_pb2.RolloutPhase.Name(fleet_pb2.RolloutPhase.ValueType(value))
    except ValueError:
        name = ""
    phase = name.removeprefix("ROLLOUT_PHASE_")
    if phase not in RolloutPhase.__members__:
        known = ", ".join(p.name for p in RolloutPhase)
        raise RolloutSpecError(f"rollout phase filter must be one of {known}, got {shown(value)}")
    return RolloutPhase[phase]


# ------------------------------------------------------------------ wire / manifest → model


def _wave(text: str, index: int) -> int | str:
    text = text.strip()
    if text.isdigit():
        return int(text)
    if not text:
        raise RolloutSpecError(f"strategy.waves[{index}] must be a device count >= 1 or a percentage, got ''")
    return text


def _on_abort(value: str, rollout_id: str) -> OnAbort:
    try:
        return OnAbort(value or OnAbort.ROLLBACK)
    except ValueError:
        raise RolloutSpecError(
            f"rollout {rollout_id}: on_abort must be 'rollback' or 'halt', got {shown(value)}"
        ) from None


def spec_from_request(
    rollout_id: str, bundle_digest: str | None, request: fleet_pb2.CreateRolloutRequest, config: str | None = None
) -> RolloutSpec:
    """The spec a ``CreateRolloutRequest`` asks for (its bundle already resolved to ``bundle_digest``, its
    config document to the ``Kind/name`` ref ``config``).

    Raises ``RolloutSpecError`` naming the field and value when the strategy, gates or on_abort are invalid.
    """
    waves = tuple(_wave(w, i) for i, w in enumerate(request.strategy.waves)) or (1, "100%")
    gates = request.gates
    return RolloutSpec(
        id=rollout_id,
        bundle_digest=bundle_digest,
        config=config,
        selector=Selector(sites=tuple(request.selector.sites), tags=dict(request.selector.tags)),
        strategy=Strategy(
            waves=waves, bake_s=float(request.strategy.bake_s), max_parallel=int(request.strategy.max_parallel)
        ),
        gates=Gates(
            max_failed_ratio=gates.max_failed_ratio,
            inconclusive_limit=gates.inconclusive_limit or DEFAULT_INCONCLUSIVE_LIMIT,
            manual_approval=gates.manual_approval,
        ),
        on_abort=_on_abort(request.on_abort, rollout_id),
    )


def spec_from_manifest(
    rollout_id: str, bundle_digest: str | None, doc: ManifestDoc, config: str | None = None
) -> RolloutSpec:
    """The spec of a validated ``Rollout`` manifest document (its bundle and config document resolved)."""
    spec = doc.spec
    selector = spec.get("selector", {})
    strategy = spec.get("strategy", {})
    gates = spec.get("gates", {})
    defaults = Strategy()
    return RolloutSpec(
        id=rollout_id,
        bundle_digest=bundle_digest,
        config=config,
        selector=Selector(sites=tuple(selector.get("sites", ())), tags=dict(selector.get("tags", {}))),
        strategy=Strategy(
            waves=tuple(strategy.get("waves", defaults.waves)),
            bake_s=float(strategy.get("bake_s", defaults.bake_s)),
            max_parallel=int(strategy.get("max_parallel", defaults.max_parallel)),
            per_site=bool(strategy.get("per_site", defaults.per_site)),
        ),
        gates=Gates(
            max_failed_ratio=float(gates.get("max_failed_ratio", 0.0)),
            canary_max_failed=int(gates.get("canary_max_failed", 0)),
            inconclusive_limit=1 if gates.get("abort_on_inconclusive", False) else DEFAULT_INCONCLUSIVE_LIMIT,
            manual_approval=bool(gates.get("manual_approval", False)),
        ),
        on_abort=_on_abort(str(spec.get("on_abort", "")), rollout_id),
    )


# ------------------------------------------------------------------ model → wire


def timestamp(value: datetime | None) -> Timestamp:
    ts = Timestamp()
    if value is not None:
        ts.FromDatetime(value)
    return ts


def update_state_value(name: str) -> common_pb2.UpdateState.ValueType:
    """``"committed"`` → ``UPDATE_STATE_COMMITTED``; unknown names → UNSPECIFIED."""
    try:
        return common_pb2.UpdateState.Value(f"UPDATE_STATE_{name.upper()}")
    except ValueError:
        return common_pb2.UPDATE_STATE_UNSPECIFIED


def device_status(spec: RolloutSpec, state: RolloutState, device_id: str, fact: DeviceFact | None) -> str:
    """One device's status in this rollout, as operators read it.

    ``pending`` (selected, not yet assigned), ``assigned``, ``canary``, ``trial``, ``succeeded``,
    ``failed``, ``rolled_back`` (the device itself went back, or a rollout revert completed) and
    ``reverting`` (the rollout sent it back and it does not run its previous bundle yet).
    """
    assignment = state.assigned.get(device_id)
    if assignment is None:
        return "pending"
    if device_id in state.reverting:
        # once the rollout is rolled back its reverts are done, whatever the device ran since
        done = state.phase is RolloutPhase.ROLLED_BACK or reverted(spec, assignment, fact)
        return "rolled_back" if done else "reverting"
    if fact is None:
        return "assigned"
    if fact.failed or fact.inconclusive_count >= spec.gates.inconclusive_limit:
        return "failed"
    if fact.rolled_back:
        return "rolled_back"
    if fact.succeeded:
        return "succeeded"
    if fact.update_state in ("canary", "trial"):
        return fact.update_state
    return "assigned"


def rollout_message(
    *,
    name: str,
    spec: RolloutSpec,
    state: RolloutState,
    created_at: datetime,
    updated_at: datetime,
    admission: Sequence[str] = (),
    forced: bool = False,
    facts: Sequence[DeviceFact] = (),
    names: Mapping[str, str] | None = None,
    verdicts: Mapping[str, Mapping[str, Any]] | None = None,
    config_content_digest: str = "",
) -> fleet_pb2.Rollout:
    """The wire ``Rollout``: spec, state, and one ``DeviceRolloutStatus`` per assigned or selected device
    (assigned first, by wave then id; then pending ones by id). ``verdicts`` maps device id → the
    reported ``last_verdict`` (a ``CanaryVerdict`` as a dict) of the devices whose verdict the shell
    counted under this rollout's assignment; it is shown only for those."""
    names = names or {}
    verdicts = verdicts or {}
    by_id = {fact.device_id: fact for fact in facts}
    message = fleet_pb2.Rollout(
        id=spec.id,
        name=name,
        bundle_digest=spec.bundle_digest or "",
        config=spec.config or "",
        config_content_digest=config_content_digest,
        selector=fleet_pb2.RolloutSelector(sites=list(spec.selector.sites), tags=dict(spec.selector.tags)),
        strategy=fleet_pb2.RolloutStrategy(
            waves=[str(w) for w in spec.strategy.waves],
            bake_s=round(spec.strategy.bake_s),
            max_parallel=spec.strategy.max_parallel,
        ),
        gates=fleet_pb2.RolloutGates(
            max_failed_ratio=spec.gates.max_failed_ratio,
            inconclusive_limit=spec.gates.inconclusive_limit,
            manual_approval=spec.gates.manual_approval,
        ),
        on_abort=str(spec.on_abort),
        phase=phase_to_proto(state.phase),
        wave=state.wave,
        waves_total=spec.waves_total,
        message=state.message,
        created_at=timestamp(created_at),
        updated_at=timestamp(updated_at),
        forced=forced,
        admission=list(admission),
    )
    assigned = sorted(state.assigned.items(), key=lambda item: (item[1].wave, item[0]))
    pending = sorted(
        fact.device_id
        for fact in facts
        if fact.device_id not in state.assigned and spec.selector.matches(fact.site, fact.tags)
    )
    rows: list[tuple[str, Assignment | None]] = [*assigned, *((d, None) for d in pending)]
    for device_id, assignment in rows:
        fact = by_id.get(device_id)
        status = fleet_pb2.DeviceRolloutStatus(
            device_id=device_id,
            device_name=names.get(device_id, ""),
            site=fact.site if fact is not None else (assignment.site if assignment else ""),
            wave=assignment.wave if assignment else 0,
            status=device_status(spec, state, device_id, fact),
            update_state=update_state_value(fact.update_state if fact is not None else ""),
            previous_bundle_digest=(assignment.previous_bundle_digest or "") if assignment else "",
            assigned_at=timestamp(assignment.assigned_at if assignment else None),
            assignment_id=assignment.assignment_id if assignment else "",
            target_config_digest=(
                (assignment.config_digest if assignment else fact.target_config_digest if fact else None) or ""
            ),
        )
        verdict = verdicts.get(device_id)
        if verdict and assignment is not None:
            ParseDict(dict(verdict), status.verdict, ignore_unknown_fields=True)
        message.devices.append(status)
    return message
