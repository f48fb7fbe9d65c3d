"""The rollout tables: rollouts, queued operator commands, rollout history, the bundles unfinished rollouts
hold, and config document revisions staged for config rollouts; plus what the reconciler reads about
devices (desired-state rows, verdict events, known bundles). Leases, bundle failures and hardware profiles
have their own modules (``leases``, ``bundle_failures``, ``hardware_profiles``).

``RolloutStore`` writes in one ``Database.transaction`` what a plan changes (its desired states through
``DesiredStore.assign_in`` on the same connection), so a plan's new rollout state, the desired states it
changes, the commands it consumed and its events commit together or not at all.

Concurrency: optimistic. Every state write is ``UPDATE rollouts ... WHERE id = :id AND version =
:read_version``; a writer that lost the race gets ``Conflict`` and nothing of its plan is stored (it
re-plans from the newer state). This version check is the fence behind the reconciler's lease
(``LeaseStore``): a replica whose lease silently expired mid-pass still cannot overwrite a newer state.

The one rule evaluated inside a write transaction is the caller's: ``insert(check=...)`` runs the
overlap check (``rollout.intake.refuse_overlap``) against the unfinished rollouts it reads in the same
transaction, because two creates must not both pass it and both commit. The store only reads and writes.

Staged configs: one staged revision per config document (``stage_configs``), claimed by at most one rollout
(inside the rollout's insert transaction, so two rollouts cannot claim the same revision); restaging a
document claimed by an unfinished rollout is refused.

Time is always passed in; this module never reads the clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from edgefleet.contract.canonical import canonical_json_text
from edgefleet.contract.shown import shown
from edgefleet_controller.rollout.model import COMMANDS, RolloutPhase
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.db import Database, in_chunks
from edgefleet_controller.store.desired import UNSET, DesiredStore
from edgefleet_controller.store.errors import Conflict, InvalidArgument, NotFound
from edgefleet_controller.store.events import event_record
from edgefleet_controller.store.records import ConfigDocInput, EventRecord, record_from_row

#: Phases after which a rollout never acts again (``RolloutPhase`` stored values).
TERMINAL_PHASES = frozenset(str(phase) for phase in RolloutPhase if phase.terminal)


@dataclass(frozen=True, slots=True)
class RolloutRow:
    """One stored rollout. ``spec`` and ``state`` are the JSON documents ``rollout.convert`` reads."""

    id: str
    name: str
    bundle_digest: str
    spec: Mapping[str, Any]
    state: Mapping[str, Any]
    phase: str
    created_at: datetime
    updated_at: datetime
    version: int

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


@dataclass(frozen=True, slots=True)
class CommandRow:
    id: int
    rollout_id: str
    command: str
    reason: str
    requested_by: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RolloutEventRow:
    id: int
    rollout_id: str
    event: str
    fields: Mapping[str, Any]
    at: datetime


@dataclass(frozen=True, slots=True)
class DesiredChange:
    """Desired bundle for ``device_ids`` (None clears it; ``keep_bundle`` leaves it as it is); the config is
    left as it is unless given. ``assignment_ids`` names each device's new assignment (device id → id);
    devices without one get an id minted by the store."""

    device_ids: tuple[str, ...]
    bundle_digest: str | None
    reason: str
    config_digest: str | None = None
    assignment_ids: Mapping[str, str] | None = None
    keep_bundle: bool = False


@dataclass(frozen=True, slots=True)
class DesiredRow:
    bundle_digest: str | None
    revision: int
    assignment_id: str | None = None
    rollout_id: str | None = None
    config_digest: str | None = None


@dataclass(frozen=True, slots=True)
class StagedConfig:
    """A config document revision stored staged (not live); ``rollout_id`` is the rollout that claimed it."""

    kind: str
    name: str
    site: str | None
    doc_json: str
    content_digest: str
    staged_by: str
    staged_at: datetime
    rollout_id: str | None

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


def _rollout_row(row: Row[Any]) -> RolloutRow:
    return record_from_row(RolloutRow, row, spec=json.loads(row.spec_json), state=json.loads(row.state_json))


def _staged_in(conn: Connection, kind: str, name: str) -> Row[Any] | None:
    staged = t.staged_configs
    return conn.execute(sa.select(staged).where(staged.c.kind == kind, staged.c.name == name)).one_or_none()


def _unfinished_phase(conn: Connection, rollout_id: str | None) -> str | None:
    """The phase of rollout ``rollout_id`` (a staged revision's claimer) while it is unfinished; None when no
    rollout is named, it is gone, or it reached a terminal phase (the claim no longer holds)."""
    if rollout_id is None:
        return None
    phase: str | None = conn.execute(
        sa.select(t.rollouts.c.phase).where(t.rollouts.c.id == rollout_id)
    ).scalar_one_or_none()
    return phase if phase is not None and phase not in TERMINAL_PHASES else None


class RolloutStore:
    """Rollout persistence over the controller's ``Database``; desired-state changes through ``DesiredStore``
    in the same transaction."""

    def __init__(self, db: Database, desired: DesiredStore) -> None:
        self._db = db
        self._desired = desired

    # ---- rollouts --------------------------------------------------------------------------------------

    def insert(
        self,
        *,
        rollout_id: str,
        name: str,
        bundle_digest: str,
        spec: Mapping[str, Any],
        state: Mapping[str, Any],
        phase: str,
        now: datetime,
        check: Callable[[Sequence[RolloutRow]], None] | None = None,
        claim_config: tuple[str, str] | None = None,
    ) -> RolloutRow:
        """Store a new rollout (version 1) holding its target bundle, with a ``rollout.created`` event.

        ``check`` sees every unfinished rollout inside the same write transaction and may raise to refuse
        (the overlap check: two creates cannot both pass it and both commit). ``claim_config`` (kind, name)
        claims that staged config document for this rollout in the same transaction; ``Conflict`` when it
        is not staged or another rollout holds it.
        """
        with self._db.transaction() as conn:
            if check is not None:
                check(self._unfinished(conn))
            if conn.execute(sa.select(t.rollouts.c.id).where(t.rollouts.c.id == rollout_id)).first() is not None:
                raise Conflict(f"rollout {rollout_id} already exists; rollout ids are never reused")
            if claim_config is not None:
                self._claim(conn, claim_config, rollout_id)
            conn.execute(
                t.rollouts.insert().values(
                    id=rollout_id,
                    name=name,
                    bundle_digest=bundle_digest,
                    spec_json=canonical_json_text(spec),
                    state_json=canonical_json_text(state),
                    phase=phase,
                    created_at=now,
                    updated_at=now,
                    version=1,
                )
            )
            if bundle_digest:
                conn.execute(
                    t.rollout_bundle_refs.insert().values(
                        rollout_id=rollout_id, bundle_digest=bundle_digest, role="target"
                    )
                )
            self._events(conn, rollout_id, [("rollout.created", {"name": name, "bundle": bundle_digest})], now)
            row = conn.execute(sa.select(t.rollouts).where(t.rollouts.c.id == rollout_id)).one()
        return _rollout_row(row)

    def get(self, rollout_id: str) -> RolloutRow:
        query = sa.select(t.rollouts).where(t.rollouts.c.id == rollout_id)
        return _rollout_row(self._db.read_one(query, "rollout", rollout_id, "list rollouts to see the ids"))

    def list_rollouts(self, phases: Collection[str] = ()) -> list[RolloutRow]:
        """Rollouts, oldest first; only those in ``phases`` when given."""
        query = sa.select(t.rollouts).order_by(t.rollouts.c.created_at, t.rollouts.c.id)
        if phases:
            query = query.where(t.rollouts.c.phase.in_(sorted(phases)))
        with self._db.read() as conn:
            return [_rollout_row(row) for row in conn.execute(query)]

    def unfinished(self) -> list[RolloutRow]:
        """Rollouts not in a terminal phase, oldest first: the reconciler's work list."""
        with self._db.read() as conn:
            return self._unfinished(conn)

    def _unfinished(self, conn: Connection) -> list[RolloutRow]:
        rows = conn.execute(
            sa.select(t.rollouts)
            .where(t.rollouts.c.phase.not_in(sorted(TERMINAL_PHASES)))
            .order_by(t.rollouts.c.created_at, t.rollouts.c.id)
        )
        return [_rollout_row(row) for row in rows]

    def persist_plan(
        self,
        rollout_id: str,
        *,
        read_version: int,
        state: Mapping[str, Any],
        phase: str,
        now: datetime,
        changes: Sequence[DesiredChange] = (),
        consumed_commands: Sequence[int] = (),
        events: Sequence[tuple[str, Mapping[str, Any]]] = (),
        previous_bundles: Collection[str] = (),
    ) -> int:
        """Store a plan in ONE transaction: the new state (if the rollout is still at ``read_version``),
        its desired-state changes, the commands it consumed, its events, and the bundles it holds
        (``previous_bundles`` to send devices back to; all released once ``phase`` is terminal).

        Returns the new version. Raises ``Conflict`` when another writer moved the rollout first; then
        nothing is stored.
        """
        rollouts = t.rollouts
        with self._db.transaction() as conn:
            result = conn.execute(
                rollouts.update()
                .where(rollouts.c.id == rollout_id, rollouts.c.version == read_version)
                .values(state_json=canonical_json_text(state), phase=phase, updated_at=now, version=read_version + 1)
            )
            if result.rowcount != 1:
                raise Conflict(
                    f"rollout {rollout_id} changed since version {read_version} was read; re-plan from the stored state"
                )
            for change in changes:
                self._desired.assign_in(
                    conn,
                    change.device_ids,
                    bundle_digest=UNSET if change.keep_bundle else change.bundle_digest,
                    config_digest=change.config_digest if change.config_digest is not None else UNSET,
                    reason=change.reason,
                    now=now,
                    rollout_id=rollout_id,
                    assignment_ids=change.assignment_ids,
                )
            if consumed_commands:
                commands = t.rollout_commands
                conn.execute(
                    commands.update()
                    .where(commands.c.id.in_(list(consumed_commands)), commands.c.consumed_at.is_(None))
                    .values(consumed_at=now)
                )
            self._events(conn, rollout_id, events, now)
            refs = t.rollout_bundle_refs
            if phase in TERMINAL_PHASES:
                conn.execute(refs.delete().where(refs.c.rollout_id == rollout_id))
            else:
                held = set(
                    conn.execute(sa.select(refs.c.bundle_digest).where(refs.c.rollout_id == rollout_id)).scalars()
                )
                fresh = sorted(set(previous_bundles) - held)
                if fresh:
                    conn.execute(
                        refs.insert(),
                        [{"rollout_id": rollout_id, "bundle_digest": d, "role": "previous"} for d in fresh],
                    )
        return read_version + 1

    # ---- commands and events ---------------------------------------------------------------------------

    def enqueue_command(
        self, rollout_id: str, command: str, reason: str, now: datetime, requested_by: str | None = None
    ) -> int:
        """Queue an operator command for the reconciler; returns its id."""
        if command not in COMMANDS:
            raise InvalidArgument(f"rollout command must be one of {', '.join(sorted(COMMANDS))}, got {shown(command)}")
        with self._db.transaction() as conn:
            if conn.execute(sa.select(t.rollouts.c.id).where(t.rollouts.c.id == rollout_id)).first() is None:
                raise NotFound("rollout", rollout_id, "list rollouts to see the ids")
            inserted = conn.execute(
                t.rollout_commands.insert().values(
                    rollout_id=rollout_id,
                    command=command,
                    reason=reason,
                    requested_by=requested_by,
                    created_at=now,
                    consumed_at=None,
                )
            ).inserted_primary_key
            self._events(
                conn, rollout_id, [(f"rollout.{command}_requested", {"reason": reason, "by": requested_by})], now
            )
        assert inserted is not None
        return int(inserted[0])

    def pending_commands(self, rollout_id: str) -> list[CommandRow]:
        commands = t.rollout_commands
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(commands)
                .where(commands.c.rollout_id == rollout_id, commands.c.consumed_at.is_(None))
                .order_by(commands.c.id)
            )
            return [record_from_row(CommandRow, r) for r in rows]

    def _events(
        self, conn: Connection, rollout_id: str, events: Sequence[tuple[str, Mapping[str, Any]]], now: datetime
    ) -> None:
        if events:
            conn.execute(
                t.rollout_events.insert(),
                [
                    {
                        "rollout_id": rollout_id,
                        "event": name,
                        "fields_json": canonical_json_text(dict(fields)),
                        "at": now,
                    }
                    for name, fields in events
                ],
            )

    def events(self, rollout_id: str, after_id: int | None = None, limit: int = 1000) -> list[RolloutEventRow]:
        """A rollout's history, oldest first."""
        events = t.rollout_events
        query = sa.select(events).where(events.c.rollout_id == rollout_id).order_by(events.c.id).limit(limit)
        if after_id is not None:
            query = query.where(events.c.id > after_id)
        with self._db.read() as conn:
            rows = conn.execute(query)
            return [record_from_row(RolloutEventRow, r, fields=json.loads(r.fields_json)) for r in rows]

    def bundles_held(self, rollout_id: str) -> dict[str, str]:
        """Bundle digest → role ("target" / "previous") this rollout keeps from deletion."""
        refs = t.rollout_bundle_refs
        with self._db.read() as conn:
            rows = conn.execute(sa.select(refs.c.bundle_digest, refs.c.role).where(refs.c.rollout_id == rollout_id))
            return {digest: role for digest, role in rows}

    # ---- what the reconciler reads about devices -------------------------------------------------------

    def desired_rows(self, device_ids: Sequence[str]) -> dict[str, DesiredRow]:
        desired = t.desired_state
        out: dict[str, DesiredRow] = {}
        with self._db.read() as conn:
            for chunk in in_chunks(sorted(set(device_ids))):
                rows = conn.execute(sa.select(desired).where(desired.c.device_id.in_(chunk)))
                for row in rows:
                    out[row.device_id] = record_from_row(DesiredRow, row, revision=int(row.revision))
        return out

    def verdict_events(self, device_ids: Sequence[str], received_since: datetime) -> list[EventRecord]:
        """``canary_verdict`` events of these devices received at or after ``received_since``, oldest first."""
        events = t.device_events
        out: list[EventRecord] = []
        with self._db.read() as conn:
            for chunk in in_chunks(sorted(set(device_ids))):
                rows = conn.execute(
                    sa.select(events)
                    .where(
                        events.c.kind == "canary_verdict",
                        events.c.device_id.in_(chunk),
                        events.c.received_at >= received_since,
                    )
                    .order_by(events.c.id)
                )
                out.extend(event_record(r) for r in rows)
        out.sort(key=lambda e: e.id)
        return out

    def known_bundles(self, digests: Collection[str]) -> set[str]:
        bundles = t.bundles
        found: set[str] = set()
        with self._db.read() as conn:
            for chunk in in_chunks(sorted(set(digests))):
                found.update(conn.execute(sa.select(bundles.c.digest).where(bundles.c.digest.in_(chunk))).scalars())
        return found

    # ---- staged configs --------------------------------------------------------------------------------

    def stage_configs(self, docs: Sequence[ConfigDocInput], staged_by: str, now: datetime) -> list[str]:
        """Store each document staged (replacing an unclaimed staged revision of it). Returns per document
        ``staged``, ``restaged`` or ``unchanged``. ``Conflict`` (nothing stored) when one is claimed by an
        unfinished rollout."""
        staged = t.staged_configs
        results: list[str] = []
        with self._db.transaction() as conn:
            for doc in docs:
                row = _staged_in(conn, doc.kind, doc.name)
                phase = _unfinished_phase(conn, row.rollout_id) if row is not None else None
                if row is not None and phase is not None:
                    raise Conflict(
                        f"{doc.kind}/{doc.name} is staged for unfinished rollout {row.rollout_id} ({phase}); "
                        "wait for it to finish or abort it before staging another revision"
                    )
                if row is not None and row.content_digest == doc.content_digest and row.rollout_id is None:
                    results.append("unchanged")
                    continue
                values = {
                    "site": doc.site,
                    "doc_json": doc.doc_json,
                    "content_digest": doc.content_digest,
                    "staged_by": staged_by,
                    "staged_at": now,
                    "rollout_id": None,
                }
                if row is None:
                    conn.execute(staged.insert().values(kind=doc.kind, name=doc.name, **values))
                    results.append("staged")
                else:
                    conn.execute(
                        staged.update().where(staged.c.kind == doc.kind, staged.c.name == doc.name).values(**values)
                    )
                    results.append("restaged")
        return results

    def _claim(self, conn: Connection, key: tuple[str, str], rollout_id: str) -> None:
        staged = t.staged_configs
        row = _staged_in(conn, *key)
        if row is None:
            raise Conflict(
                f"{key[0]}/{key[1]} has no staged revision; stage it with 'fleetctl apply --stage -f FILE' or apply "
                "it in the same 'fleetctl apply -f' as the Rollout"
            )
        phase = _unfinished_phase(conn, row.rollout_id)
        if phase is not None:
            raise Conflict(
                f"{key[0]}/{key[1]}'s staged revision belongs to unfinished rollout {row.rollout_id} ({phase}); "
                "one rollout per staged revision"
            )
        conn.execute(
            staged.update().where(staged.c.kind == key[0], staged.c.name == key[1]).values(rollout_id=rollout_id)
        )

    def staged_config(self, kind: str, name: str) -> StagedConfig | None:
        with self._db.read() as conn:
            row = _staged_in(conn, kind, name)
        return record_from_row(StagedConfig, row) if row is not None else None

    def staged_configs(self) -> list[StagedConfig]:
        staged = t.staged_configs
        with self._db.read() as conn:
            return [
                record_from_row(StagedConfig, r)
                for r in conn.execute(sa.select(staged).order_by(staged.c.kind, staged.c.name))
            ]

    def drop_staged(self, kind: str, name: str, rollout_id: str) -> bool:
        """Remove the staged revision ``rollout_id`` claimed (once promoted or discarded); False if gone."""
        staged = t.staged_configs
        with self._db.transaction() as conn:
            result = conn.execute(
                staged.delete().where(staged.c.kind == kind, staged.c.name == name, staged.c.rollout_id == rollout_id)
            )
        return bool(result.rowcount)
