"""The ``edge-runtime`` console script: ``run`` the device agent, print a device's ``status``.

    edge-runtime run --controller HOST:PORT --data-dir DIR [--enroll-token T] [--name N] [--site-tags k=v]
                     --source SPEC [--health-listen ADDR] [--trusted-keys DIR]
    edge-runtime status --data-dir DIR

``run`` prints ``edge-runtime health listening on port N`` on stdout once the local health endpoint is up
(scripts and tests wait for that line), logs JSON to stderr, and exits 0 on SIGTERM. The crash drill
variable ``EDGEFLEET_CRASH_AT=<state>:<before|after>`` (optionally ``EDGEFLEET_CRASH_CANDIDATE=sha256:…``)
makes the process SIGKILL itself at that update-state boundary, as ``edge_runtime.update.crashdrill`` does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from pathlib import Path

import typer

from edge_runtime.agent.agent import STATUS_FILE, AgentSettings, EdgeAgent
from edge_runtime.agent.client import use_tls
from edge_runtime.agent.errors import AgentError
from edge_runtime.inference.errors import FrameSourceError
from edge_runtime.update.crashdrill import CRASH_ENV, parse_crash_at
from edge_runtime.update.driver import DEFAULT_DISK_MARGIN_BYTES
from edge_runtime.update.journal import Journal
from edge_runtime.update.slots import BundleSlots
from edgefleet.logging import configure_logging

CRASH_CANDIDATE_ENV = "EDGEFLEET_CRASH_CANDIDATE"

app = typer.Typer(add_completion=False, no_args_is_help=True, help="edgefleet edge runtime")


def default_name() -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")
    return (name or "device")[:63]


def parse_tags(values: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--site-tags must be key=value, got {value!r}")
        tags[key.strip()] = val.strip()
    return tags


@app.command("run")
def run_agent(
    controller: str = typer.Option(..., "--controller", help="controller address host:port"),
    data_dir: Path = typer.Option(..., "--data-dir", help="journal, bundles, credential and caches live here"),
    source: str = typer.Option(..., "--source", help="'synthetic[:FPS]', 'images:DIR' or 'video:FILE'"),
    enroll_token: str = typer.Option("", "--enroll-token", envvar="EDGEFLEET_ENROLL_TOKEN", help="first start"),
    name: str = typer.Option("", "--name", help="device name (default: from the hostname)"),
    site_tags: list[str] = typer.Option([], "--site-tags", help="tag key=value (repeatable)"),
    health_listen: str = typer.Option("127.0.0.1:0", "--health-listen", help="local gRPC health host:port"),
    trusted_keys: Path | None = typer.Option(None, "--trusted-keys", help="directory of <key_id>.pub.pem"),
    sync_wait_s: int = typer.Option(30, "--sync-wait-s", min=1, max=300, help="long-poll hold time"),
    chunk_bytes: int = typer.Option(1 << 20, "--chunk-bytes", min=4096, help="download chunk size"),
    disk_margin_bytes: int = typer.Option(
        DEFAULT_DISK_MARGIN_BYTES, "--disk-margin-bytes", min=0, help="free disk kept beyond a download"
    ),
    intra_op_threads: int = typer.Option(0, "--intra-op-threads", min=0, help="ORT threads (0 = ORT default)"),
    frame_log: Path | None = typer.Option(None, "--frame-log", help="append '<frame id> <bundle>' per frame"),
    failed_retry_s: float = typer.Option(60.0, "--failed-retry-s", help="re-try a failed desired bundle after"),
    log_level: str = typer.Option("info", "--log-level"),
    tls: bool = typer.Option(False, "--tls", help="TLS to the controller (system roots unless --ca)"),
    ca: Path | None = typer.Option(None, "--ca", help="CA certificate (PEM) of the controller; implies --tls"),
    client_cert: Path | None = typer.Option(None, "--client-cert", help="client certificate (PEM) for mutual TLS"),
    client_key: Path | None = typer.Option(None, "--client-key", help="client private key (PEM) for mutual TLS"),
) -> None:
    """Run the device agent until SIGTERM."""
    configure_logging(log_level, json=True)
    if bool(client_cert) != bool(client_key):
        raise typer.BadParameter("--client-cert and --client-key go together")
    if tls or ca or client_cert:
        use_tls(
            ca.read_bytes() if ca else None,
            client_cert.read_bytes() if client_cert else None,
            client_key.read_bytes() if client_key else None,
        )
    crash = os.environ.get(CRASH_ENV)
    try:
        crash_at = parse_crash_at(crash) if crash else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = AgentSettings(
        controller=controller,
        data_dir=data_dir,
        source=source,
        enroll_token=enroll_token,
        name=name or default_name(),
        tags=parse_tags(site_tags),
        health_listen=health_listen,
        trusted_keys_dir=trusted_keys,
        sync_wait_s=sync_wait_s,
        chunk_bytes=chunk_bytes,
        disk_margin_bytes=disk_margin_bytes,
        intra_op_threads=intra_op_threads or None,
        frame_log=frame_log,
        failed_retry_s=failed_retry_s,
        crash_at=crash_at,
        crash_candidate=os.environ.get(CRASH_CANDIDATE_ENV) or None,
    )

    async def main() -> int:
        # grpc.aio objects bind to the running loop: build the agent inside it.
        agent = EdgeAgent(settings, announce=lambda line: print(line, flush=True))
        return await agent.run()

    try:
        code = asyncio.run(main())
    except (AgentError, FrameSourceError) as exc:
        print(f"edge-runtime: {exc}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command()
def status(data_dir: Path = typer.Option(..., "--data-dir", help="the device's data directory")) -> None:
    """Print the update journal's record (and the live status if the runtime is running)."""
    if not data_dir.is_dir():
        print(f"edge-runtime: --data-dir {data_dir} does not exist", file=sys.stderr)
        raise typer.Exit(2)
    record = Journal(data_dir / "update", slots=BundleSlots(data_dir)).load()
    out: dict[str, object] = {"update": record.to_dict()}
    live = data_dir / STATUS_FILE
    if live.is_file():
        try:
            out["runtime"] = json.loads(live.read_text(encoding="utf-8"))
        except ValueError:
            out["runtime"] = None
    print(json.dumps(out, indent=2, sort_keys=True, default=str))


def run() -> None:
    app()


def _mount_profile() -> None:
    from edge_runtime.profile_cli import profile

    app.command("profile", help="Measure a bundle's latency on this device (pre, model, post, total; p50/p95/p99).")(
        profile
    )


_mount_profile()
