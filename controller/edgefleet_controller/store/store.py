"""``Store``: the controller's database and one store per aggregate over it, opened and closed together.

It decides nothing and adds no queries: it owns the ``Database`` (``store.db``: the engine and its
transactions) and exposes the aggregate stores as attributes, so a caller names the aggregate it works on
(``store.devices.get(...)``, ``store.bundles.put(...)``) and a service can be handed only the one it needs.
Work that spans aggregates opens ``store.db.transaction()`` and passes the connection to ``*_in(conn, ...)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import sqlalchemy as sa

from edgefleet_controller.store.auth import EnrollmentTokenStore, OperatorTokenStore, TrustedKeyStore
from edgefleet_controller.store.bundles import BundleStore
from edgefleet_controller.store.configs import ConfigStore
from edgefleet_controller.store.credential_generation import CredentialGenerationStore
from edgefleet_controller.store.db import Database
from edgefleet_controller.store.desired import DesiredStore
from edgefleet_controller.store.device_access import DeviceAccessStore
from edgefleet_controller.store.devices import DeviceStore
from edgefleet_controller.store.events import EventStore


class Store:
    """The controller's state. Create with ``Store.open(url)`` or ``Store.open_data_dir(path)``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.enrollment_tokens = EnrollmentTokenStore(db)
        self.operator_tokens = OperatorTokenStore(db)
        self.trusted_keys = TrustedKeyStore(db)
        self.devices = DeviceStore(db)
        self.device_access = DeviceAccessStore(db)
        self.credential_generation = CredentialGenerationStore(db)
        self.bundles = BundleStore(db)
        self.configs = ConfigStore(db)
        self.desired = DesiredStore(db)
        self.events = EventStore(db)

    @classmethod
    def open(cls, url: str | sa.URL) -> Store:
        """Connect to ``url`` (``sqlite:///path`` or ``postgresql+driver://...``) and migrate it to head."""
        return cls(Database.open(url))

    @classmethod
    def open_data_dir(cls, data_dir: Path | str) -> Store:
        """The embedded default: SQLite file ``<data_dir>/controller.db`` (the directory is created)."""
        return cls(Database.open_data_dir(data_dir))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
