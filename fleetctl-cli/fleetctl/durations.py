"""Operator time input: durations (``90s``, ``15m``, ``24h``, ``7d``, plain seconds) and moments (a duration
ago, or an ISO 8601 time, UTC when it names no zone). A bad value is a usage error naming the forms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import typer

from edgefleet.contract.shown import shown

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """'90s', '15m', '24h', '7d' or plain seconds → seconds."""
    text = text.strip().lower()
    try:
        if text[-1:] in _UNITS:
            return int(float(text[:-1]) * _UNITS[text[-1]])
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"duration must look like 90s, 15m, 24h or 7d; got {shown(text)}") from None


def parse_time(text: str, now: datetime) -> datetime:
    """A duration ago (``90s``, ``10m``, ``24h``, ``7d``) or an ISO 8601 time (naive = UTC)."""
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            return now - timedelta(seconds=parse_duration(text))
        except typer.BadParameter:
            raise typer.BadParameter(
                f"time must be a duration ago (10m, 24h, 7d) or ISO 8601 (2025-01-01T12:00:00Z); got {shown(text)}"
            ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
