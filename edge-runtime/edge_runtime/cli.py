"""The ``edge-runtime`` console script: ``run`` the device agent, print a device's ``status``, ``profile`` a bundle,
``infer`` a bundle on images.

    edge-runtime run --controller HOST:PORT --data-dir DIR [--enroll-token T] [--name N] [--site-tags k=v]
                     --source SPEC [--health-listen ADDR] [--trusted-keys DIR]
    edge-runtime status --data-dir DIR      (JSON on stdout; exit 0 running, 3 not running, 2 no data dir)
    edge-runtime profile --bundle B ...   (``edge_runtime.profile_cli``)
    edge-runtime infer BUNDLE IMAGE...   (``edge_runtime.infer_cli``)

``run`` prints ``edge-runtime health listening on port N`` on stdout once the local health endpoint is up
(scripts and tests wait for that line), logs JSON to stderr, and exits 0 on SIGTERM. The crash drill
variable ``EDGEFLEET_CRASH_AT=<state>:<before|after>`` (optionally ``EDGEFLEET_CRASH_CANDIDATE=sha256:…``)
makes the process SIGKILL itself at that update-state boundary, as ``edge_runtime.update.crashdrill`` does.
The task drill ``EDGEFLEET_TASK_FAILURES=<task>:<n>[@<seconds>][,...]`` (e.g. ``telemetry:2@3``) makes the
first ``n`` runs of that supervised task fail that long (default 1 s) after they start
(``edge_runtime.agent.supervisor``).

Plain ``argparse`` (a device installs no typer or rich): a bad argument is a usage line and exit code 2;
an agent that cannot start (no credential, bad source) exits 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from edge_runtime.agent.agent import STATUS_FILE, AgentSettings
from edge_runtime.agent.client import use_tls
from edge_runtime.agent.errors import AgentError
from edge_runtime.agent.supervisor import DRILL_ENV, parse_task_drills
from edge_runtime.arguments import bounded_int
from edge_runtime.bootstrap import build_agent
from edge_runtime.infer_cli import add_infer_command
from edge_runtime.inference.errors import FrameSourceError
from edge_runtime.profile_cli import add_profile_command
from edge_runtime.status_report import NOT_RUNNING_EXIT, judge, status_document
from edge_runtime.update.crashdrill import CRASH_ENV, parse_crash_at
from edge_runtime.update.driver import DEFAULT_DISK_MARGIN_BYTES
from edge_runtime.update.journal import Journal
from edge_runtime.update.slots import BundleSlots
from edgefleet.contract.request_bounds import FETCH_CHUNK_MAX_BYTES, FETCH_CHUNK_MIN_BYTES
from edgefleet.contract.shown import shown
from edgefleet.logging import configure_logging

CRASH_CANDIDATE_ENV = "EDGEFLEET_CRASH_CANDIDATE"
ENROLL_TOKEN_ENV = "EDGEFLEET_ENROLL_TOKEN"


def default_name() -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")
    return (name or "device")[:63]


def parse_tags(values: Sequence[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise ValueError(f"--site-tags must be key=value, got {shown(value)}")
        tags[key.strip()] = val.strip()
    return tags


def _add_run_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser("run", help="Run the device agent until SIGTERM.", description="Run the device agent.")
    run.add_argument("--controller", required=True, help="controller address host:port")
    run.add_argument("--data-dir", type=Path, required=True, help="journal, bundles, credential and caches live here")
    run.add_argument("--source", required=True, help="'synthetic[:FPS]', 'images:DIR' or 'video:FILE'")
    run.add_argument(
        "--enroll-token", default=os.environ.get(ENROLL_TOKEN_ENV, ""), help=f"first start (env {ENROLL_TOKEN_ENV})"
    )
    run.add_argument("--name", default="", help="device name (default: from the hostname)")
    run.add_argument("--site-tags", action="append", default=[], help="tag key=value (repeatable)")
    run.add_argument("--health-listen", default="127.0.0.1:0", help="local gRPC health host:port")
    run.add_argument("--trusted-keys", type=Path, default=None, help="directory of <key_id>.pub.pem")
    run.add_argument(
        "--sync-wait-s", type=bounded_int(1, 300), default=30, help="long-poll hold time, seconds (default 30)"
    )
    run.add_argument(
        "--chunk-bytes",
        # the controller's FetchBlobRequest.chunk_bytes bound (request_bounds); the stall limit scales with this
        type=bounded_int(FETCH_CHUNK_MIN_BYTES, FETCH_CHUNK_MAX_BYTES),
        default=1 << 20,
        help="largest download chunk, at most 4 MiB; on a link that resets the fetcher asks for smaller ones "
        "(down to 16 KiB)",
    )
    run.add_argument(
        "--disk-margin-bytes",
        type=bounded_int(0),
        default=DEFAULT_DISK_MARGIN_BYTES,
        help="free disk kept beyond a download",
    )
    run.add_argument("--intra-op-threads", type=bounded_int(0), default=0, help="ORT threads (0 = ORT default)")
    run.add_argument("--frame-log", type=Path, default=None, help="append '<frame id> <bundle>' per frame")
    run.add_argument(
        "--failed-retry-s",
        type=float,
        default=60.0,
        help="seconds before a desired bundle that failed is tried again (default 60)",
    )
    run.add_argument("--log-level", default="info")
    run.add_argument("--tls", action="store_true", help="TLS to the controller (system roots unless --ca)")
    run.add_argument("--ca", type=Path, default=None, help="CA certificate (PEM) of the controller; implies --tls")
    run.add_argument("--client-cert", type=Path, default=None, help="client certificate (PEM) for mutual TLS")
    run.add_argument("--client-key", type=Path, default=None, help="client private key (PEM) for mutual TLS")
    run.set_defaults(command=lambda args: run_agent(run, args))


def run_agent(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the device agent until SIGTERM; its exit code."""
    configure_logging(args.log_level, json=True)
    if bool(args.client_cert) != bool(args.client_key):
        parser.error("--client-cert and --client-key go together")
    try:
        tags = parse_tags(args.site_tags)
    except ValueError as exc:
        parser.error(str(exc))
    if args.tls or args.ca or args.client_cert:
        use_tls(
            args.ca.read_bytes() if args.ca else None,
            args.client_cert.read_bytes() if args.client_cert else None,
            args.client_key.read_bytes() if args.client_key else None,
        )
    crash = os.environ.get(CRASH_ENV)
    try:
        crash_at = parse_crash_at(crash) if crash else None
        task_failures = parse_task_drills(os.environ.get(DRILL_ENV, ""))
    except ValueError as exc:
        parser.error(str(exc))
    settings = AgentSettings(
        controller=args.controller,
        data_dir=args.data_dir,
        source=args.source,
        enroll_token=args.enroll_token,
        name=args.name or default_name(),
        tags=tags,
        health_listen=args.health_listen,
        trusted_keys_dir=args.trusted_keys,
        sync_wait_s=args.sync_wait_s,
        chunk_bytes=args.chunk_bytes,
        disk_margin_bytes=args.disk_margin_bytes,
        intra_op_threads=args.intra_op_threads or None,
        frame_log=args.frame_log,
        failed_retry_s=args.failed_retry_s,
        crash_at=crash_at,
        crash_candidate=os.environ.get(CRASH_CANDIDATE_ENV) or None,
        task_failures=task_failures,
    )

    async def main() -> int:
        # grpc.aio objects bind to the running loop: build the agent inside it.
        agent = build_agent(settings, announce=lambda line: print(line, flush=True))
        return await agent.run()

    try:
        return asyncio.run(main())
    except (AgentError, FrameSourceError) as exc:
        print(f"edge-runtime: {exc}", file=sys.stderr, flush=True)
        return 2


def _add_status_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status",
        help="Print the update record and the runtime's status as JSON; exit 3 when it is not running.",
        description=(
            "Print the update journal's record and the runtime's last status as JSON, with running: true|false "
            "(pid alive, an edge runtime, status.json fresh). Exit 0 running, 3 not running, 2 no data dir."
        ),
    )
    status.add_argument("--data-dir", type=Path, required=True, help="the device's data directory")
    status.set_defaults(command=lambda args: print_status(args.data_dir))


def print_status(data_dir: Path) -> int:
    """Print the update journal's record and the runtime's last status, saying whether it is running
    (``edge_runtime.status_report``); JSON only on stdout, logs on stderr. Exit 0 when running,
    ``NOT_RUNNING_EXIT`` (3) when not, 2 when the data dir does not exist."""
    configure_logging("warning")
    if not data_dir.is_dir():
        print(f"edge-runtime: --data-dir {data_dir} does not exist", file=sys.stderr)
        return 2
    record = Journal(data_dir / "update", slots=BundleSlots(data_dir)).load()
    try:
        status = json.loads((data_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        status = None
    if not isinstance(status, dict):
        status = None
    liveness = judge(status, datetime.now(UTC))
    print(json.dumps(status_document(record.to_dict(), status, liveness), indent=2, sort_keys=True, default=str))
    return 0 if liveness.running else NOT_RUNNING_EXIT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-runtime", description="edgefleet edge runtime")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_run_command(commands)
    _add_status_command(commands)
    add_profile_command(commands)
    add_infer_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's) and run the command; its exit code (2: usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        command: Callable[[argparse.Namespace], int] | None = getattr(args, "command", None)
        if command is None:
            parser.print_help()
            return 2
        return command(args)
    except SystemExit as exc:  # argparse's usage errors and --help
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def run() -> None:
    sys.exit(main())
