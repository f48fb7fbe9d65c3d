"""``fleetctl keys``: publisher signing keys (Ed25519)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from edgefleet.contract.errors import ContractError
from edgefleet.contract.signing import PRIVATE_SUFFIX, PUBLIC_SUFFIX, generate_keypair
from fleetctl.errors import fail

keys_app = typer.Typer(help="Generate and manage bundle signing keys.", no_args_is_help=True)
_out = Console(soft_wrap=True)


@keys_app.command("generate")
def generate(
    out: Path = typer.Option(..., "--out", help="Directory for <key_id>.key.pem and <key_id>.pub.pem."),
    key_id: str | None = typer.Option(None, "--key-id", help="Key id; default: derived from the public key."),
) -> None:
    """Generate an Ed25519 signing key pair."""
    try:
        key = generate_keypair(key_id)
        out.mkdir(parents=True, exist_ok=True)
        private, public = out / f"{key.key_id}{PRIVATE_SUFFIX}", out / f"{key.key_id}{PUBLIC_SUFFIX}"
        key.save(private, public)
    except ContractError as exc:
        raise fail(exc) from None
    _out.print(f"key id:  {key.key_id}\nprivate: {private} (keep secret)\npublic:  {public}", highlight=False)
