"""structlog configuration, called only by entry points (CLIs, the demo, benchmarks), and the one
late-bound logger lookup for library code.

JSON lines when stderr is not a terminal (production, containers), a console renderer on a terminal.
"""

from __future__ import annotations

import logging
import sys

import structlog


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the moment of writing, so a logger created under a test runner
    that swapped stderr (typer's CliRunner) never keeps a closed stream."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog once for the process. ``json=None`` picks by whether stderr is a tty."""
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        # No caching: entry points configure once, and tests (capture_logs) must be able to reconfigure.
        cache_logger_on_first_use=False,
    )


def current_logger(name: str) -> structlog.stdlib.BoundLogger:
    """The logger for ``name`` as structlog is configured *now*.

    For library code imported before an entry point (or a CLI test) configures logging: looked up per call,
    never cached at import, so it never keeps writing to a stale stream.
    """
    return structlog.get_logger(name)  # type: ignore[no-any-return]
