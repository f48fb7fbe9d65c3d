"""fleetctl telemetry and review commands: ``telemetry top`` (a live per-device view), ``telemetry query``
(grouped by device, site or bundle), ``telemetry delete`` (admin: one device's records in a range),
``review list`` (the review queue and its false-positive rates) and ``review label``.

Decisions:
- Percentiles are the controller's, computed from merged sketches; fleetctl never averages anything.
- A missing sensor (absent from the window, or reported ``missing``) is shown as ``-``, never ``0``: a 0 °C
  reading would look real. A drift PSI of NaN (no baseline yet) is ``-`` too.
- ``--since`` / ``--until`` take a duration ago (``10m``, ``24h``) or an ISO 8601 time (UTC if no zone).
- ``top --watch`` redraws every ``--interval`` seconds in a rich ``Live`` until Ctrl-C (exit 0); an RPC
  failure while watching ends it like any other command (one red line, exit 1).
- ``review list --save-jpegs DIR`` asks for the JPEGs and writes ``DIR/<sample id>.jpg``; the sample id
  comes from a device, so anything but ``[A-Za-z0-9._-]`` is replaced before it becomes a file name. JSON
  and YAML output never carry the JPEG bytes (megabytes of base64 help no script).
- Sample ids are scoped per device: ``review label --device D ID`` names the sample; without ``--device`` the
  id must belong to one device only (the controller names the devices otherwise).
- ``telemetry delete`` deletes nothing without ``--yes`` (or a "y" at its prompt) and prints the counts.
- PRECISION is the precision variant that served the row's windows (``int8-u8s8``); several, comma-joined,
  when the row's latency mixes variants (``query --by-precision`` gives each its own row); ``-`` when the
  devices did not say (they predate it).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.live import Live
from rich.table import Table

from edgefleet.contract.shown import shown
from edgefleet.v1 import fleet_pb2
from edgefleet.v1.telemetry_pb2 import SensorReading
from fleetctl.durations import parse_time
from fleetctl.errors import grpc_errors
from fleetctl.fleet_cmds import list_devices
from fleetctl.output import (
    OutputOpt,
    check_format,
    console,
    emit_structured,
    err_console,
    is_structured,
    short_digest,
    table,
    ts,
)
from fleetctl.settings import OPTIONS

telemetry_app = typer.Typer(
    help="Fleet telemetry: latency percentiles, throughput, thermals, drift.", no_args_is_help=True
)
review_app = typer.Typer(help="The review queue of flagged frames: list, label.", no_args_is_help=True)

GROUPS = ("device", "site", "bundle")
LABELS = ("tp", "fp")
LABEL_FILTERS = ("unlabeled", "tp", "fp")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]")

SiteOpt = typer.Option("", help="only this site")
BundleOpt = typer.Option("", help="only this bundle digest")


# ------------------------------------------------------------------ pure rendering


def ms(value: float, count: int = 1) -> str:
    return f"{value:.1f}" if count else "-"


def sensor(readings: Sequence[SensorReading], name: str) -> SensorReading | None:
    """The reading called ``name`` that holds a value, or None (absent or reported missing)."""
    for r in readings:
        if r.name == name:
            return None if r.missing else r
    return None


def temp_text(readings: Sequence[SensorReading], name: str) -> str:
    r = sensor(readings, name)
    return "-" if r is None else f"{r.value:.1f}"


def clock_text(readings: Sequence[SensorReading], name: str) -> str:
    r = sensor(readings, name)
    if r is None:
        return "-"
    return f"{r.value:.0f}/{r.max_value:.0f}" if r.max_value > 0 else f"{r.value:.0f}"


def psi_text(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def precision_text(row: fleet_pb2.TelemetryRow, split: bool = False) -> str:
    """The row's variant when the query was split by precision, else every variant its windows name."""
    if split:
        return row.precision or "-"
    return ",".join(row.precisions) or "-"


def key_text(row: fleet_pb2.TelemetryRow, group_by: str, names: dict[str, str]) -> str:
    if group_by == "bundle":
        return short_digest(row.key)
    if group_by == "device":
        return names.get(row.key, row.key)
    return row.key


TOP_COLUMNS = (
    "DEVICE",
    "PRECISION",
    "P50 MS",
    "P95 MS",
    "P99 MS",
    "MODEL P95",
    "FPS",
    "ERRORS",
    "CPU °C",
    "GPU °C",
    "CPU MHZ",
    "GPU MHZ",
    "PSI",
    "THROTTLING",
)


def top_row(row: fleet_pb2.TelemetryRow, names: dict[str, str]) -> list[str]:
    e2e, model, sensors = row.latency_e2e, row.latency_model, list(row.sensors)
    return [
        names.get(row.key, row.key),
        precision_text(row),
        ms(e2e.p50_ms, e2e.count),
        ms(e2e.p95_ms, e2e.count),
        ms(e2e.p99_ms, e2e.count),
        ms(model.p95_ms, model.count),
        f"{row.fps:.1f}",
        str(row.errors),
        temp_text(sensors, "cpu_temp"),
        temp_text(sensors, "gpu_temp"),
        clock_text(sensors, "cpu_clock"),
        clock_text(sensors, "gpu_clock"),
        psi_text(row.drift_psi),
        "THROTTLING" if row.throttling else "",
    ]


QUERY_COLUMNS = (
    "PRECISION",
    "P50 MS",
    "P95 MS",
    "P99 MS",
    "MODEL P95",
    "FRAMES",
    "LOST",
    "ERRORS",
    "FPS",
    "PSI",
    "THROTTLING",
)


def lost_text(row: fleet_pb2.TelemetryRow) -> str:
    """Frames the devices declared lost: the exact count, plus intervals whose count is unknown."""
    if not row.gaps:
        return "0"
    text = str(row.frames_lost)
    if row.gaps_unknown:
        n = row.gaps_unknown
        bound = f" (≥{row.frames_lost_at_least})" if row.frames_lost_at_least else ""
        text += f" + {n} gap{'s' if n != 1 else ''} of unknown count{bound}"
    return text


QUERY_WIDE_COLUMNS = ("CPU °C", "GPU °C", "CPU MHZ", "GPU MHZ", "KEY")


def query_row(
    row: fleet_pb2.TelemetryRow, group_by: str, names: dict[str, str], wide: bool, by_precision: bool = False
) -> list[str]:
    e2e, model, sensors = row.latency_e2e, row.latency_model, list(row.sensors)
    cells = [
        key_text(row, group_by, names),
        precision_text(row, by_precision),
        ms(e2e.p50_ms, e2e.count),
        ms(e2e.p95_ms, e2e.count),
        ms(e2e.p99_ms, e2e.count),
        ms(model.p95_ms, model.count),
        str(row.frames),
        lost_text(row),
        str(row.errors),
        f"{row.fps:.1f}",
        psi_text(row.drift_psi),
        "THROTTLING" if row.throttling else "",
    ]
    if wide:
        cells += [
            temp_text(sensors, "cpu_temp"),
            temp_text(sensors, "gpu_temp"),
            clock_text(sensors, "cpu_clock"),
            clock_text(sensors, "gpu_clock"),
            row.key,
        ]
    return cells


def jpeg_file_name(sample_id: str) -> str:
    safe = _UNSAFE_FILE_CHARS.sub("_", sample_id).lstrip(".") or "sample"
    return f"{safe}.jpg"


# ------------------------------------------------------------------ RPCs


def _device_names(site: str) -> dict[str, str]:
    return {d.id: d.name for d in list_devices(site)}


def _query(request: fleet_pb2.QueryTelemetryRequest) -> fleet_pb2.QueryTelemetryResponse:
    reply: fleet_pb2.QueryTelemetryResponse = OPTIONS.connection().call(lambda stub: stub.QueryTelemetry, request)
    if reply.skipped_records:
        err_console.print(
            f"warning: {reply.skipped_records} stored telemetry window(s) in scope are malformed (written by an "
            "older controller) and were skipped; the controller's log names them (telemetry.query_skipped_record)"
        )
    return reply


def _window(since: str, until: str | None, now: datetime) -> tuple[datetime, datetime | None]:
    start = parse_time(since, now)
    end = parse_time(until, now) if until else None
    if end is not None and end <= start:
        raise typer.BadParameter(f"--until ({end.isoformat()}) must be after --since ({start.isoformat()})")
    return start, end


# ------------------------------------------------------------------ telemetry top


def _top_table(site: str, since_text: str) -> Table:
    now = datetime.now(UTC)
    request = fleet_pb2.QueryTelemetryRequest(group_by="device", site=site)
    request.since.FromDatetime(parse_time(since_text, now))
    reply = _query(request)
    names = _device_names(site)
    rows = sorted(reply.rows, key=lambda r: names.get(r.key, r.key))
    title = f"telemetry top — {len(rows)} devices{f' at {site}' if site else ''}, last {since_text}"
    t = table(title, TOP_COLUMNS, [top_row(r, names) for r in rows])
    t.caption = f"updated {now.strftime('%H:%M:%S')} UTC; '-' = sensor missing or no baseline"
    return t


@telemetry_app.command("top")
@grpc_errors
def top(
    site: str = typer.Option("", help="only devices at this site"),
    since: str = typer.Option("10m", help="window: a duration ago (10m, 1h) or an ISO 8601 time"),
    watch: bool = typer.Option(False, "--watch", "-w", help="refresh until Ctrl-C"),
    interval: float = typer.Option(2.0, help="seconds between refreshes with --watch", min=0.1),
    refreshes: int = typer.Option(0, hidden=True, help="stop after this many refreshes (0 = until Ctrl-C)"),
) -> None:
    """Per device: latency percentiles, throughput, errors, temperatures and clocks, drift, throttling."""
    parse_time(since, datetime.now(UTC))  # a bad --since fails before any RPC
    if not watch:
        console.print(_top_table(site, since))
        return
    drawn = 0
    try:
        with Live(_top_table(site, since), console=console, auto_refresh=False) as live:
            drawn = 1
            while not refreshes or drawn < refreshes:
                time.sleep(interval)
                live.update(_top_table(site, since), refresh=True)
                drawn += 1
    except KeyboardInterrupt:
        pass


# ------------------------------------------------------------------ telemetry query


@telemetry_app.command("query")
@grpc_errors
def query(
    group_by: str = typer.Option("device", "--group-by", "-g", help="device, site or bundle"),
    since: str = typer.Option("1h", help="a duration ago (1h, 7d) or an ISO 8601 time"),
    until: str | None = typer.Option(None, help="a duration ago or an ISO 8601 time (default: now)"),
    site: str = SiteOpt,
    device: str = typer.Option("", help="only this device (id or name)"),
    bundle: str = BundleOpt,
    by_precision: bool = typer.Option(
        False, "--by-precision", "-p", help="one row per precision variant (fp32, int8-u8s8, …) of each group"
    ),
    output: str = OutputOpt,
) -> None:
    """Latency percentiles (merged sketches), frames, frames declared lost, errors, fps, drift and throttling
    per group. LOST: frames a device processed but never reported (killed with a window open), "+ N gaps of
    unknown count (≥M)" for intervals whose count it could not know (a reboot, an unreadable frame checkpoint).
    PRECISION: the precision variant(s) that served the group's windows; --by-precision splits each group."""
    fmt = check_format(output)
    if group_by not in GROUPS:
        raise typer.BadParameter(f"--group-by must be one of {', '.join(GROUPS)}; got {shown(group_by)}")
    start, end = _window(since, until, datetime.now(UTC))
    request = fleet_pb2.QueryTelemetryRequest(
        group_by=group_by, site=site, device=device, bundle=bundle, by_precision=by_precision
    )
    request.since.FromDatetime(start)
    if end is not None:
        request.until.FromDatetime(end)
    reply = _query(request)
    if is_structured(fmt):
        emit_structured(list(reply.rows), fmt)
        return
    names = _device_names(site) if group_by == "device" else {}
    wide = fmt == "wide"
    columns = [group_by.upper(), *QUERY_COLUMNS, *(QUERY_WIDE_COLUMNS if wide else ())]
    rows = [query_row(r, group_by, names, wide, by_precision) for r in reply.rows]
    title = f"telemetry by {group_by}{' and precision' if by_precision else ''} ({len(rows)})"
    console.print(table(title, columns, rows))


def _review_rows(samples: Sequence[fleet_pb2.ReviewSampleInfo], names: dict[str, str]) -> list[list[str]]:
    return [
        [
            s.sample_id,
            names.get(s.device_id, s.device_id),
            s.site,
            short_digest(s.sample.bundle_digest),
            s.sample.reason,
            f"{s.sample.top_confidence:.3f}",
            ts(s.sample.captured_at),
            s.label or "-",
            s.labeled_by or "-",
        ]
        for s in samples
    ]


def _fp_rows(fp_rate: dict[str, float]) -> list[list[str]]:
    rows = []
    for key in sorted(fp_rate):
        site, _, bundle = key.partition("/")
        rows.append([site, short_digest(bundle), f"{100.0 * fp_rate[key]:.1f}%"])
    return rows


def _save_jpegs(samples: Sequence[fleet_pb2.ReviewSampleInfo], directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    saved = 0
    for s in samples:
        if s.sample.jpeg:
            (directory / jpeg_file_name(s.sample_id)).write_bytes(s.sample.jpeg)
            saved += 1
    return saved


# ------------------------------------------------------------------ telemetry delete


def _confirmed(question: str) -> bool:
    """A "y" at the prompt; no answer (no terminal, end of input) is a no."""
    try:
        return typer.confirm(question, default=False)
    except typer.Abort:
        return False


@telemetry_app.command("delete")
@grpc_errors
def delete(
    device: str = typer.Option(..., help="the device (id or name) whose telemetry to delete"),
    since: str = typer.Option(..., help="from: a duration ago (7d) or an ISO 8601 time"),
    until: str | None = typer.Option(None, help="to (exclusive): a duration ago or an ISO 8601 time (default: now)"),
    yes: bool = typer.Option(False, "--yes", "-y", help="delete without asking"),
    output: str = OutputOpt,
) -> None:
    """Admin: delete one device's stored telemetry (metric windows, telemetry events, review samples) in
    [--since, --until), e.g. a malformed record an older controller stored; prints how many were deleted."""
    fmt = check_format(output)
    now = datetime.now(UTC)
    start, end = _window(since, until, now)
    end = end or now
    span = f"[{start.isoformat()}, {end.isoformat()})"
    if not yes and not _confirmed(f"delete every telemetry record of device {shown(device)} in {span}?"):
        err_console.print("nothing deleted (confirm with --yes)")
        raise typer.Exit(1)
    request = fleet_pb2.DeleteTelemetryRequest(device=device)
    request.since.FromDatetime(start)
    request.until.FromDatetime(end)
    reply = OPTIONS.connection().call(lambda stub: stub.DeleteTelemetry, request)
    if is_structured(fmt):
        emit_structured(reply, fmt)
        return
    console.print(
        f"deleted telemetry of device {reply.device_id} in {span}: {reply.windows} windows, {reply.events} events, "
        f"{reply.review_samples} review samples",
        highlight=False,
    )


# ------------------------------------------------------------------ review


@review_app.command("list")
@grpc_errors
def review_list(
    site: str = SiteOpt,
    bundle: str = BundleOpt,
    device: str = typer.Option("", help="only this device's samples (id or name)"),
    label: str = typer.Option("", help="unlabeled, tp or fp (default: all)"),
    limit: int = typer.Option(50, help="at most this many samples (newest first)", min=1, max=1000),
    save_jpegs: Path | None = typer.Option(None, "--save-jpegs", help="write each sample's frame to DIR/<id>.jpg"),
    output: str = OutputOpt,
) -> None:
    """List flagged frames awaiting (or after) review, and the false-positive rate per site and bundle."""
    fmt = check_format(output)
    if label and label not in LABEL_FILTERS:
        raise typer.BadParameter(f"--label must be one of {', '.join(LABEL_FILTERS)}; got {shown(label)}")
    if save_jpegs is not None and save_jpegs.exists() and not save_jpegs.is_dir():
        raise typer.BadParameter(f"--save-jpegs must be a directory; {shown(str(save_jpegs))} is a file")
    request = fleet_pb2.ListReviewSamplesRequest(
        site=site, bundle=bundle, label=label, limit=limit, include_jpeg=save_jpegs is not None, device=device
    )
    reply = OPTIONS.connection().call(lambda stub: stub.ListReviewSamples, request, timeout=60)
    saved = _save_jpegs(reply.samples, save_jpegs) if save_jpegs is not None else 0
    if is_structured(fmt):
        for s in reply.samples:
            s.sample.ClearField("jpeg")
        emit_structured(reply, fmt)
        return
    names = _device_names(site)
    columns = ["SAMPLE", "DEVICE", "SITE", "BUNDLE", "REASON", "CONF", "CAPTURED", "LABEL", "BY"]
    console.print(table(f"review samples ({len(reply.samples)})", columns, _review_rows(reply.samples, names)))
    fp = dict(reply.fp_rate)
    if fp:
        console.print(table("false-positive rate (labelled samples)", ["SITE", "BUNDLE", "FP RATE"], _fp_rows(fp)))
    else:
        console.print("no labelled samples yet: no false-positive rate", highlight=False)
    if save_jpegs is not None:
        console.print(f"saved {saved} JPEGs to {save_jpegs}", highlight=False)


@review_app.command("label")
@grpc_errors
def review_label(
    sample_id: str = typer.Argument(..., help="sample id (from fleetctl review list)"),
    label: str = typer.Argument(..., help="tp (true positive) or fp (false positive)"),
    device: str = typer.Option("", help="the device (id or name) the sample is from; needed when several have the id"),
    output: str = OutputOpt,
) -> None:
    """Label one review sample (a device's sample id) as a true or false positive."""
    fmt = check_format(output)
    if label not in LABELS:
        raise typer.BadParameter(f"label must be 'tp' or 'fp'; got {shown(label)}")
    info = OPTIONS.connection().call(
        lambda stub: stub.LabelReviewSample,
        fleet_pb2.LabelReviewSampleRequest(sample_id=sample_id, label=label, device=device),
    )
    if is_structured(fmt):
        info.sample.ClearField("jpeg")
        emit_structured(info, fmt)
        return
    console.print(
        f"labelled {info.sample_id} {info.label} (by {info.labeled_by or '-'}; device {info.device_id}, "
        f"site {info.site})",
        highlight=False,
    )


__all__ = [
    "GROUPS",
    "query_row",
    "review_app",
    "telemetry_app",
    "top_row",
]
