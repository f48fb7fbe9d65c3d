"""Running a typer command line (fleetctl, or a test's own app) in-process, as the CLI tests do."""

from __future__ import annotations

import structlog
import typer
from typer.testing import CliRunner, Result

__all__ = ["invoke"]

_runner = CliRunner()


def invoke(app: typer.Typer, args: list[str]) -> Result:
    """``app ARGS`` through typer's ``CliRunner``; its result (exit code, stdout, stderr)."""
    result = _runner.invoke(app, args)
    # The command configures structlog to print to the runner's stderr, which is closed once invoke returns.
    structlog.reset_defaults()
    return result
