"""Rendering of fleetctl results: rich tables for people, JSON and YAML for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import typer
import yaml
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgefleet.contract.shown import shown
from edgefleet.v1 import common_pb2

FORMATS = ("table", "wide", "json", "yaml")
#: ``-o``: what every listing and describing command takes.
OutputOpt = typer.Option("table", "-o", "--output", help="table, wide, json or yaml")
# On a terminal rich fits its width; piped into a file, a pager or CI logs, rich would assume 80 columns and
# fold every table cell, so tables get room as kubectl's do and long lines are not wrapped.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 1000)
# Errors are one line however narrow the terminal: scripts and people grep them.
err_console = Console(stderr=True, soft_wrap=True)


def to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def check_format(fmt: str) -> str:
    """The ``-o`` value, or a usage error naming the formats."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"-o must be one of {', '.join(FORMATS)}; got {shown(fmt)}")
    return fmt


def is_structured(fmt: str) -> bool:
    """``-o json`` and ``-o yaml`` print data for scripts; ``table`` and ``wide`` print for people."""
    return fmt in ("json", "yaml")


def emit_data(data: Any, fmt: str) -> None:
    """Plain data (mappings, lists, scalars) as JSON or YAML."""
    if fmt == "json":
        console.print_json(json.dumps(data))
    else:
        # soft_wrap: a folded line would change a long scalar (a digest) when the YAML is parsed back.
        console.print(yaml.safe_dump(data, sort_keys=False), end="", markup=False, highlight=False, soft_wrap=True)


def emit_structured(items: Sequence[Message] | Message, fmt: str) -> None:
    emit_data([to_dict(m) for m in items] if isinstance(items, Sequence) else to_dict(items), fmt)


def ts(value: Timestamp) -> str:
    if not value.seconds and not value.nanos:
        return "-"
    return value.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


def age(value: Timestamp, now: datetime | None = None) -> str:
    if not value.seconds and not value.nanos:
        return "never"
    seconds = ((now or datetime.now(UTC)) - value.ToDatetime(tzinfo=UTC)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


def health_name(value: int) -> str:
    """``HEALTH_SERVING`` → ``serving``."""
    return common_pb2.Health.Name(common_pb2.Health.ValueType(value)).removeprefix("HEALTH_").lower()


def device_health(device: common_pb2.Device) -> str:
    """The health shown for ``device``: ``disabled`` when it is disabled (over offline and any reported
    health, from a controller of any version), else its health's name."""
    return "disabled" if device.HasField("disabled_at") else health_name(device.health)


def update_state_name(value: int) -> str:
    """``UPDATE_STATE_COMMITTED`` → ``committed``."""
    return common_pb2.UpdateState.Name(common_pb2.UpdateState.ValueType(value)).removeprefix("UPDATE_STATE_").lower()


def printable(text: str) -> str:
    """``text`` for a terminal: every non-printable character (controls, newlines, NUL, bidi overrides such
    as U+202E) as its backslash escape and rich markup escaped, so a stored name cannot reorder or break a
    listing."""
    safe = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return escape(safe)


def short_digest(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12] if digest else "-"


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    t = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*r)
    return t


def emit_table(
    items: Sequence[Message],
    fmt: str,
    title: str,
    columns: Sequence[str],
    row: Callable[[Any], Sequence[str]],
    wide_columns: Sequence[str] = (),
    wide_row: Callable[[Any], Sequence[str]] | None = None,
) -> None:
    if is_structured(fmt):
        emit_structured(items, fmt)
        return
    if fmt == "wide" and wide_row is not None:
        cols = [*columns, *wide_columns]
        rows = [[*row(i), *wide_row(i)] for i in items]
    else:
        cols = list(columns)
        rows = [list(row(i)) for i in items]
    console.print(table(title, cols, rows))
