"""The controller's persistent state: the database (``Store``: one store per aggregate over one
``Database``) and the content-addressed blob directory (``BlobStore``), both rooted in one ``--data-dir`` by
default (``controller.db`` and ``blobs/``).

    db.py        Database: engine, migrations, SQLite pragmas, read/write transactions (the unit of work)
    auth.py      enrollment tokens, operator tokens (bootstrap admin), trusted publisher keys
    devices.py   enrolled devices: credentials, tags, reported state, site summaries
    bundles.py   published bundles, their artifacts, who references them
    configs.py   live config documents, revisions, history
    desired.py   desired state per device, assignment ids, the change counter and feed
    events.py    device events
    rollouts.py, telemetry.py   rollout and telemetry persistence on the same database
    store.py     Store: opens the Database and exposes the aggregate stores as attributes
"""

from __future__ import annotations

from edgefleet_controller.store.blobs import BlobStore, BlobWriter, check_digest
from edgefleet_controller.store.db import Database, head_revision, migrate
from edgefleet_controller.store.desired import UNSET
from edgefleet_controller.store.events import EventInput
from edgefleet_controller.store.store import Store

__all__ = [
    "UNSET",
    "BlobStore",
    "BlobWriter",
    "Database",
    "EventInput",
    "Store",
    "check_digest",
    "head_revision",
    "migrate",
]
