"""Integration-test fixtures: a controller store on SQLite and on PostgreSQL (edgefleet_testing.postgres)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet_controller.store import Store
from edgefleet_testing.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite in a temp file, or a clean PostgreSQL database (a throwaway local server started once per
    session, or EDGEFLEET_TEST_PG_URL); the PostgreSQL variant skips, saying why, where neither exists."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    yield opened
    opened.close()
