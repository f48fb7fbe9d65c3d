"""``edgefleet-controller``: run the fleet controller."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from edgefleet.logging import configure_logging

app = typer.Typer(help="The edgefleet controller: fleet registry, bundle store, rollouts, telemetry.")


@app.callback()
def main() -> None:
    """edgefleet controller."""


@app.command()
def serve(
    data_dir: Path = typer.Option(..., "--data-dir", help="SQLite database, blob directory and admin.token live here"),
    listen: str = typer.Option("127.0.0.1:7443", help="gRPC listen address host:port (port 0 = any)"),
    metrics_listen: str = typer.Option("", help="Prometheus /metrics on host:port (empty = off)"),
    database_url: str = typer.Option(
        "", envvar="EDGEFLEET_DATABASE_URL", help="SQLAlchemy URL (default: SQLite in --data-dir)"
    ),
    tls_cert: Path | None = typer.Option(None, help="server certificate (PEM); enables TLS"),
    tls_key: Path | None = typer.Option(None, help="server private key (PEM)"),
    tls_client_ca: Path | None = typer.Option(None, help="CA for client certificates; enables mutual TLS"),
    grace_s: float = typer.Option(10.0, help="seconds in-flight calls get to finish on SIGTERM"),
    log_level: str = typer.Option("info", help="debug, info, warning, error"),
    log_json: bool | None = typer.Option(None, "--log-json/--log-console", help="default: JSON unless a terminal"),
) -> None:
    """Serve DeviceService and FleetService (plus health and reflection) until SIGTERM."""
    from edgefleet_controller.bootstrap import build_controller
    from edgefleet_controller.bootstrap import serve as run_server
    from edgefleet_controller.memory import tune_malloc
    from edgefleet_controller.server import TlsConfig

    configure_logging(log_level, json=log_json)
    tune_malloc()
    tls = None
    if tls_cert or tls_key:
        if not (tls_cert and tls_key):
            raise typer.BadParameter("--tls-cert and --tls-key go together")
        tls = TlsConfig(tls_cert, tls_key, tls_client_ca)
    controller = build_controller(data_dir, store_url=database_url or None)
    asyncio.run(run_server(controller, listen, tls=tls, metrics_listen=metrics_listen or None, grace_s=grace_s))


def run() -> None:
    app()
