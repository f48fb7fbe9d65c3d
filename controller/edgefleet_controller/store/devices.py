"""The enrolled devices: enrollment (consuming a token), device credentials, tags, the reported state each
device sends (with the bundle references it holds) and per-site summaries.

A device's tags are kept as JSON on its row and mirrored in ``device_tags`` for ``key=value`` filters; the
bundles it reports running or holding in a slot are indexed in ``device_bundle_refs`` so that a bundle in
use is never deleted under it (``BundleStore.delete``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Row

from edgefleet.contract.canonical import canonical_json_text
from edgefleet.contract.shown import shown
from edgefleet_controller.store import credentials
from edgefleet_controller.store import desired as desired_states
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.arguments import (
    check_digest_field,
    check_json,
    check_now,
    check_page_size,
    check_tags,
    check_text,
)
from edgefleet_controller.store.auth import consume_enrollment_in
from edgefleet_controller.store.db import AggregateStore
from edgefleet_controller.store.errors import DeviceNameTaken, InvalidArgument, InvalidPageToken, NotFound
from edgefleet_controller.store.records import (
    DISABLED_HEALTH,
    OFFLINE_HEALTH,
    REPORTED_HEALTH,
    REPORTED_RUNNING_BUNDLE,
    REPORTED_SLOT_BUNDLE,
    REPORTED_SLOTS,
    UNKNOWN_HEALTH,
    DesiredState,
    DeviceRecord,
    SiteSummary,
    record_from_row,
)

log = structlog.get_logger(__name__)


def _device_record(row: Row[Any]) -> DeviceRecord:
    return record_from_row(
        DeviceRecord,
        row,
        tags=json.loads(row.tags_json),
        facts=json.loads(row.facts_json),
        reported=json.loads(row.reported_json),
    )


def _insert_tags(conn: Connection, device_id: str, tags: Mapping[str, str]) -> None:
    if tags:
        conn.execute(
            t.device_tags.insert(),
            [{"device_id": device_id, "key": k, "value": v} for k, v in tags.items()],
        )


def _parse_tag_filter(tag: str) -> tuple[str, str]:
    key, eq, value = tag.partition("=") if isinstance(tag, str) else ("", "", "")
    if not eq or not key:
        raise InvalidArgument(f"tag filter must be 'key=value', got {shown(tag)}")
    return key, value


def _encode_page_token(after_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"v": 1, "after": after_id}).encode()).decode().rstrip("=")


def page_token_after(device_id: str) -> str:
    """The token of the page that starts after ``device_id`` (a page cut short by its caller resumes there)."""
    return _encode_page_token(device_id)


def _decode_page_token(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidPageToken(token) from None
    if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("after"), str):
        raise InvalidPageToken(token)
    after: str = data["after"]
    return after


def _match(
    site: str | None,
    name: str | None,
    tags: Sequence[str],
    bundle: str | None,
    health: str | None,
    seen_since: datetime | None,
    offline_before: datetime | None,
) -> list[sa.ColumnElement[bool]]:
    """The WHERE conditions of a device listing (every filter in SQL, so pages are full and counts exact).

    Without ``offline_before`` ``health`` is the stored (reported) health. With it, ``health`` is the health
    operators see: ``offline`` for a device not seen since ``offline_before`` (or never, or reporting
    offline), the reported health for the others. Either way ``disabled`` is the disabled devices, and
    every other health only devices that are not disabled (disabled is shown over any health)."""
    devices = t.devices
    where: list[sa.ColumnElement[bool]] = []
    if site is not None:
        where.append(devices.c.site == site)
    if name is not None:
        where.append(devices.c.name == name)
    for tag in tags:
        key, value = _parse_tag_filter(tag)
        dt = t.device_tags
        where.append(sa.exists().where(dt.c.device_id == devices.c.id, dt.c.key == key, dt.c.value == value))
    if bundle is not None:
        where.append(devices.c.running_bundle == check_digest_field("bundle filter", bundle))
    if health == DISABLED_HEALTH:
        where.append(devices.c.disabled_at.is_not(None))
    elif health is not None and offline_before is None:
        where += [devices.c.disabled_at.is_(None), devices.c.health == health]
    elif health is not None and offline_before is not None:
        check_now(offline_before)
        where.append(devices.c.disabled_at.is_(None))
        seen = devices.c.last_seen
        if health == OFFLINE_HEALTH:
            where.append(sa.or_(seen.is_(None), seen < offline_before, devices.c.health == OFFLINE_HEALTH))
        else:
            where += [devices.c.health == health, seen >= offline_before]
    if seen_since is not None:
        check_now(seen_since)
        where.append(devices.c.last_seen >= seen_since)
    return where


def _reported_bundle_refs(reported: Mapping[str, Any]) -> tuple[str | None, str, dict[str, str]]:
    """The indexed facts of a reported-state document: running digest, health, and every held bundle
    (``running`` and ``slot:<name>`` → digest)."""
    running = reported.get(REPORTED_RUNNING_BUNDLE)
    if running is not None:
        running = check_digest_field(f"reported {REPORTED_RUNNING_BUNDLE!r}", running)
    health = reported.get(REPORTED_HEALTH, UNKNOWN_HEALTH)
    if health is None:
        health = UNKNOWN_HEALTH
    check_text(f"reported {REPORTED_HEALTH!r}", health, 64)
    refs = {"running": running} if running is not None else {}
    slots = reported.get(REPORTED_SLOTS) or {}
    if not isinstance(slots, Mapping):
        raise InvalidArgument(f"reported {REPORTED_SLOTS!r} must map slot names to slot states, got {shown(slots)}")
    for slot_name, slot in slots.items():
        slot_bundle = slot.get(REPORTED_SLOT_BUNDLE) if isinstance(slot, Mapping) else None
        if slot_bundle is not None:
            refs[f"slot:{slot_name}"] = check_digest_field(f"reported slot {shown(slot_name)} bundle", slot_bundle)
    return running, health, refs


class DeviceStore(AggregateStore):
    """Devices, their credentials, tags and reported state."""

    def enroll(
        self,
        token_secret: str,
        name: str,
        hardware_class: str,
        facts: Mapping[str, Any],
        tags: Mapping[str, str],
        now: datetime,
    ) -> tuple[DeviceRecord, str]:
        """Consume one use of the enrollment token and create the device in the token's site, in one
        transaction. Returns the device and its credential secret (shown once; only its hash is kept).

        Names are unique per site (``DeviceNameTaken`` when an existing device of the site has ``name``; the
        transaction rolls back, so the token use is not consumed); a deleted device's name is free again."""
        check_now(now)
        check_text("device name", name)
        check_text("hardware_class", hardware_class)
        if not isinstance(facts, Mapping):
            raise InvalidArgument(f"hardware facts must be a mapping, got {shown(facts)}")
        facts_json = check_json("hardware facts", facts)
        checked_tags = check_tags(tags)
        device_id = credentials.new_device_id()
        credential = credentials.mint_secret(credentials.DEVICE_CREDENTIAL_PREFIX, device_id)
        with self._db.transaction() as conn:
            token = consume_enrollment_in(conn, token_secret, now)
            holder = conn.execute(
                sa.select(t.devices.c.id).where(t.devices.c.site == token.site, t.devices.c.name == name)
            ).scalar_one_or_none()
            if holder is not None:
                raise DeviceNameTaken(token.site, name, holder)
            conn.execute(
                t.devices.insert().values(
                    id=device_id,
                    name=name,
                    site=token.site,
                    tags_json=canonical_json_text(checked_tags),
                    hardware_class=hardware_class,
                    facts_json=facts_json,
                    credential_sha256=credentials.secret_hash(credential),
                    enrollment_token_id=token.id,
                    enrolled_at=now,
                    last_seen=now,
                    reported_json="{}",
                    running_bundle=None,
                    health=UNKNOWN_HEALTH,
                )
            )
            _insert_tags(conn, device_id, checked_tags)
            desired_states.insert_initial_in(conn, device_id, now)
            row = conn.execute(sa.select(t.devices).where(t.devices.c.id == device_id)).one()
        log.info("store.device_enrolled", device_id=device_id, site=token.site, token_id=token.id)
        return _device_record(row), credential

    def get(self, device_id: str) -> DeviceRecord:
        query = sa.select(t.devices).where(t.devices.c.id == device_id)
        return _device_record(self._db.read_one(query, "device", device_id, "list devices to see the enrolled ids"))

    def set_tags(self, device_id: str, tags: Mapping[str, str]) -> DeviceRecord:
        """Replace the device's tags (operators re-tag devices to target rollouts and config layers)."""
        checked = check_tags(tags)
        devices = t.devices
        with self._db.transaction() as conn:
            result = conn.execute(
                devices.update().where(devices.c.id == device_id).values(tags_json=canonical_json_text(checked))
            )
            if result.rowcount != 1:
                raise NotFound("device", device_id, "list devices to see the enrolled ids")
            conn.execute(t.device_tags.delete().where(t.device_tags.c.device_id == device_id))
            _insert_tags(conn, device_id, checked)
            row = conn.execute(sa.select(devices).where(devices.c.id == device_id)).one()
        return _device_record(row)

    def page(
        self,
        *,
        site: str | None = None,
        tag: str | None = None,
        tags: Sequence[str] = (),
        bundle: str | None = None,
        health: str | None = None,
        seen_since: datetime | None = None,
        offline_before: datetime | None = None,
        page_size: int = 100,
        page_token: str | None = None,
        name: str | None = None,
    ) -> tuple[list[DeviceRecord], str | None]:
        """One page of devices matching every given filter, ordered by id (keyset: a device enrolled between
        pages is neither skipped nor repeated); the second value is the token of the next page (None on the
        last page). ``tag``/``tags`` are ``key=value`` (all must match); ``bundle`` the running digest;
        ``offline_before``: see ``_match``."""
        check_page_size("page_size", page_size)
        devices = t.devices
        where = _match(
            site, name, [tag, *tags] if tag is not None else tags, bundle, health, seen_since, offline_before
        )
        query = sa.select(devices).where(*where).order_by(devices.c.id).limit(page_size + 1)
        if page_token:
            query = query.where(devices.c.id > _decode_page_token(page_token))
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        page = [_device_record(row) for row in rows[:page_size]]
        next_token = _encode_page_token(page[-1].id) if len(rows) > page_size else None
        return page, next_token

    def count(
        self,
        *,
        site: str | None = None,
        tags: Sequence[str] = (),
        bundle: str | None = None,
        health: str | None = None,
        seen_since: datetime | None = None,
        offline_before: datetime | None = None,
    ) -> int:
        """How many devices match the filters (all pages together; same filters as ``page``)."""
        where = _match(site, None, tags, bundle, health, seen_since, offline_before)
        with self._db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(t.devices).where(*where)).scalar_one())

    def record_report(self, device_id: str, reported: Mapping[str, Any], now: datetime) -> DesiredState:
        """Store the device's reported state, mark it seen at ``now``, and return its desired state.

        The store indexes ``running_bundle`` (digest or None), ``health`` (string) and every
        ``slots.<name>.bundle`` digest; the rest of the document is kept as given.
        """
        check_now(now)
        if not isinstance(reported, Mapping):
            raise InvalidArgument(f"reported state must be a mapping, got {shown(reported)}")
        reported_json = check_json("reported state", reported)
        running, health, refs = _reported_bundle_refs(reported)
        devices = t.devices
        with self._db.transaction() as conn:
            last_seen = conn.execute(
                sa.select(devices.c.last_seen).where(devices.c.id == device_id).with_for_update()
            ).one_or_none()
            if last_seen is None:
                raise NotFound("device", device_id, "the device must enroll again")
            seen = now if last_seen[0] is None else max(now, last_seen[0])
            conn.execute(
                devices.update()
                .where(devices.c.id == device_id)
                .values(reported_json=reported_json, running_bundle=running, health=health, last_seen=seen)
            )
            conn.execute(t.device_bundle_refs.delete().where(t.device_bundle_refs.c.device_id == device_id))
            if refs:
                conn.execute(
                    t.device_bundle_refs.insert(),
                    [{"device_id": device_id, "source": s, "bundle_digest": d} for s, d in refs.items()],
                )
            desired = desired_states.read_in(conn, device_id)
        if desired is None:  # the row is created with the device and cascades away with it
            raise NotFound("device", device_id, "the device must enroll again")
        return desired

    def site_summary(self) -> dict[str, SiteSummary]:
        """Per site: device count, counts by running bundle digest and by health."""
        devices = t.devices
        count = sa.func.count()
        with self._db.read() as conn:
            by_bundle = conn.execute(
                sa.select(devices.c.site, devices.c.running_bundle, count).group_by(
                    devices.c.site, devices.c.running_bundle
                )
            ).all()
            by_health = conn.execute(
                sa.select(devices.c.site, devices.c.health, count).group_by(devices.c.site, devices.c.health)
            ).all()
        bundles: dict[str, dict[str | None, int]] = {}
        healths: dict[str, dict[str, int]] = {}
        for site, digest, n in by_bundle:
            bundles.setdefault(site, {})[digest] = n
        for site, health, n in by_health:
            healths.setdefault(site, {})[health] = n
        return {
            site: SiteSummary(
                site=site,
                devices=sum(bundles[site].values()),
                by_bundle=bundles[site],
                by_health=healths.get(site, {}),
            )
            for site in sorted(bundles)
        }
