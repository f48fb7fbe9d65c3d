"""fleetctl revocation commands (admin): ``token list`` (operator tokens with their last use), ``token revoke``
of an operator token, ``token operator --expires`` parsing, and ``device disable|enable|delete|
rotate-credential``. Each change takes effect on the device's or token's next call, on every replica.
Mounted by ``main`` on the ``token`` and ``devices``/``device`` groups."""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.markup import escape

from edgefleet.contract.shown import shown
from edgefleet.v1 import common_pb2, fleet_pb2
from fleetctl.durations import parse_duration
from fleetctl.errors import grpc_errors
from fleetctl.output import (
    OutputOpt,
    age,
    check_format,
    console,
    emit_structured,
    emit_table,
    err_console,
    printable,
    ts,
)
from fleetctl.settings import OPTIONS

#: ``--expires`` of an operator token that never expires (it must be asked for by name).
NEVER = "never"


def operator_ttl(expires: str) -> tuple[int, bool]:
    """``--expires`` of ``token operator`` → (ttl_s, no_expiry). ``never`` asks for no expiry (with a
    warning); ``0`` no longer means that and is refused, so an old script does not mint an eternal token."""
    if expires.strip().lower() == NEVER:
        err_console.print(
            "[yellow]warning:[/yellow] this token never expires; revoke it with fleetctl token revoke when "
            "it is no longer needed",
            highlight=False,
        )
        return 0, True
    ttl_s = parse_duration(expires)
    if ttl_s <= 0:
        note = " (0 no longer means no expiry)" if ttl_s == 0 else ""
        raise typer.BadParameter(
            f"--expires must be a lifetime (90s, 15m, 24h, 90d) or 'never'; got {shown(escape(expires[:40]))}{note}"
        )
    return ttl_s, False


def token_state(t: fleet_pb2.OperatorToken, now: datetime) -> str:
    if t.HasField("revoked_at"):
        return "revoked"
    if t.HasField("expires_at") and t.expires_at.ToDatetime(tzinfo=UTC) <= now:
        return "expired"
    return "active"


@grpc_errors
def token_list(output: str = OutputOpt) -> None:
    """List operator tokens: role, state, expiry and last use (recorded at most once a minute)."""
    fmt = check_format(output)
    reply = OPTIONS.connection().call(lambda stub: stub.ListOperatorTokens, fleet_pb2.ListOperatorTokensRequest())
    now = datetime.now(UTC)
    emit_table(
        list(reply.tokens),
        fmt,
        f"operator tokens ({len(reply.tokens)})",
        ["ID", "NAME", "ROLE", "STATE", "EXPIRES", "LAST USED"],
        lambda t: [
            t.id,
            printable(t.name),
            t.role,
            token_state(t, now),
            ts(t.expires_at) if t.HasField("expires_at") else NEVER,
            f"{age(t.last_used_at)} ago" if t.HasField("last_used_at") else "never",
        ],
        ["CREATED", "REVOKED"],
        lambda t: [ts(t.created_at), ts(t.revoked_at)],
    )


def is_operator_token(token_id: str) -> bool:
    """Whether ``token_id`` (``eot_…``, ``eft_…`` or a bare id) names an operator token rather than an
    enrollment token; a bare id is looked up among the operator tokens."""
    if token_id.startswith(("eot_", "eft_")):
        return token_id.startswith("eot_")
    reply = OPTIONS.connection().call(lambda stub: stub.ListOperatorTokens, fleet_pb2.ListOperatorTokensRequest())
    return any(t.id == token_id for t in reply.tokens)


def own_token_id(secret: str) -> str:
    """The id of the operator token ``secret`` (``eot_<id>.<secret>``); '' for anything else."""
    head, dot, _ = secret.partition(".")
    return head.removeprefix("eot_") if dot and head.startswith("eot_") else ""


def revoke_operator_token(token_id: str, *, yes: bool = False, force_last_admin: bool = False) -> None:
    """Revoke an operator token; the one fleetctl itself uses only with ``yes`` (with a warning), the last
    admin token only with ``force_last_admin`` (the controller refuses it otherwise)."""
    conn = OPTIONS.connection()
    if own_token_id(conn.token) == token_id.removeprefix("eot_"):
        if not yes:
            raise typer.BadParameter(
                f"{shown(escape(token_id[:80]))} is the token this fleetctl is using: revoking it ends its access "
                "from the next call; add --yes to revoke it anyway",
                param_hint="--yes",
            )
        err_console.print(
            "[yellow]warning:[/yellow] revoking the token this fleetctl is using; its next call is refused",
            highlight=False,
        )
    request = fleet_pb2.RevokeOperatorTokenRequest(token_id=token_id, allow_last_admin=force_last_admin)
    token = conn.call(lambda stub: stub.RevokeOperatorToken, request)
    console.print(
        f"revoked operator token {token.id} ({printable(token.name)}, {token.role}) at {ts(token.revoked_at)}; "
        "it is refused from its next call",
        highlight=False,
    )


# ------------------------------------------------------------------ devices


def _device_call(method: str, device: str) -> common_pb2.Device:
    request = fleet_pb2.DeviceActionRequest(device=device)
    reply: common_pb2.Device = OPTIONS.connection().call(lambda stub: getattr(stub, method), request)
    return reply


@grpc_errors
def device_disable(device: str = typer.Argument(..., help="device id or name"), output: str = OutputOpt) -> None:
    """Disable a device: its credential is refused from its next call; its state is kept."""
    fmt = check_format(output)
    d = _device_call("DisableDevice", device)
    if fmt in ("json", "yaml"):
        emit_structured(d, fmt)
        return
    console.print(
        f"disabled device {escape(d.name)} ({d.id}, site {escape(d.site)}) at {ts(d.disabled_at)}; "
        f"re-enable it with: fleetctl device enable {d.id}",
        highlight=False,
    )


@grpc_errors
def device_enable(device: str = typer.Argument(..., help="device id or name"), output: str = OutputOpt) -> None:
    """Re-enable a disabled device (it is accepted again on its next call)."""
    fmt = check_format(output)
    d = _device_call("EnableDevice", device)
    if fmt in ("json", "yaml"):
        emit_structured(d, fmt)
        return
    console.print(f"enabled device {escape(d.name)} ({d.id}, site {escape(d.site)})", highlight=False)


@grpc_errors
def device_delete(
    device: str = typer.Argument(..., help="device id or name"),
    yes: bool = typer.Option(False, "--yes", help="really delete: no undo"),
) -> None:
    """Delete a device: its credential stops working at once, its desired state, tags, events and telemetry
    go with it, and its name is free to enroll again. Asks for --yes."""
    if not yes:
        raise typer.BadParameter(
            f"deleting device {shown(escape(device[:80]))} cannot be undone (it must enroll again with a new token); "
            "add --yes, or use fleetctl device disable to keep it",
            param_hint="--yes",
        )
    reply = OPTIONS.connection().call(lambda stub: stub.DeleteDevice, fleet_pb2.DeviceActionRequest(device=device))
    console.print(f"deleted device {escape(reply.name)} ({reply.device_id})", highlight=False)


@grpc_errors
def device_rotate_credential(device: str = typer.Argument(..., help="device id or name")) -> None:
    """Give a device a new credential, printed once; the old one is refused from now on."""
    reply = OPTIONS.connection().call(
        lambda stub: stub.RotateDeviceCredential, fleet_pb2.DeviceActionRequest(device=device)
    )
    d = reply.device
    err_console.print(
        f"new credential for device {escape(d.name)} ({d.id}); the old one is refused from now on. Install it on "
        'the device (edge-runtime: replace the "credential" value in DATA_DIR/credential.json, mode 0600, '
        "then restart the agent). It is shown only this once.",
        highlight=False,
    )
    print(reply.credential)
