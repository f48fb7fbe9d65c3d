"""The fleetctl typer app: creates the app, mounts the command groups, configures logging.

Command groups live in their own modules (``keys_cmds``, ``bundle_cmds``, ``fleet_cmds``, ...); add new ones
here with ``app.add_typer``. Controller address and token come from the root options, the environment
(``EDGEFLEET_CONTROLLER``, ``EDGEFLEET_TOKEN``) or ``~/.config/edgefleet/config.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from edgefleet.logging import configure_logging
from fleetctl import bundle_push, fleet_cmds, revocation_cmds
from fleetctl.budget_cmds import budget
from fleetctl.bundle_cmds import bundle_app
from fleetctl.keys_cmds import keys_app
from fleetctl.rollout_cmds import rollout_app
from fleetctl.settings import OPTIONS
from fleetctl.telemetry_cmds import review_app, telemetry_app

app = typer.Typer(name="fleetctl", help="Operate an edgefleet: bundles, keys, fleets.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(bundle_app, name="bundle")
app.add_typer(fleet_cmds.get_app, name="get")
app.add_typer(fleet_cmds.describe_app, name="describe")
app.add_typer(fleet_cmds.token_app, name="token")
app.add_typer(fleet_cmds.devices_app, name="devices")
app.add_typer(fleet_cmds.config_app, name="config")
app.add_typer(rollout_app, name="rollout")
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(review_app, name="review")
app.command("apply")(fleet_cmds.apply)
app.command("budget")(budget)
bundle_app.command("push")(bundle_push.push)
keys_app.command("trust")(fleet_cmds.trust)
fleet_cmds.token_app.command("list")(revocation_cmds.token_list)
for _name, _command in (
    ("disable", revocation_cmds.device_disable),
    ("enable", revocation_cmds.device_enable),
    ("delete", revocation_cmds.device_delete),
    ("rotate-credential", revocation_cmds.device_rotate_credential),
):
    fleet_cmds.devices_app.command(_name)(_command)
app.add_typer(fleet_cmds.devices_app, name="device", help="Act on one device (alias of devices).", hidden=True)


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug events to stderr."),
    controller: str | None = typer.Option(None, "--controller", "-c", help="controller host:port"),
    token: str | None = typer.Option(None, "--token", help="operator token (eot_…)"),
    ca: Path | None = typer.Option(None, "--ca", help="CA certificate (PEM) to verify the controller's TLS"),
    client_cert: Path | None = typer.Option(None, "--client-cert", help="client certificate (PEM), mutual TLS"),
    client_key: Path | None = typer.Option(None, "--client-key", help="client private key (PEM), mutual TLS"),
) -> None:
    configure_logging("debug" if verbose else "warning")
    OPTIONS.controller = controller
    OPTIONS.token = token
    OPTIONS.ca = ca
    OPTIONS.client_cert = client_cert
    OPTIONS.client_key = client_key


def run() -> None:
    app()
