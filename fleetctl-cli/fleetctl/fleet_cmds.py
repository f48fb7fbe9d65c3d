"""fleetctl commands that talk to the controller: get, describe, apply, token, devices, config, and the
``keys trust`` command (``bundle push`` is ``bundle_push``). kubectl-like: ``-o table|wide|json|yaml``."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import typer
from rich.markup import escape

from edgefleet.contract.shown import shown
from edgefleet.v1 import common_pb2, fleet_pb2, telemetry_pb2
from fleetctl import revocation_cmds
from fleetctl.durations import parse_duration
from fleetctl.errors import grpc_errors
from fleetctl.output import (
    OutputOpt,
    age,
    check_format,
    console,
    device_health,
    emit_data,
    emit_structured,
    emit_table,
    err_console,
    is_structured,
    short_digest,
    table,
    ts,
    update_state_name,
)
from fleetctl.settings import OPTIONS

get_app = typer.Typer(help="List devices, bundles, sites, rollouts.", no_args_is_help=True)
describe_app = typer.Typer(help="Show one object in detail.", no_args_is_help=True)
token_app = typer.Typer(help="Enrollment and operator tokens (admin).", no_args_is_help=True)
devices_app = typer.Typer(help="Act on devices directly (outside rollouts).", no_args_is_help=True)
config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)


# ------------------------------------------------------------------ get


def list_devices(site: str, tags: Sequence[str] = (), bundle: str = "", health: str = "") -> list[common_pb2.Device]:
    """Every device matching the filters, page by page."""
    conn = OPTIONS.connection()
    request = fleet_pb2.ListDevicesRequest(site=site, tags=tags, bundle=bundle, page_size=500)
    if health:
        names = [n.removeprefix("HEALTH_").lower() for n, _ in common_pb2.Health.items() if n != "HEALTH_UNSPECIFIED"]
        if health.lower() not in names:
            raise typer.BadParameter(f"--health must be one of {', '.join(names)}; got {shown(health)}")
        request.health = common_pb2.Health.Value(f"HEALTH_{health.upper()}")
    devices: list[common_pb2.Device] = []
    with conn.fleet() as stub:
        while True:
            reply = stub.ListDevices(request, metadata=conn.metadata, timeout=30)
            devices.extend(reply.devices)
            if not reply.next_page_token:
                return devices
            request.page_token = reply.next_page_token


@get_app.command("devices")
@grpc_errors
def get_devices(
    output: str = OutputOpt,
    site: str = typer.Option("", help="only this site"),
    tag: list[str] = typer.Option([], help="key=value; repeat to require several"),
    bundle: str = typer.Option("", help="running this bundle (digest or name@version)"),
    health: str = typer.Option("", help="starting, serving, degraded, failing, offline, disabled"),
) -> None:
    """List devices."""
    fmt = check_format(output)
    devices = list_devices(site, tag, bundle, health)
    emit_table(
        devices,
        fmt,
        f"devices ({len(devices)})",
        ["NAME", "SITE", "HEALTH", "BUNDLE", "UPDATE", "LAST SEEN"],
        lambda d: [
            d.name,
            d.site,
            device_health(d),
            short_digest(d.reported.running_bundle_digest),
            update_state_name(d.reported.update_state),
            age(d.last_seen),
        ],
        ["ID", "CLASS", "PROVIDERS", "DESIRED", "TAGS"],
        lambda d: [
            d.id,
            d.hardware.hardware_class + (" (mismatch)" if d.hardware_mismatch else ""),
            ",".join(p.removesuffix("ExecutionProvider") for p in d.reported.active_providers) or "-",
            short_digest(d.desired.bundle_digest),
            ",".join(f"{k}={v}" for k, v in sorted(d.tags.items())) or "-",
        ],
    )


@get_app.command("bundles")
@grpc_errors
def get_bundles(output: str = OutputOpt, name: str = typer.Option("", help="only bundles of this name")) -> None:
    """List bundles stored by the controller."""
    fmt = check_format(output)
    reply = OPTIONS.connection().call(lambda stub: stub.ListBundles, fleet_pb2.ListBundlesRequest(name=name))
    emit_table(
        list(reply.bundles),
        fmt,
        f"bundles ({len(reply.bundles)})",
        ["NAME", "VERSION", "DIGEST", "SIZE", "SLA", "KIND"],
        lambda b: [
            b.name,
            b.version,
            short_digest(b.digest),
            f"{b.size_bytes / 1e6:.1f} MB",
            f"{b.sla_ms:g} ms",
            b.postprocess_kind,
        ],
        ["KEY", "CREATED"],
        lambda b: [b.key_id, age(b.created_at)],
    )


@get_app.command("sites")
@grpc_errors
def get_sites(output: str = OutputOpt) -> None:
    """Per-site summary: devices by bundle version and health."""
    fmt = check_format(output)
    reply = OPTIONS.connection().call(lambda stub: stub.ListSites, fleet_pb2.ListSitesRequest())
    emit_table(
        list(reply.sites),
        fmt,
        f"sites ({len(reply.sites)})",
        ["SITE", "DEVICES", "BUNDLES", "HEALTH"],
        lambda s: [
            s.site,
            str(s.devices),
            ", ".join(f"{k}: {v}" for k, v in sorted(s.by_bundle.items())),
            ", ".join(f"{k}: {v}" for k, v in sorted(s.by_health.items())),
        ],
    )


# ------------------------------------------------------------------ describe


#: Events ``describe device`` shows: the device's newest (ListDeviceEvents returns the newest, oldest first).
RECENT_EVENTS = 10


def disabled_line(d: common_pb2.Device) -> str:
    """describe's line for a disabled device: since when, and how to undo it."""
    return (
        f"[bold red]disabled:[/bold red]    since {ts(d.disabled_at)} ({age(d.disabled_at)} ago; its calls are "
        f"refused); re-enable it with: fleetctl device enable {d.id}"
    )


def health_reason(reported: common_pb2.ReportedState) -> str:
    """A ``why: <reason>`` line when the device said why it is not SERVING (``details.health_reason``), else ''."""
    value = reported.details.fields.get("health_reason")
    reason = value.string_value if value is not None else ""
    return f"\n             why: {escape(reason)}" if reason else ""


def download_line(reported: common_pb2.ReportedState) -> str | None:
    """``download: 12.3 of 30.0 MB (41%), 210 KB/s, 37 resets, 2 stalls, chunk 64 KiB`` while the device reports an
    artifact download in flight (``details.download``), else None."""
    value = reported.details.fields.get("download")
    if value is None or not value.HasField("struct_value"):
        return None
    d = {k: v.number_value for k, v in value.struct_value.fields.items() if v.HasField("number_value")}
    kept, total = d.get("bytes_kept", 0.0), d.get("total_bytes", 0.0)
    share = f" ({100 * kept / total:.0f}%)" if total else ""
    return (
        f"download:    {kept / 1e6:.1f} of {total / 1e6:.1f} MB{share}, {d.get('rate_bps', 0.0) / 1e3:.0f} KB/s, "
        f"{d.get('resets', 0.0):.0f} resets, {d.get('stalls', 0.0):.0f} stalls, "
        f"chunk {d.get('chunk_bytes', 0.0) / 1024:.0f} KiB"
    )


def precision_lines(reported: common_pb2.ReportedState) -> list[str]:
    """``precision: int8-u8s8 (U8S8 QDQ) on CPUExecutionProvider, 3.1x vs fp32: fp32 p50 24.9 ms, int8 44.3 ms,
    int8-u8s8 7.8 ms (measured on the device)`` and one ``refused`` line per refused variant, from the device's
    ``details.precision`` (the choice of the engine it serves); [] when it reports none."""
    value = reported.details.fields.get("precision")
    if value is None or not value.HasField("struct_value"):
        return []
    c = value.struct_value.fields

    def text(key: str) -> str:
        v = c.get(key)
        return escape(v.string_value) if v is not None and v.HasField("string_value") else ""

    def number(key: str) -> float:
        v = c.get(key)
        return v.number_value if v is not None and v.HasField("number_value") else 0.0

    chosen, reference = text("chosen") or "-", text("reference")
    kind = text("kind") or text("precision").upper()
    line = f"precision:   {chosen}{f' ({kind})' if kind else ''} on {text('provider') or '-'}"
    figures = c.get("figures")
    p50s: list[str] = []
    if figures is not None and figures.HasField("struct_value"):
        for name, fig in sorted(figures.struct_value.fields.items()):
            p50 = fig.struct_value.fields.get("p50_ms") if fig.HasField("struct_value") else None
            if p50 is not None and p50.HasField("number_value"):
                ms = p50.number_value
                shown_ms = f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"
                p50s.append(f"{escape(name)} {'p50 ' if not p50s else ''}{shown_ms} ms")
    if p50s:
        # The reference is the chosen variant itself when the device's config left FP32 out of the choice.
        left_out = reference == chosen and text("precision") != "fp32"
        versus = "fp32 not measured" if left_out else f"{number('speedup'):.1f}x vs {reference or '-'}"
        line += f", {versus}: {', '.join(p50s)} (measured on the {text('measured_on') or 'device'})"
    else:
        line += ", the only servable variant (nothing measured)"
    note = text("note")
    if note:
        # The device could not serve what its config asked for and says what it serves instead.
        line += f"; {note}"
    elif text("requested") not in ("", "auto"):
        line += f"; inference.precision {text('requested')}"
    lines = [line]
    refused = c.get("refused")
    if refused is not None and refused.HasField("struct_value"):
        # Each reason names its variant ("int8: accuracy loss 5.00% is above the bound 1.00%").
        lines.extend(
            f"             refused {escape(reason.string_value)}"
            for _, reason in sorted(refused.struct_value.fields.items())
        )
    return lines


@describe_app.command("device")
@grpc_errors
def describe_device(device: str = typer.Argument(..., help="device id or name"), output: str = OutputOpt) -> None:
    """Show one device: identity, hardware, desired and reported state, last verdict, recent events."""
    fmt = check_format(output)
    conn = OPTIONS.connection()
    with conn.fleet() as stub:
        d = stub.GetDevice(fleet_pb2.GetDeviceRequest(device=device), metadata=conn.metadata, timeout=30)
        events = stub.ListDeviceEvents(
            fleet_pb2.ListDeviceEventsRequest(device=d.id, limit=RECENT_EVENTS), metadata=conn.metadata, timeout=30
        )
    if is_structured(fmt):
        emit_structured(d, fmt)
        return
    r = d.reported
    lines = [
        f"[bold]{d.name}[/bold]  ({d.id})",
        f"site:        {d.site}",
        f"tags:        {', '.join(f'{k}={v}' for k, v in sorted(d.tags.items())) or '-'}",
        f"hardware:    {d.hardware.hardware_class}  cores={d.hardware.cpu_cores}  "
        f"providers={','.join(d.hardware.execution_providers) or '-'}",
        *([f"[bold red]mismatch:[/bold red]    {escape(d.hardware_mismatch)}"] if d.hardware_mismatch else []),
        f"health:      {device_health(d)}   last seen {age(d.last_seen)} ago{health_reason(r)}",
        *([disabled_line(d)] if d.HasField("disabled_at") else []),
        f"desired:     bundle {d.desired.bundle_digest or '-'}  config {short_digest(d.desired.config_digest)}  "
        f"revision {d.desired.revision}  ({d.desired.reason or '-'})",
        f"running:     bundle {r.running_bundle_digest or '-'}  config {short_digest(r.running_config_digest)}",
        f"update:      {update_state_name(r.update_state)}  candidate {short_digest(r.candidate_bundle_digest)}  "
        f"{r.update_reason}",
        *filter(None, [download_line(r)]),
        f"providers:   {', '.join(r.active_providers) or '-'}",
        *precision_lines(r),
        f"slots:       {', '.join(short_digest(s) for s in r.slot_digests) or '-'}",
    ]
    if r.HasField("last_verdict") and r.last_verdict.outcome:
        v = r.last_verdict
        outcome = common_pb2.CanaryVerdict.Outcome.Name(v.outcome).removeprefix("OUTCOME_").lower()
        lines.append(
            f"verdict:     {outcome} ({v.phase}) frames={v.frames} p95 {v.candidate_latency.p95_ms:.2f} ms "
            f"vs {v.baseline_latency.p95_ms:.2f} ms budget {v.latency_budget_ms:.2f} ms psi={v.psi:.3f} "
            f"agreement={v.agreement:.3f}"
        )
        lines.extend(f"             - {reason}" for reason in v.reasons)
    for line in lines:
        console.print(line, highlight=False)
    if events.events:
        console.print(f"events (the newest {RECENT_EVENTS}, newest last):")
        for e in events.events:
            console.print(event_line(e), highlight=False)


def event_line(e: telemetry_pb2.DeviceEvent) -> str:
    """``describe device``'s line for one event: a transition shows ``from→to``, a verdict its outcome and phase,
    a frame gap its count and cause; every kind ends with the event's reason."""
    kind = telemetry_pb2.DeviceEvent.Kind.Name(e.kind).removeprefix("KIND_").lower()
    if e.kind == telemetry_pb2.DeviceEvent.KIND_CANARY_VERDICT and e.verdict.outcome:
        outcome = common_pb2.CanaryVerdict.Outcome.Name(e.verdict.outcome).removeprefix("OUTCOME_").lower()
        detail = f"{outcome} ({e.verdict.phase or '-'})"
    elif e.kind == telemetry_pb2.DeviceEvent.KIND_FRAME_GAP and e.HasField("frame_gap"):
        g = e.frame_gap
        count = f"{g.frames}" if g.frames_known else f">= {g.frames}" if g.frames else "unknown"
        detail = f"{count} frames lost ({g.cause or '-'})"
    elif e.from_state or e.to_state:
        detail = f"{update_state_name(e.from_state)}→{update_state_name(e.to_state)}"
    else:
        detail = ""
    return " ".join(filter(None, [f"  {ts(e.at)}  {kind:14}", detail, e.reason]))


def quarantine_line(q: fleet_pb2.QuarantinedBlob) -> str:
    """``describe bundle``'s line (rich markup) for an artifact found corrupt on the controller's disk."""
    state = "restored (pushed again)" if q.restored else "[red]not served: push the bundle again[/red]"
    return (
        f"[red]quarantined:[/red] {ts(q.at)}  {escape(q.role)} {q.digest} hashed to {short_digest(q.actual_digest)} "
        f"(found by {escape(q.detected_by)}); {state}"
    )


@describe_app.command("bundle")
@grpc_errors
def describe_bundle(ref: str = typer.Argument(..., help="digest or name@version"), output: str = OutputOpt) -> None:
    """Show one bundle: identity, artifacts, devices running it, and every canary failure recorded for it."""
    fmt = check_format(output)
    reply = OPTIONS.connection().call(lambda stub: stub.GetBundle, fleet_pb2.GetBundleRequest(ref=ref))
    if is_structured(fmt):
        emit_structured(reply, fmt)
        return
    b = reply.bundle
    lines = [
        f"[bold]{b.name}@{b.version}[/bold]  ({b.digest})",
        f"signed by:   {b.key_id}",
        f"sla:         {b.sla_ms:g} ms   postprocess {b.postprocess_kind}   {b.size_bytes / 1e6:.1f} MB",
        f"running on:  {reply.running_devices} device(s)",
        "artifacts:",
        *(f"  {a.role:18} {short_digest(a.digest)}  {a.size_bytes:>12} B  {a.path}" for a in reply.artifacts),
    ]
    if reply.canary_failures:
        lines.append(
            f"[red]canary failures ({len(reply.canary_failures)}):[/red] new rollouts are refused unless --force"
        )
        lines.extend(
            f"  {ts(f.at)}  {f.device_name or f.device_id:16} {f.kind:12} {f.rollout_id or '-'}  {f.summary}"
            for f in reply.canary_failures
        )
    else:
        lines.append("canary failures: none")
    lines.extend(quarantine_line(q) for q in reply.quarantined_blobs)
    for line in lines:
        console.print(line, highlight=False)


# ------------------------------------------------------------------ apply


def _manifest_files(path: Path) -> Iterator[Path]:
    if path.is_dir():
        yield from sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    elif path.exists():
        yield path
    else:
        raise typer.BadParameter(f"{path}: no such file or directory")


@grpc_errors
def apply(
    file: list[Path] = typer.Option(..., "-f", "--file", help="manifest file or directory (repeatable)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and show what would change"),
    stage: bool = typer.Option(
        False,
        "--stage",
        help="store the config documents staged, not live: they take effect through a Rollout whose "
        "spec.target.config (or 'fleetctl rollout create --config') names them",
    ),
) -> None:
    """Apply config manifests (FleetConfig, SiteConfig, DeviceConfig, Rollout).

    A config document that a Rollout in the same apply targets (spec.target.config) is staged instead of live,
    and canaried device by device; it becomes live when that rollout completes."""
    files = [
        fleet_pb2.ManifestFile(name=str(p), content=p.read_text(encoding="utf-8"))
        for f in file
        for p in _manifest_files(f)
    ]
    if not files:
        raise typer.BadParameter("no *.yaml or *.yml files found")
    reply = OPTIONS.connection().call(
        lambda stub: stub.ApplyConfig,
        fleet_pb2.ApplyConfigRequest(files=files, dry_run=dry_run, stage=stage),
        timeout=60,
    )
    for line in reply.results:
        console.print(line, highlight=False)
    suffix = " (dry run)" if dry_run else ""
    console.print(
        f"config revision {reply.revision}; {reply.devices_changed} device(s) get a new config{suffix}",
        highlight=False,
    )
    for rid in reply.rollout_ids:
        console.print(f"rollout {rid} created", highlight=False)


# ------------------------------------------------------------------ keys trust


@grpc_errors
def trust(
    public_key: Path = typer.Argument(..., exists=True, dir_okay=False, help="<key_id>.pub.pem"),
    key_id: str = typer.Option("", help="key id (default: from the file name)"),
) -> None:
    """Add a publisher's public key to the fleet's trusted keys (admin)."""
    kid = key_id or public_key.name.removesuffix(".pem").removesuffix(".pub")
    reply = OPTIONS.connection().call(
        lambda stub: stub.AddTrustedKey,
        fleet_pb2.AddTrustedKeyRequest(key_id=kid, public_key_pem=public_key.read_text()),
    )
    console.print(f"trusted key {reply.key_id}", highlight=False)


# ------------------------------------------------------------------ tokens


def _print_secret(secret: str, note: str) -> None:
    """A new token is printed once: the note on stderr, the secret alone on stdout (for ``$(fleetctl ...)``)."""
    err_console.print(note, highlight=False)
    print(secret)


@token_app.command("create")
@grpc_errors
def token_create(
    site: str = typer.Option(..., help="site the enrolled devices join"),
    expires: str = typer.Option("24h", help="lifetime: 90s, 15m, 24h, 7d"),
    max_uses: int = typer.Option(0, help="0 = unlimited until expiry"),
) -> None:
    """Create an enrollment token; it is printed once."""
    reply = OPTIONS.connection().call(
        lambda stub: stub.CreateEnrollmentToken,
        fleet_pb2.CreateEnrollmentTokenRequest(site=site, ttl_s=parse_duration(expires), max_uses=max_uses),
    )
    _print_secret(
        reply.token, f"enrollment token {reply.token_id} for site {site}, expires {reply.expires_at.ToJsonString()}"
    )


@token_app.command("revoke")
@grpc_errors
def token_revoke(
    token_id: str = typer.Argument(..., help="token id (eot_/eft_ prefix optional)"),
    yes: bool = typer.Option(False, "--yes", help="also when it is the token this fleetctl is using"),
    force_last_admin: bool = typer.Option(
        False, "--force-last-admin", help="also the last admin token (only a controller restart recovers)"
    ),
) -> None:
    """Revoke an operator token (ids from fleetctl token list) or an enrollment token."""
    if revocation_cmds.is_operator_token(token_id):
        revocation_cmds.revoke_operator_token(token_id, yes=yes, force_last_admin=force_last_admin)
        return
    OPTIONS.connection().call(
        lambda stub: stub.RevokeEnrollmentToken, fleet_pb2.RevokeEnrollmentTokenRequest(token_id=token_id)
    )
    console.print(f"revoked {token_id}")


@token_app.command("operator")
@grpc_errors
def token_operator(
    name: str = typer.Option(..., help="who or what uses it"),
    role: str = typer.Option("viewer", help="viewer, operator or admin"),
    expires: str = typer.Option("90d", help="lifetime: 24h, 90d, ... or 'never' (no expiry, with a warning)"),
) -> None:
    """Create an operator token; it is printed once."""
    ttl_s, no_expiry = revocation_cmds.operator_ttl(expires)
    reply = OPTIONS.connection().call(
        lambda stub: stub.CreateOperatorToken,
        fleet_pb2.CreateOperatorTokenRequest(name=name, role=role, ttl_s=ttl_s, no_expiry=no_expiry),
    )
    until = reply.expires_at.ToJsonString() if reply.HasField("expires_at") else "never"
    _print_secret(reply.token, f"operator token {reply.token_id} ({role}), expires {until}")


# ------------------------------------------------------------------ devices / config


@devices_app.command("set-bundle")
@grpc_errors
def set_bundle(
    bundle: str = typer.Argument(..., help="digest or name@version"),
    device: str = typer.Option("", help="device id or name"),
    site: str = typer.Option("", help="every device of this site"),
) -> None:
    """Set the desired bundle of a device or a whole site (rollouts are the normal way)."""
    if bool(device) == bool(site):
        raise typer.BadParameter("give exactly one of --device or --site")
    request = fleet_pb2.SetDesiredBundleRequest(bundle=bundle)
    if device:
        request.device = device
    else:
        request.site = site
    reply = OPTIONS.connection().call(lambda stub: stub.SetDesiredBundle, request)
    console.print(f"{len(reply.revisions)} device(s) now want {bundle}", highlight=False)


@config_app.command("effective")
@grpc_errors
def effective(device: str = typer.Argument(..., help="device id or name"), output: str = OutputOpt) -> None:
    """Show the policy a device runs with: per key, its value and the layer it came from.

    Layers, lowest first: defaults < the bundle's declared policy (desired bundle, else running) <
    FleetConfig < SiteConfig < tag DeviceConfig < device DeviceConfig; a layer overrides only the keys it
    sets. The digest is that of the operator config the device receives (manifest layers only).
    """
    fmt = check_format(output)
    reply = OPTIONS.connection().call(
        lambda stub: stub.GetEffectiveConfig, fleet_pb2.GetEffectiveConfigRequest(device=device)
    )
    if is_structured(fmt):
        data = {
            "device_id": reply.device_id,
            "digest": reply.digest,
            "layers": list(reply.sources),
            "config": json.loads(reply.config_json or b"{}"),
            "values": [{"path": v.path, "value": json.loads(v.value_json), "layer": v.layer} for v in reply.values],
        }
        emit_data(data, fmt)
        return
    console.print(f"device {reply.device_id}  config digest {reply.digest}", highlight=False)
    console.print(f"layers: {' < '.join(reply.sources)}", highlight=False)
    rows = [[v.path, v.value_json, v.layer] for v in reply.values]
    console.print(table(f"effective config ({len(rows)} keys)", ["KEY", "VALUE", "LAYER"], rows))
