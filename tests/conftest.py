"""Shared pytest configuration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Entry points under test (fleetctl, the CLIs) configure structlog; give every test the defaults back."""
    yield
    structlog.reset_defaults()
