"""Live config documents and their history: every apply that changes something is one new config revision,
under which each changed document gets a new version (a removal is a version with ``deleted`` set).

What the documents mean (layering, precedence) is decided elsewhere (``config/``); this module stores the
canonical JSON and its content digest as given. Staged documents a rollout will make live are the rollout
store's (``store/rollouts.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Row

from edgefleet_controller.store import schema as t
from edgefleet_controller.store.arguments import check_digest_field, check_now, check_text
from edgefleet_controller.store.db import AggregateStore
from edgefleet_controller.store.errors import InvalidArgument, NotFound
from edgefleet_controller.store.records import ConfigDocInput, ConfigDocRecord, record_from_row

log = structlog.get_logger(__name__)


def _config_record(row: Row[Any]) -> ConfigDocRecord:
    return record_from_row(ConfigDocRecord, row, deleted=bool(row.deleted))


def revision_in(conn: Connection) -> int:
    """The newest config revision as ``conn`` sees it (0 before the first apply)."""
    value = conn.execute(sa.select(sa.func.max(t.config_revisions.c.revision))).scalar_one_or_none()
    return int(value or 0)


def _check_documents(
    docs: Sequence[ConfigDocInput | tuple[str, str, str | None, str, str]], removed: Sequence[tuple[str, str]]
) -> tuple[list[ConfigDocInput], list[tuple[str, str]]]:
    inputs = [ConfigDocInput(*doc) for doc in docs]
    seen: set[tuple[str, str]] = set()
    for doc in inputs:
        check_text("config kind", doc.kind, 64)
        check_text("config name", doc.name)
        if doc.site is not None:
            check_text(f"config {doc.kind}/{doc.name} site", doc.site)
        if not isinstance(doc.doc_json, str):
            raise InvalidArgument(f"config {doc.kind}/{doc.name}: doc_json must be a JSON string")
        try:
            json.loads(doc.doc_json)
        except ValueError as exc:
            raise InvalidArgument(f"config {doc.kind}/{doc.name}: doc_json is not valid JSON: {exc}") from None
        check_digest_field(f"config {doc.kind}/{doc.name} content_digest", doc.content_digest)
        if (doc.kind, doc.name) in seen:
            raise InvalidArgument(f"config {doc.kind}/{doc.name} appears twice in one apply; keep one")
        seen.add((doc.kind, doc.name))
    removals = [(kind, name) for kind, name in removed]
    for key in removals:
        if key in seen:
            raise InvalidArgument(f"config {key[0]}/{key[1]} is both applied and removed; choose one")
    return inputs, removals


class ConfigStore(AggregateStore):
    """Config documents, revisions and history."""

    def apply(
        self,
        docs: Sequence[ConfigDocInput | tuple[str, str, str | None, str, str]],
        applied_by: str,
        now: datetime,
        removed: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Apply config documents (and remove ``(kind, name)`` pairs) in one transaction.

        Documents whose content digest and site are unchanged are no-ops; if nothing changed, no revision
        is created and the current revision is returned. Otherwise every changed document gets a new
        version under one new config revision, which is returned.
        """
        check_now(now)
        check_text("applied_by", applied_by)
        inputs, removals = _check_documents(docs, removed)
        docs_t = t.config_documents
        with self._db.transaction() as conn:
            current = {
                (row.kind, row.name): row
                for row in conn.execute(sa.select(docs_t).where(docs_t.c.is_current.is_(True)))
            }
            # each change: the row it supersedes (None: first version) and the new row's values
            changes: list[tuple[Row[Any] | None, dict[str, Any]]] = []
            for doc in inputs:
                cur = current.get((doc.kind, doc.name))
                if (
                    cur is not None
                    and not cur.deleted
                    and cur.content_digest == doc.content_digest
                    and cur.site == doc.site
                ):
                    continue
                changes.append((cur, {**doc._asdict(), "deleted": False}))
            for kind, name in removals:
                cur = current.get((kind, name))
                if cur is None or cur.deleted:
                    continue
                tombstone = {"kind": kind, "name": name, "site": cur.site, "doc_json": None}
                changes.append((cur, {**tombstone, "content_digest": None, "deleted": True}))
            if not changes:
                return revision_in(conn)
            inserted = conn.execute(
                t.config_revisions.insert().values(applied_by=applied_by, applied_at=now)
            ).inserted_primary_key
            revision = int(inserted[0]) if inserted is not None else revision_in(conn)
            superseded = [cur.id for cur, _ in changes if cur is not None]
            if superseded:
                conn.execute(docs_t.update().where(docs_t.c.id.in_(superseded)).values(is_current=False))
            conn.execute(
                docs_t.insert(),
                [
                    {
                        **values,
                        "version": 1 if cur is None else cur.version + 1,
                        "is_current": True,
                        "revision": revision,
                        "applied_by": applied_by,
                        "applied_at": now,
                    }
                    for cur, values in changes
                ],
            )
        log.info("store.config_applied", revision=revision, changed=len(changes), applied_by=applied_by)
        return revision

    def revision(self) -> int:
        """The newest config revision (0 before the first apply)."""
        with self._db.read() as conn:
            return revision_in(conn)

    def current(self) -> list[ConfigDocRecord]:
        """The live documents (not removed), by kind and name."""
        docs = t.config_documents
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(docs)
                .where(docs.c.is_current.is_(True), docs.c.deleted.is_(False))
                .order_by(docs.c.kind, docs.c.name)
            )
            return [_config_record(row) for row in rows]

    def history(self, kind: str, name: str) -> list[ConfigDocRecord]:
        """Every version of one document, oldest first (removals included, ``deleted`` set)."""
        docs = t.config_documents
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(docs).where(docs.c.kind == kind, docs.c.name == name).order_by(docs.c.version)
            ).all()
        if not rows:
            raise NotFound("config document", f"{kind}/{name}", "list current config documents to see names")
        return [_config_record(row) for row in rows]
