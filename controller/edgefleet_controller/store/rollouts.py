"""The rollout tables: rollouts, queued operator commands, rollout history, the bundles unfinished rollouts
hold, hardware latency profiles, named leases, the canary failures recorded per bundle, and config
document revisions staged for config rollouts.

``RolloutStore`` sits next to ``Store`` on the same database and uses its write transactions
(``Database.transaction`` / ``DesiredStore.assign_in``), so a plan's new rollout state, the desired states it
changes, the commands it consumed and its events commit together or not at all.

Concurrency:

- Optimistic: every state write is ``UPDATE rollouts ... WHERE id = :id AND version = :read_version``; a
  writer that lost the race gets ``Conflict`` and nothing of its plan is stored (it re-plans from the
  newer state).
- Leadership: ``acquire_lease`` is one portable conditional ``UPDATE leases SET holder, expires_at WHERE
  name = :name AND (holder = :me OR expires_at <= :now)`` (plus an ``INSERT`` the first time). Exactly one
  caller can win an expired or free lease because the database serialises the two updates of one row
  (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: the row lock); the loser's ``UPDATE`` matches no row. The
  optimistic version check above is the fence behind the lease: a replica whose lease silently expired
  mid-pass still cannot overwrite a newer state.

Staged configs: one staged revision per config document (``stage_configs``), claimed by at most one rollout
(inside the rollout's insert transaction, so two rollouts cannot claim the same revision); restaging a
document claimed by an unfinished rollout is refused. Bundle failures are idempotent per (bundle, device,
assignment): a report or verdict seen twice is recorded once.

Time is always passed in; this module never reads the clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from edgefleet.contract.canonical import canonical_json_text
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.errors import Conflict, InvalidArgument, NotFound
from edgefleet_controller.store.records import ConfigDocInput, EventRecord
from edgefleet_controller.store.desired import UNSET
from edgefleet_controller.store.store import Store

#: Phases after which a rollout never acts again (``RolloutPhase`` stored values).
TERMINAL_PHASES = frozenset({"completed", "aborted", "rolled_back"})
COMMANDS = frozenset({"pause", "resume", "approve", "abort"})
PROFILE_SOURCES = frozenset({"canary", "profile"})
_IN_CHUNK = 500


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
class BundleFailure:
    """A device's failed canary (``kind`` "canary_fail") or rollback ("rolled_back") of a bundle, reported
    under ``assignment_id``; ``summary`` is the verdict's reasons or the rollback reason, truncated."""

    bundle_digest: str
    device_id: str
    device_name: str
    rollout_id: str | None
    assignment_id: str
    kind: str
    summary: str
    at: datetime


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


BUNDLE_FAILURE_KINDS = frozenset({"canary_fail", "rolled_back"})
SUMMARY_MAX = 500


def _rollout_row(row: Row[Any]) -> RolloutRow:
    return RolloutRow(
        id=row.id,
        name=row.name,
        bundle_digest=row.bundle_digest,
        spec=json.loads(row.spec_json),
        state=json.loads(row.state_json),
        phase=row.phase,
        created_at=row.created_at,
        updated_at=row.updated_at,
        version=row.version,
    )


def _staged_row(row: Row[Any]) -> StagedConfig:
    return StagedConfig(
        kind=row.kind,
        name=row.name,
        site=row.site,
        doc_json=row.doc_json,
        content_digest=row.content_digest,
        staged_by=row.staged_by,
        staged_at=row.staged_at,
        rollout_id=row.rollout_id,
    )


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


class RolloutStore:
    """Rollout persistence over a ``Store``'s database (same engine, same transactions)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._engine = store.db.engine

    def _read(self) -> Any:
        return self._engine.begin()

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
        with self._store.db.transaction() as conn:
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
        with self._read() as conn:
            row = conn.execute(sa.select(t.rollouts).where(t.rollouts.c.id == rollout_id)).one_or_none()
        if row is None:
            raise NotFound("rollout", rollout_id, "list rollouts to see the ids")
        return _rollout_row(row)

    def list_rollouts(self, phases: Collection[str] = ()) -> list[RolloutRow]:
        """Rollouts, oldest first; only those in ``phases`` when given."""
        query = sa.select(t.rollouts).order_by(t.rollouts.c.created_at, t.rollouts.c.id)
        if phases:
            query = query.where(t.rollouts.c.phase.in_(sorted(phases)))
        with self._read() as conn:
            return [_rollout_row(row) for row in conn.execute(query)]

    def unfinished(self) -> list[RolloutRow]:
        """Rollouts not in a terminal phase, oldest first: the reconciler's work list."""
        with self._read() as conn:
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
        with self._store.db.transaction() as conn:
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
                self._store.desired.assign_in(
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
            raise InvalidArgument(f"rollout command must be one of {', '.join(sorted(COMMANDS))}, got {command!r}")
        with self._store.db.transaction() as conn:
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
        with self._read() as conn:
            rows = conn.execute(
                sa.select(commands)
                .where(commands.c.rollout_id == rollout_id, commands.c.consumed_at.is_(None))
                .order_by(commands.c.id)
            )
            return [CommandRow(r.id, r.rollout_id, r.command, r.reason, r.requested_by, r.created_at) for r in rows]

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
        with self._read() as conn:
            return [
                RolloutEventRow(r.id, r.rollout_id, r.event, json.loads(r.fields_json), r.at)
                for r in conn.execute(query)
            ]

    def bundles_held(self, rollout_id: str) -> dict[str, str]:
        """Bundle digest → role ("target" / "previous") this rollout keeps from deletion."""
        refs = t.rollout_bundle_refs
        with self._read() as conn:
            rows = conn.execute(sa.select(refs.c.bundle_digest, refs.c.role).where(refs.c.rollout_id == rollout_id))
            return {digest: role for digest, role in rows}

    # ---- what the reconciler reads about devices -------------------------------------------------------

    def desired_rows(self, device_ids: Sequence[str]) -> dict[str, DesiredRow]:
        desired = t.desired_state
        out: dict[str, DesiredRow] = {}
        with self._read() as conn:
            for chunk in _chunks(sorted(set(device_ids))):
                rows = conn.execute(sa.select(desired).where(desired.c.device_id.in_(chunk)))
                for row in rows:
                    out[row.device_id] = DesiredRow(
                        row.bundle_digest, int(row.revision), row.assignment_id, row.rollout_id, row.config_digest
                    )
        return out

    def verdict_events(self, device_ids: Sequence[str], received_since: datetime) -> list[EventRecord]:
        """``canary_verdict`` events of these devices received at or after ``received_since``, oldest first."""
        events = t.device_events
        out: list[EventRecord] = []
        with self._read() as conn:
            for chunk in _chunks(sorted(set(device_ids))):
                rows = conn.execute(
                    sa.select(events)
                    .where(
                        events.c.kind == "canary_verdict",
                        events.c.device_id.in_(chunk),
                        events.c.received_at >= received_since,
                    )
                    .order_by(events.c.id)
                )
                out.extend(
                    EventRecord(r.id, r.device_id, r.kind, r.seq, json.loads(r.payload_json), r.at, r.received_at)
                    for r in rows
                )
        out.sort(key=lambda e: e.id)
        return out

    def known_bundles(self, digests: Collection[str]) -> set[str]:
        bundles = t.bundles
        found: set[str] = set()
        with self._read() as conn:
            for chunk in _chunks(sorted(set(digests))):
                found.update(conn.execute(sa.select(bundles.c.digest).where(bundles.c.digest.in_(chunk))).scalars())
        return found

    # ---- bundle failures -------------------------------------------------------------------------------

    def record_bundle_failure(self, failure: BundleFailure) -> bool:
        """Record a failed canary / rollback of a bundle; False when (bundle, device, assignment) is known."""
        if failure.kind not in BUNDLE_FAILURE_KINDS:
            raise InvalidArgument(
                f"bundle failure kind must be one of {sorted(BUNDLE_FAILURE_KINDS)}, got {failure.kind!r}"
            )
        if not failure.assignment_id:
            raise InvalidArgument("a bundle failure needs the assignment id it was reported under, got ''")
        if failure.at.tzinfo is None:
            raise InvalidArgument(f"bundle failure time must be an aware UTC datetime, got {failure.at!r}")
        failures = t.bundle_failures
        try:
            with self._store.db.transaction() as conn:
                known = conn.execute(
                    sa.select(failures.c.id).where(
                        failures.c.bundle_digest == failure.bundle_digest,
                        failures.c.device_id == failure.device_id,
                        failures.c.assignment_id == failure.assignment_id,
                    )
                ).first()
                if known is not None:
                    return False
                conn.execute(
                    failures.insert().values(
                        bundle_digest=failure.bundle_digest,
                        device_id=failure.device_id,
                        device_name=failure.device_name[:255],
                        rollout_id=failure.rollout_id,
                        assignment_id=failure.assignment_id[:128],
                        kind=failure.kind,
                        summary=failure.summary[:SUMMARY_MAX],
                        at=failure.at,
                    )
                )
        except IntegrityError:
            return False  # recorded concurrently by another replica
        return True

    def bundle_failures(self, digests: Collection[str]) -> list[BundleFailure]:
        """Recorded failures of these bundles, oldest first."""
        failures = t.bundle_failures
        out: list[BundleFailure] = []
        with self._read() as conn:
            for chunk in _chunks(sorted(set(digests))):
                rows = conn.execute(
                    sa.select(failures).where(failures.c.bundle_digest.in_(chunk)).order_by(failures.c.id)
                )
                out.extend(
                    BundleFailure(
                        r.bundle_digest,
                        r.device_id,
                        r.device_name,
                        r.rollout_id,
                        r.assignment_id,
                        r.kind,
                        r.summary,
                        r.at,
                    )
                    for r in rows
                )
        out.sort(key=lambda f: (f.at, f.device_id))
        return out

    # ---- staged configs --------------------------------------------------------------------------------

    def stage_configs(self, docs: Sequence[ConfigDocInput], staged_by: str, now: datetime) -> list[str]:
        """Store each document staged (replacing an unclaimed staged revision of it). Returns per document
        ``staged``, ``restaged`` or ``unchanged``. ``Conflict`` (nothing stored) when one is claimed by an
        unfinished rollout."""
        staged = t.staged_configs
        results: list[str] = []
        with self._store.db.transaction() as conn:
            for doc in docs:
                row = conn.execute(
                    sa.select(staged).where(staged.c.kind == doc.kind, staged.c.name == doc.name)
                ).one_or_none()
                if row is not None and row.rollout_id is not None:
                    phase = conn.execute(
                        sa.select(t.rollouts.c.phase).where(t.rollouts.c.id == row.rollout_id)
                    ).scalar_one_or_none()
                    if phase is not None and phase not in TERMINAL_PHASES:
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
        row = conn.execute(sa.select(staged).where(staged.c.kind == key[0], staged.c.name == key[1])).one_or_none()
        if row is None:
            raise Conflict(
                f"{key[0]}/{key[1]} has no staged revision; stage it with 'fleetctl apply --stage -f FILE' or apply "
                "it in the same 'fleetctl apply -f' as the Rollout"
            )
        if row.rollout_id is not None:
            phase = conn.execute(
                sa.select(t.rollouts.c.phase).where(t.rollouts.c.id == row.rollout_id)
            ).scalar_one_or_none()
            if phase is not None and phase not in TERMINAL_PHASES:
                raise Conflict(
                    f"{key[0]}/{key[1]}'s staged revision belongs to unfinished rollout {row.rollout_id} ({phase}); "
                    "one rollout per staged revision"
                )
        conn.execute(
            staged.update().where(staged.c.kind == key[0], staged.c.name == key[1]).values(rollout_id=rollout_id)
        )

    def staged_config(self, kind: str, name: str) -> StagedConfig | None:
        staged = t.staged_configs
        with self._read() as conn:
            row = conn.execute(sa.select(staged).where(staged.c.kind == kind, staged.c.name == name)).one_or_none()
        return _staged_row(row) if row is not None else None

    def staged_configs(self) -> list[StagedConfig]:
        staged = t.staged_configs
        with self._read() as conn:
            return [_staged_row(r) for r in conn.execute(sa.select(staged).order_by(staged.c.kind, staged.c.name))]

    def drop_staged(self, kind: str, name: str, rollout_id: str) -> bool:
        """Remove the staged revision ``rollout_id`` claimed (once promoted or discarded); False if gone."""
        staged = t.staged_configs
        with self._store.db.transaction() as conn:
            result = conn.execute(
                staged.delete().where(staged.c.kind == kind, staged.c.name == name, staged.c.rollout_id == rollout_id)
            )
        return bool(result.rowcount)

    # ---- hardware profiles -----------------------------------------------------------------------------

    def record_profile(
        self,
        *,
        hardware_class: str,
        bundle_digest: str,
        p95_ms: float,
        measured_at: datetime,
        p50_ms: float | None = None,
        source: str = "profile",
        device_id: str | None = None,
    ) -> None:
        """Record one latency measurement (pre + model + post) of a bundle on a hardware class."""
        if not isinstance(hardware_class, str) or not hardware_class.strip():
            raise InvalidArgument(f"hardware_class must be a non-empty string, got {hardware_class!r}")
        if source not in PROFILE_SOURCES:
            raise InvalidArgument(f"profile source must be 'canary' or 'profile', got {source!r}")
        for field, value in (("p95_ms", p95_ms), ("p50_ms", p50_ms)):
            if value is None and field == "p50_ms":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise InvalidArgument(f"profile {field} must be a finite number of milliseconds >= 0, got {value!r}")
        if measured_at.tzinfo is None:
            raise InvalidArgument(f"measured_at must be an aware UTC datetime, got {measured_at!r}")
        with self._store.db.transaction() as conn:
            conn.execute(
                t.hardware_profiles.insert().values(
                    hardware_class=hardware_class,
                    bundle_digest=bundle_digest,
                    p95_ms=float(p95_ms),
                    p50_ms=None if p50_ms is None else float(p50_ms),
                    source=source,
                    device_id=device_id,
                    measured_at=measured_at,
                )
            )

    def profiles_for(self, bundle_digest: str) -> dict[str, float]:
        """Hardware class → the p95 (ms) admission should use for ``bundle_digest``.

        Per class, the newest measurement of each (source, device) counts, and the class's value is the
        WORST of those: admission protects the slowest box of a class, not the average one.
        """
        profiles = t.hardware_profiles
        with self._read() as conn:
            rows = conn.execute(
                sa.select(profiles.c.hardware_class, profiles.c.source, profiles.c.device_id, profiles.c.p95_ms)
                .where(profiles.c.bundle_digest == bundle_digest)
                .order_by(profiles.c.measured_at, profiles.c.id)
            ).all()
        newest: dict[tuple[str, str, str | None], float] = {}
        for hardware_class, source, device_id, p95 in rows:
            newest[(hardware_class, source, device_id)] = float(p95)
        out: dict[str, float] = {}
        for (hardware_class, _, _), p95 in newest.items():
            out[hardware_class] = max(p95, out.get(hardware_class, 0.0))
        return out

    def list_profiles(
        self, bundle_digests: Sequence[str] | None = None, hardware_class: str | None = None
    ) -> list[dict[str, Any]]:
        """Per (bundle, hardware class): the worst of each (source, device)'s newest p95, the matching p50,
        how many measurements exist, and the newest measurement's source, device and time."""
        profiles = t.hardware_profiles
        query = sa.select(profiles).order_by(profiles.c.measured_at, profiles.c.id)
        if bundle_digests:
            query = query.where(profiles.c.bundle_digest.in_(list(bundle_digests)))
        if hardware_class:
            query = query.where(profiles.c.hardware_class == hardware_class)
        with self._read() as conn:
            rows = conn.execute(query).all()
        newest: dict[tuple[str, str], dict[tuple[str, str | None], Any]] = {}
        counts: dict[tuple[str, str], int] = {}
        latest: dict[tuple[str, str], Any] = {}
        for row in rows:
            key = (row.bundle_digest, row.hardware_class)
            newest.setdefault(key, {})[(row.source, row.device_id)] = row
            counts[key] = counts.get(key, 0) + 1
            latest[key] = row
        out = []
        for key, by_source in sorted(newest.items()):
            worst = max(by_source.values(), key=lambda r: float(r.p95_ms))
            out.append(
                {
                    "bundle_digest": key[0],
                    "hardware_class": key[1],
                    "p95_ms": float(worst.p95_ms),
                    "p50_ms": float(worst.p50_ms) if worst.p50_ms is not None else 0.0,
                    "samples": counts[key],
                    "source": latest[key].source,
                    "device_id": latest[key].device_id or "",
                    "measured_at": latest[key].measured_at,
                }
            )
        return out

    # ---- leases ----------------------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl_s: float, now: datetime) -> bool:
        """Take or renew lease ``name`` for ``holder`` until ``now + ttl_s``; False while another holder's
        lease has not expired."""
        leases = t.leases
        expires = now + timedelta(seconds=ttl_s)
        try:
            with self._store.db.transaction() as conn:
                result = conn.execute(
                    leases.update()
                    .where(leases.c.name == name, sa.or_(leases.c.holder == holder, leases.c.expires_at <= now))
                    .values(holder=holder, expires_at=expires)
                )
                if result.rowcount == 1:
                    return True
                if conn.execute(sa.select(leases.c.name).where(leases.c.name == name)).first() is not None:
                    return False
                conn.execute(leases.insert().values(name=name, holder=holder, expires_at=expires))
                return True
        except IntegrityError:
            # another replica inserted the first row concurrently: it holds the lease
            return False

    def release_lease(self, name: str, holder: str, now: datetime) -> None:
        """Give the lease up (only if ``holder`` holds it) so a successor need not wait for expiry."""
        leases = t.leases
        with self._store.db.transaction() as conn:
            conn.execute(leases.update().where(leases.c.name == name, leases.c.holder == holder).values(expires_at=now))

    def lease_holder(self, name: str, now: datetime) -> str | None:
        """Who holds lease ``name`` at ``now`` (None when free or expired)."""
        leases = t.leases
        with self._read() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.name == name)).one_or_none()
        if row is None or row.expires_at <= now:
            return None
        holder: str = row.holder
        return holder
