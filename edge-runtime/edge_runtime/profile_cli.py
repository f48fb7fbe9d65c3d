"""``edge-runtime profile``: measure a bundle's latency on this device, print it, optionally report it home.

    edge-runtime profile --bundle B [--seconds 10] [--source synthetic:0] [--warmup 20] [--output table|json]
                         [--trusted DIR | --no-verify] [--precision fp32|int8] [--providers cpu,cuda]
                         [--report-to HOST:PORT --data-dir DIR]

``edge_runtime.cli`` mounts it (``add_profile_command``); tables are plain text (a device installs no rich).

Decisions:
- BUNDLE is a bundle directory or an ``.efb`` archive, opened and verified by ``edge_runtime.bundle_open``
  against ``--trusted DIR`` and/or the publisher keys of ``--data-dir``. ``--no-verify`` skips the signature
  for local experiments; the output says UNVERIFIED, and such a profile is never sent to a controller (its
  numbers would feed latency admission for a bundle nobody vouched for).
- ``--report-to ADDR`` sends one ``DeviceEvent(kind=KIND_PROFILE)`` through ``DeviceService.ReportEvent``
  authenticated with the device credential the agent stored in ``DATA_DIR/credential.json``.
- The profile (table or JSON) goes to stdout; logs and the report line go to stderr, so
  ``--output json > profile.json`` makes a file ``fleetctl budget --profile`` reads.
- Exit codes: 0 ok, 2 bad input (bundle, source, arguments), 1 the controller refused or was unreachable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import grpc

from edge_runtime.agent.client import bearer, blocking_channel
from edge_runtime.agent.enroll import credential_path, load_credential
from edge_runtime.agent.errors import AgentError
from edge_runtime.arguments import bounded_int
from edge_runtime.bundle_open import BundleInputError, open_bundle, trusted_keys
from edge_runtime.inference.errors import InferenceError
from edge_runtime.profiling import STAGES, DeviceProfile, profile_bundle, profile_event, profile_to_document
from edge_runtime.sources import open_source
from edge_runtime.telemetry.sensors import SensorReader
from edgefleet.contract.errors import ContractError
from edgefleet.contract.hardware import hardware_class
from edgefleet.logging import configure_logging
from edgefleet.v1 import device_pb2, device_pb2_grpc, telemetry_pb2

REPORT_TIMEOUT_S = 15.0


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


Row = Sequence[str]


def report_profile(address: str, data_dir: Path, profile: DeviceProfile) -> int:
    """Send the profile as a ``KIND_PROFILE`` event with the device credential; returns events accepted."""
    cred = load_credential(data_dir)
    if cred is None:
        raise BundleInputError(
            f"{credential_path(data_dir)}: not found; --report-to needs the --data-dir of an enrolled device "
            "(run the agent once with --enroll-token)"
        )
    event = profile_event(profile, f"profile-{uuid.uuid4()}")
    with blocking_channel(address) as channel:
        stub = device_pb2_grpc.DeviceServiceStub(channel)
        reply = stub.ReportEvent(
            device_pb2.ReportEventRequest(events=[event]), metadata=bearer(cred.credential), timeout=REPORT_TIMEOUT_S
        )
    return int(reply.accepted)


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _reading(reading: telemetry_pb2.SensorReading | None) -> str:
    if reading is None or reading.missing:
        return "missing"
    unit = "°C" if reading.kind == "temp_c" else " MHz"
    text = f"{reading.value:.1f}{unit}"
    if reading.max_value:
        text += f" / {reading.max_value:.0f}"
    return text


def text_table(rows: Sequence[Row], *, header: Row | None = None, title: str = "", right: int = 0) -> str:
    """Rows as aligned plain-text columns; the last ``right`` columns are right-aligned (numbers)."""
    lines = [header, *rows] if header is not None else list(rows)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))] if lines else []
    first_right = len(widths) - right

    def cells(line: Row) -> str:
        return "  ".join(
            cell.rjust(width) if i >= first_right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    out = [title] if title else []
    if header is not None:
        out += [cells(header), "  ".join("-" * width for width in widths)]
    out += [cells(line) for line in rows]
    return "\n".join(out) + "\n"


def render_table(profile: DeviceProfile, *, verified: bool) -> str:
    """Stage percentiles, run facts, the precision choice, and sensors before/after, as plain text."""
    title = f"latency profile: {profile.bundle.ref} on {profile.hardware_class}"
    if not verified:
        title += " (UNVERIFIED bundle, --no-verify)"
    stage_rows = [
        (name, _ms(s.p50_ms), _ms(s.p95_ms), _ms(s.p99_ms), str(s.count))
        for name, s in ((name, profile.stages[name]) for name in STAGES)
    ]
    stages = text_table(stage_rows, header=("stage", "p50 ms", "p95 ms", "p99 ms", "frames"), title=title, right=4)
    choice = profile.variant_choice
    figures = choice.get("figures")
    figure_text = ""
    if isinstance(figures, dict) and figures:
        figure_text = " (" + ", ".join(f"{n} p50 {f['p50_ms']:.3f} ms" for n, f in figures.items()) + ")"
    sla = profile.bundle.sla_ms
    facts = [
        ("bundle", f"{profile.bundle.ref} {profile.bundle.digest}"),
        ("provider", f"{profile.provider} (active: {', '.join(profile.active_providers)})"),
        ("precision", f"{profile.variant} [{profile.precision}]{figure_text}"),
        ("measured", f"{profile.frames} frames in {profile.seconds:.2f} s after {profile.warmup} warm-up frames"),
        ("fps", f"{profile.fps:.1f}"),
        ("sla", f"p95 {profile.total.p95_ms:.2f} ms vs bundle SLA {sla:g} ms (no headroom applied)"),
    ]
    refused = choice.get("refused")
    if isinstance(refused, dict) and refused:
        facts.append(("not served", "; ".join(str(v) for v in refused.values())))
    before = {r.name: r for r in profile.sensors_before}
    after = {r.name: r for r in profile.sensors_after}
    names = [r.name for r in profile.sensors_before] + [n for n in after if n not in before]
    sensor_rows = [(name, _reading(before.get(name)), _reading(after.get(name))) for name in names]
    sensors = text_table(sensor_rows, header=("sensor", "before", "after"), title="sensors")
    return "\n".join((stages, text_table(facts), sensors))


def add_profile_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Mount ``profile`` on the ``edge-runtime`` parser."""
    about = "Measure a bundle's latency on this device (pre, model, post, total; p50/p95/p99)."
    cmd = commands.add_parser("profile", help=about, description=about)
    cmd.add_argument("--bundle", "-b", type=Path, required=True, help="bundle directory or .efb archive")
    cmd.add_argument("--seconds", type=float, default=10.0, help="how long to measure, after warm-up")
    cmd.add_argument("--source", default="synthetic:0", help="'synthetic[:FPS]', 'images:DIR' or 'video:FILE'")
    cmd.add_argument("--warmup", type=bounded_int(0), default=20, help="frames run and discarded before measuring")
    formats = [f.value for f in OutputFormat]
    cmd.add_argument("--output", "-o", choices=formats, default=OutputFormat.table.value, help="table or json")
    cmd.add_argument("--report-to", default=None, help="controller host:port to send the profile to")
    cmd.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the device's data dir: credential.json, publisher keys, engine caches",
    )
    cmd.add_argument("--trusted", type=Path, default=None, help="directory of trusted <key_id>.pub.pem")
    cmd.add_argument("--no-verify", action="store_true", help="skip the signature check (local experiments only)")
    cmd.add_argument(
        "--precision",
        default=None,
        help="force a precision variant (fp32, int8); default: what this device would serve",
    )
    cmd.add_argument("--providers", default=None, help="comma list: tensorrt,cuda,cpu (default: bundle's)")
    cmd.add_argument("--max-frames", type=bounded_int(1), default=None, help="stop after this many measured frames")
    cmd.add_argument("--variant-runs", type=bounded_int(1), default=30, help="timed runs per precision variant")
    cmd.add_argument("--log-level", default="warning")
    cmd.set_defaults(command=profile_command)


def _error(message: str) -> int:
    print(f"edge-runtime profile: error: {message}", file=sys.stderr, flush=True)
    return 2


def profile_command(args: argparse.Namespace) -> int:
    """Measure p50/p95/p99 of pre, model, post and total latency of a bundle on this device; the exit code."""
    configure_logging(args.log_level, json=True)
    bundle: Path = args.bundle
    data_dir: Path | None = args.data_dir
    report_to: str | None = args.report_to
    no_verify: bool = args.no_verify
    if report_to and data_dir is None:
        print("error: --report-to needs --data-dir (the device credential lives there)", file=sys.stderr, flush=True)
        return 2
    if report_to and no_verify:
        print(
            "error: --report-to refuses an unverified bundle: drop --no-verify and pass --trusted DIR",
            file=sys.stderr,
            flush=True,
        )
        return 2
    providers: str | None = args.providers
    wanted = tuple(p.strip() for p in providers.split(",") if p.strip()) if providers else None
    try:
        keys = None if no_verify else trusted_keys(args.trusted, data_dir)
        with contextlib.ExitStack() as stack:
            opened = stack.enter_context(open_bundle(bundle, keys, verify=not no_verify, prefix="edgefleet-profile-"))
            bundle_dir, manifest = opened.path, opened.manifest
            if data_dir is not None:
                cache_dir = data_dir / "cache" / manifest.digest.removeprefix("sha256:")
            else:
                cache_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefleet-cache-")))
            reader = SensorReader(data_dir=data_dir or bundle_dir)
            # Synthetic frames keep the source's camera-like 640x480, so "pre" includes a real resize.
            frames = open_source(args.source)
            result = profile_bundle(
                bundle_dir,
                manifest,
                frames,
                seconds=args.seconds,
                warmup=args.warmup,
                read_sensors=lambda: reader.read().readings,
                now=lambda: datetime.now(UTC),
                hardware_class=hardware_class(),
                providers=wanted,
                precision=args.precision,
                variant_runs=args.variant_runs,
                cache_dir=cache_dir,
                max_frames=args.max_frames,
            )
    except (ContractError, InferenceError, BundleInputError, AgentError) as exc:
        return _error(str(exc))
    if OutputFormat(args.output) is OutputFormat.json:
        document = profile_to_document(result)
        document["verified"] = not no_verify
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_table(result, verified=not no_verify))
    sys.stdout.flush()
    if report_to:
        assert data_dir is not None
        try:
            accepted = report_profile(report_to, data_dir, result)
        except (AgentError, BundleInputError) as exc:
            return _error(str(exc))
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "ERROR"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            print(f"edge-runtime profile: report to {report_to} failed: {code}: {details}", file=sys.stderr, flush=True)
            return 1
        print(f"reported profile to {report_to}: {accepted} event(s) accepted", file=sys.stderr, flush=True)
    return 0
