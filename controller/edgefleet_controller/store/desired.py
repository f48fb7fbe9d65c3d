"""What each device should run: its desired state (bundle and config digests, a per-device revision and
the assignment id of the decision behind it) and the store-wide change counter a long-poll hub watches.

``assign_in`` runs inside the caller's write transaction, so a rollout plan and the desired states it
changes commit together (``RolloutStore``); ``assign`` is the same in a transaction of its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any, Final, Required, TypedDict, Unpack

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from edgefleet_controller.store import schema as t
from edgefleet_controller.store.arguments import check_digest_field, check_now, check_text
from edgefleet_controller.store.db import AggregateStore, in_chunks
from edgefleet_controller.store.errors import InvalidArgument, NotFound
from edgefleet_controller.store.records import DesiredState, record_from_row


class _Unset(Enum):
    UNSET = "unset"


UNSET: Final = _Unset.UNSET
"""Marks an ``assign`` field the caller leaves as it is (``None`` clears it)."""


class DesiredChange(TypedDict, total=False):
    """The keyword arguments of ``assign`` / ``assign_in``: what changes, why and when."""

    bundle_digest: str | _Unset | None
    config_digest: str | _Unset | None
    reason: Required[str]
    now: Required[datetime]
    rollout_id: str | None
    assignment_ids: Mapping[str, str] | None
    reassign: bool


def new_assignment_id() -> str:
    """A fresh, opaque assignment id for a desired-state change the caller did not name."""
    return f"asg_{secrets.token_hex(8)}"


def desired_record(row: Row[Any]) -> DesiredState:
    return record_from_row(DesiredState, row)


def insert_initial_in(conn: Connection, device_id: str, now: datetime) -> None:
    """The desired state of a device just enrolled: nothing assigned yet (revision 0)."""
    conn.execute(
        t.desired_state.insert().values(
            device_id=device_id,
            bundle_digest=None,
            config_digest=None,
            revision=0,
            change_seq=0,
            updated_at=now,
            reason="enrolled",
            rollout_id=None,
        )
    )


def read_in(conn: Connection, device_id: str) -> DesiredState | None:
    """The device's desired state as ``conn`` sees it (None: no such device)."""
    row = conn.execute(sa.select(t.desired_state).where(t.desired_state.c.device_id == device_id)).one_or_none()
    return None if row is None else desired_record(row)


def _bump_counter(conn: Connection, name: str) -> int:
    counters = t.change_counters
    # UPDATE first: on PostgreSQL the row lock serialises concurrent bumps across replicas
    conn.execute(counters.update().where(counters.c.name == name).values(value=counters.c.value + 1))
    value: int = conn.execute(sa.select(counters.c.value).where(counters.c.name == name)).scalar_one()
    return value


class DesiredStore(AggregateStore):
    """Desired states and their change feed."""

    def assign(self, device_ids: Sequence[str], **change: Unpack[DesiredChange]) -> dict[str, int]:
        """Set what the devices should run; fields left ``UNSET`` stay as they are, ``None`` clears.

        Only devices whose bundle or config actually changes get a new revision (and the store-wide
        change counter moves once for the whole call); returns every device's resulting revision.
        Unknown devices or bundles fail the whole call.

        Every change carries a new assignment id (``DesiredState.assignment_id``): the caller's, from
        ``assignment_ids`` (device id → id; a device named there always changes, even to the same target:
        a new assignment is a new decision the device acts on), else one minted here. ``reassign`` gives
        every device a fresh assignment even where nothing else changes (an operator retrying a bundle).
        """
        with self._db.transaction() as conn:
            return self.assign_in(conn, device_ids, **change)

    def assign_in(
        self,
        conn: Connection,
        device_ids: Sequence[str],
        *,
        bundle_digest: str | _Unset | None = UNSET,
        config_digest: str | _Unset | None = UNSET,
        reason: str,
        now: datetime,
        rollout_id: str | None = None,
        assignment_ids: Mapping[str, str] | None = None,
        reassign: bool = False,
    ) -> dict[str, int]:
        """``assign`` inside the caller's write transaction ``conn`` (``Database.transaction``)."""
        check_now(now)
        check_text("reason", reason, 4096)
        given = dict(assignment_ids or {})
        for device_id, assignment_id in given.items():
            check_text(f"assignment_id of {device_id}", assignment_id, 128)
        if bundle_digest is UNSET and config_digest is UNSET and not given and not reassign:
            raise InvalidArgument("a desired-state change needs bundle_digest and/or config_digest; nothing to change")
        if isinstance(bundle_digest, str):
            check_digest_field("desired bundle_digest", bundle_digest)
        if isinstance(config_digest, str):
            check_digest_field("desired config_digest", config_digest)
        if rollout_id is not None:
            check_text("rollout_id", rollout_id, 64)
        ids = sorted(set(device_ids))
        desired = t.desired_state
        if (
            isinstance(bundle_digest, str)
            and conn.execute(sa.select(t.bundles.c.digest).where(t.bundles.c.digest == bundle_digest)).first() is None
        ):
            raise NotFound("bundle", bundle_digest, "publish the bundle before assigning it")
        rows: dict[str, Row[Any]] = {}
        for chunk in in_chunks(ids):
            for row in conn.execute(sa.select(desired).where(desired.c.device_id.in_(chunk)).with_for_update()):
                rows[row.device_id] = row
        missing = [device_id for device_id in ids if device_id not in rows]
        if missing:
            raise NotFound("device", missing[0], f"{len(missing)} of the given devices are not enrolled")
        revisions = {device_id: int(row.revision) for device_id, row in rows.items()}
        changed = [
            row
            for row in rows.values()
            if reassign
            or row.device_id in given
            or (bundle_digest is not UNSET and row.bundle_digest != bundle_digest)
            or (config_digest is not UNSET and row.config_digest != config_digest)
        ]
        if changed:
            seq = _bump_counter(conn, t.DESIRED_STATE_COUNTER)
            values: dict[str, Any] = {}
            if bundle_digest is not UNSET:
                values["bundle_digest"] = bundle_digest
            if config_digest is not UNSET:
                values["config_digest"] = config_digest
            statement = (
                desired.update()
                .where(desired.c.device_id == sa.bindparam("b_device_id"))
                .values(
                    revision=sa.bindparam("b_revision"),
                    change_seq=seq,
                    updated_at=now,
                    reason=reason,
                    rollout_id=rollout_id,
                    assignment_id=sa.bindparam("b_assignment_id"),
                    **values,
                )
            )
            conn.execute(
                statement,
                [
                    {
                        "b_device_id": row.device_id,
                        "b_revision": row.revision + 1,
                        "b_assignment_id": given.get(row.device_id) or new_assignment_id(),
                    }
                    for row in changed
                ],
            )
            for row in changed:
                revisions[row.device_id] = int(row.revision) + 1
        return revisions

    def redeliver_artifacts(self, artifact_digests: Sequence[str]) -> list[str]:
        """Give every device whose desired bundle declares one of ``artifact_digests`` a new revision, its
        target, assignment, rollout and reason unchanged, so its next Sync hands it the same desired state
        again (the artifacts were restored after a quarantine refused them); returns those devices."""
        if not artifact_digests:
            return []
        desired, ba = t.desired_state, t.bundle_artifacts
        declaring = sa.select(ba.c.bundle_digest).where(ba.c.artifact_digest.in_(list(artifact_digests)))
        with self._db.transaction() as conn:
            ids = sorted(
                conn.execute(sa.select(desired.c.device_id).where(desired.c.bundle_digest.in_(declaring))).scalars()
            )
            if ids:
                seq = _bump_counter(conn, t.DESIRED_STATE_COUNTER)
                conn.execute(
                    desired.update()
                    .where(desired.c.bundle_digest.in_(declaring))
                    .values(revision=desired.c.revision + 1, change_seq=seq)
                )
        return ids

    def get(self, device_id: str) -> DesiredState:
        with self._db.read() as conn:
            found = read_in(conn, device_id)
        if found is None:
            raise NotFound("device", device_id, "list devices to see the enrolled ids")
        return found

    def get_many(self, device_ids: Sequence[str]) -> dict[str, DesiredState]:
        """Desired state of several devices in one read (unknown ids are absent from the result)."""
        found: dict[str, DesiredState] = {}
        with self._db.read() as conn:
            for chunk in in_chunks(list(dict.fromkeys(device_ids))):
                rows = conn.execute(sa.select(t.desired_state).where(t.desired_state.c.device_id.in_(chunk))).all()
                found.update((row.device_id, desired_record(row)) for row in rows)
        return found

    def change_counter(self) -> int:
        """The store-wide desired-state change counter: it moves on every ``assign`` that changed
        something, so a long-poll hub (on any replica) can poll this one integer."""
        counters = t.change_counters
        with self._db.read() as conn:
            value: int = conn.execute(
                sa.select(counters.c.value).where(counters.c.name == t.DESIRED_STATE_COUNTER)
            ).scalar_one()
        return value

    def changes_since(self, change_seq: int) -> list[DesiredState]:
        """Desired states changed after counter value ``change_seq``, oldest change first."""
        desired = t.desired_state
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(desired)
                .where(desired.c.change_seq > change_seq)
                .order_by(desired.c.change_seq, desired.c.device_id)
            )
            return [desired_record(row) for row in rows]
