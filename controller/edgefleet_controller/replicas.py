"""Desired-state changes shared between controller replicas on one PostgreSQL database.

Each replica parks its own devices' long-polls and caches their desired state. A change made through
replica A (a rollout wave, ``SetDesiredBundle``, a config apply) must wake the devices parked on replica B
and evict B's cache, or B would answer from stale memory. PostgreSQL's LISTEN/NOTIFY carries it: after
every local ``SyncHub.notify`` the replica publishes the device ids on channel ``edgefleet_desired``
(payload ``<origin>|<id>,<id>…``, or ``<origin>|*`` for everyone or when the ids would not fit NOTIFY's
8000-byte payload); every replica listens and replays the others' notifications into its own hub.

NOTIFY is sent after the writing transaction has committed (the hub is notified after commits), so a
listener that wakes reads the new state. If the listening connection drops, the replica cannot know what
it missed: it evicts every cached desired state, wakes every parked call (devices re-sync), and reconnects
with backoff. The embedded SQLite default runs one replica and needs none of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Collection
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog

from edgefleet_controller.hub import SyncHub

log = structlog.get_logger("edgefleet.controller.replicas")

CHANNEL = "edgefleet_desired"
MAX_PAYLOAD = 7900  # NOTIFY payloads must stay under 8000 bytes


def replica_id(data_dir: Path) -> str:
    """This controller's stable identity for database leases, kept in ``DATA_DIR/replica.id``.

    A controller restarted on the same data dir is the same replica, so it takes its reconciler lease back
    at once instead of waiting for the dead process's lease to expire; replicas sharing one PostgreSQL
    database each have their own data dir, hence their own id.
    """
    path = data_dir / "replica.id"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        ident = f"{socket.gethostname()}-{secrets.token_hex(4)}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(ident + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return ident


def conninfo(url: str | sa.URL) -> str:
    """A libpq URI for psycopg from the store's SQLAlchemy URL (``postgresql+psycopg://…``)."""
    parsed = sa.make_url(url) if isinstance(url, str) else url
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def payloads(origin: str, device_ids: Collection[str] | None) -> list[str]:
    """NOTIFY payloads for a change; ``*`` (everyone) when ``device_ids`` is None or too long to send."""
    if device_ids is None:
        return [f"{origin}|*"]
    joined = ",".join(sorted(device_ids))
    if not joined:
        return []
    text = f"{origin}|{joined}"
    return [text] if len(text.encode()) <= MAX_PAYLOAD else [f"{origin}|*"]


def parse(payload: str) -> tuple[str, list[str] | None]:
    origin, _, ids = payload.partition("|")
    return origin, None if ids == "*" else [i for i in ids.split(",") if i]


class ChangeRelay:
    """Publishes this replica's hub notifications and replays the other replicas' into its hub."""

    def __init__(self, url: str | sa.URL, hub: SyncHub, origin: str) -> None:
        self._conninfo = conninfo(url)
        self._hub = hub
        self._origin = origin
        self._outbox: asyncio.Queue[str] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.received = 0

    async def start(self) -> None:
        import psycopg  # only PostgreSQL deployments need the driver

        self._outbox = asyncio.Queue()
        sender = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        self._tasks = [
            asyncio.create_task(self._send(sender), name="replica-relay-send"),
            asyncio.create_task(self._listen(), name="replica-relay-listen"),
        ]
        self._hub.on_publish(self.publish)

    def publish(self, device_ids: Collection[str] | None) -> None:
        if self._outbox is not None:
            for payload in payloads(self._origin, device_ids):
                self._outbox.put_nowait(payload)

    async def _send(self, conn: Any) -> None:
        assert self._outbox is not None
        try:
            while True:
                payload = await self._outbox.get()
                try:
                    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                except Exception as exc:  # psycopg's errors: reconnect and keep going
                    log.warning("replicas.notify_failed", error=str(exc))
                    with contextlib.suppress(Exception):
                        await conn.close()
                    await asyncio.sleep(1.0)
                    import psycopg

                    conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _listen(self) -> None:
        import psycopg

        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.5
                    log.info("replicas.listening", channel=CHANNEL, origin=self._origin)
                    async for note in conn.notifies():
                        origin, ids = parse(note.payload)
                        if origin == self._origin:
                            continue
                        self.received += 1
                        if ids is None:
                            self._hub.notify_all(publish=False)
                        else:
                            self._hub.notify(ids, publish=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Changes may have been missed while disconnected: forget every cached desired state and
                # let every parked device re-sync.
                log.warning("replicas.listen_lost", error=str(exc), retry_s=delay)
                self._hub.notify_all(publish=False)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
