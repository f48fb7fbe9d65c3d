"""``fleetctl rollout``: create, status, watch, pause, resume, approve, abort and rollback canary-gated
rollouts over gRPC (``FleetService`` rollout RPCs).

``watch`` redraws one rich ``Live`` view per streamed update: the phase and message, the target (bundle and/or
staged config document with its content digest), one line per wave (assigned / succeeded / failed / in flight),
and one row per device with its status, update state, its target config (config rollouts) and the numbers of its
canary verdict (p95 candidate vs baseline, PSI, agreement, frames). ``rollback`` is an abort of a rollout whose
``on_abort`` is rollback: devices already moved go back to their previous bundle (and live config).

``create --force`` overrides both refusals a create can meet: latency admission, and a bundle that failed a
canary before; the overrides are kept on the rollout (its admission lines) and shown by ``status``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edgefleet.contract.shown import shown
from edgefleet.v1 import common_pb2, fleet_pb2
from fleetctl.durations import parse_duration
from fleetctl.errors import grpc_errors
from fleetctl.output import (
    OutputOpt,
    check_format,
    console,
    emit_structured,
    emit_table,
    err_console,
    is_structured,
    short_digest,
    ts,
    update_state_name,
)
from fleetctl.settings import OPTIONS

if TYPE_CHECKING:
    from fleetctl.client import UnaryRpc

    ActionRpc = UnaryRpc[fleet_pb2.RolloutActionRequest, fleet_pb2.Rollout]

rollout_app = typer.Typer(help="Canary-gated rollouts: create, watch, pause, approve, abort.", no_args_is_help=True)

_TERMINAL = {
    fleet_pb2.ROLLOUT_PHASE_COMPLETED,
    fleet_pb2.ROLLOUT_PHASE_ABORTED,
    fleet_pb2.ROLLOUT_PHASE_ROLLED_BACK,
}
_STATUS_STYLE = {"succeeded": "green", "failed": "red", "rolled_back": "yellow", "reverting": "yellow"}


def phase_name(value: int) -> str:
    return fleet_pb2.RolloutPhase.Name(fleet_pb2.RolloutPhase.ValueType(value)).removeprefix("ROLLOUT_PHASE_").lower()


def verdict_numbers(verdict: common_pb2.CanaryVerdict) -> str:
    """``pass p95 31.2/30.1 ms psi 0.03 agree 0.98 n=200`` or ``-`` when there is no verdict."""
    if not verdict.outcome:
        return "-"
    outcome = common_pb2.CanaryVerdict.Outcome.Name(verdict.outcome).removeprefix("OUTCOME_").lower()
    parts = [
        outcome,
        f"p95 {verdict.candidate_latency.p95_ms:.1f}/{verdict.baseline_latency.p95_ms:.1f} ms",
        f"psi {verdict.psi:.2f}",
        f"agree {verdict.agreement:.2f}",
        f"n={verdict.frames}",
    ]
    if verdict.errors:
        parts.append(f"errors {verdict.errors}")
    return " ".join(parts)


def wave_lines(rollout: fleet_pb2.Rollout) -> list[str]:
    """One line per wave reached so far: how many devices it moved and how they are doing."""
    lines = []
    for wave in range(1, max(rollout.wave, 0) + 1):
        members = [d for d in rollout.devices if d.wave == wave]
        total = len(members)
        done = sum(1 for d in members if d.status == "succeeded")
        # rolled_back: sent back by the rollout; a failure only when the device's own verdict failed (an
        # operator abort reverts devices that did nothing wrong)
        sent_back = [d for d in members if d.status == "rolled_back"]
        failed_too = sum(1 for d in sent_back if d.verdict.outcome == common_pb2.CanaryVerdict.OUTCOME_FAIL)
        bad = sum(1 for d in members if d.status == "failed") + failed_too
        reverted = len(sent_back) - failed_too
        marker = "▶" if wave == rollout.wave and rollout.phase not in _TERMINAL else "✓" if bad == 0 else "✗"
        lines.append(
            f"{marker} wave {wave}/{rollout.waves_total}"
            f" ({rollout.strategy.waves[wave - 1] if wave <= len(rollout.strategy.waves) else '100%'}):"
            f" {total} assigned, {done} succeeded, {bad} failed"
            + (f", {reverted} reverted without a failure" if reverted else "")
            + f", {total - done - bad - reverted} in flight"
        )
    pending = sum(1 for d in rollout.devices if d.status == "pending")
    if pending:
        lines.append(f"  {pending} devices not yet assigned")
    return lines


def target_text(rollout: fleet_pb2.Rollout) -> str:
    """``bundle sha256:ab12…``, ``config SiteConfig/a (staged sha256:cd34…)`` or both."""
    parts = []
    if rollout.bundle_digest:
        parts.append(f"bundle {short_digest(rollout.bundle_digest)}")
    if rollout.config:
        staged = f" (staged {short_digest(rollout.config_content_digest)})" if rollout.config_content_digest else ""
        parts.append(f"config {rollout.config}{staged}")
    return "  ".join(parts) or "no target"


def render(rollout: fleet_pb2.Rollout) -> Group:
    """The whole view of one rollout (used by ``status`` and redrawn by ``watch``)."""
    header = Text.assemble(
        (f"{rollout.name} ", "bold"),
        (f"{rollout.id}  ", "dim"),
        (phase_name(rollout.phase), "bold cyan"),
        f"  wave {rollout.wave}/{rollout.waves_total}  {target_text(rollout)}",
    )
    parts: list[Text | Table] = [header]
    if rollout.message:
        parts.append(Text(rollout.message))
    if rollout.forced:
        overridden = [line for line in rollout.admission if "forced" in line] or list(rollout.admission)
        parts.append(Text("overridden (forced): " + "; ".join(overridden), style="yellow"))
    parts.extend(Text(line) for line in rollout.admission if line.startswith("config "))
    parts.extend(Text(line) for line in wave_lines(rollout))
    table = Table(show_lines=False, title_justify="left")
    columns = ["DEVICE", "SITE", "WAVE", "STATUS", "UPDATE", *(["CONFIG"] if rollout.config else []), "VERDICT"]
    for column in columns:
        table.add_column(column, overflow="fold")
    for d in rollout.devices:
        config = [short_digest(d.target_config_digest) if d.target_config_digest else "-"] if rollout.config else []
        table.add_row(
            d.device_name or d.device_id,
            d.site,
            str(d.wave) if d.wave else "-",
            Text(d.status, style=_STATUS_STYLE.get(d.status, "")),
            update_state_name(d.update_state) if d.update_state else "-",
            *config,
            verdict_numbers(d.verdict),
        )
    parts.append(table)
    return Group(*parts)


@rollout_app.command("create")
@grpc_errors
def create(
    bundle: str = typer.Argument("", help="bundle digest or name@version (omit for a config-only rollout)"),
    config: str = typer.Option(
        "",
        "--config",
        help="a staged config document to roll out, e.g. SiteConfig/warehouse-a (fleetctl apply --stage)",
    ),
    site: list[str] = typer.Option([], "--site", help="a site to include; repeat for several"),
    tag: list[str] = typer.Option([], "--tag", help="key=value every device must carry; repeat for several"),
    waves: str = typer.Option("1,100%", help="cumulative wave sizes per site, e.g. 1,10%,50%,100%"),
    bake: str = typer.Option("0", help="how long each wave must stay healthy, e.g. 30m"),
    max_parallel: int = typer.Option(0, help="devices updating at once per site (0 = whole wave)"),
    max_failed_ratio: float = typer.Option(0.0, help="failed fraction of a later wave that aborts"),
    inconclusive_limit: int = typer.Option(0, help="inconclusive verdicts that count as a failure (0 = 2)"),
    manual_approval: bool = typer.Option(False, help="wait for 'fleetctl rollout approve' between waves"),
    on_abort: str = typer.Option("rollback", help="rollback or halt"),
    force: bool = typer.Option(
        False,
        help="override a refused latency admission and the refusal of a bundle that failed a canary before "
        "(recorded on the rollout)",
    ),
    name: str = typer.Option("", help="rollout name (default: bundle name-version)"),
    output: str = OutputOpt,
) -> None:
    """Create a rollout of BUNDLE and/or a staged config document (--config) onto the selected devices."""
    fmt = check_format(output)
    if not bundle and not config:
        raise typer.BadParameter(
            "give a BUNDLE, --config SiteConfig/<name> (staged with fleetctl apply --stage), or both"
        )
    tags: dict[str, str] = {}
    for item in tag:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise typer.BadParameter(f"--tag must be key=value, got {shown(item)}")
        tags[key] = value
    request = fleet_pb2.CreateRolloutRequest(
        name=name,
        bundle=bundle,
        config=config,
        selector=fleet_pb2.RolloutSelector(sites=site, tags=tags),
        strategy=fleet_pb2.RolloutStrategy(
            waves=[w.strip() for w in waves.split(",") if w.strip()],
            bake_s=parse_duration(bake),
            max_parallel=max_parallel,
        ),
        gates=fleet_pb2.RolloutGates(
            max_failed_ratio=max_failed_ratio, inconclusive_limit=inconclusive_limit, manual_approval=manual_approval
        ),
        on_abort=on_abort,
        force=force,
    )
    _show(OPTIONS.connection().call(lambda stub: stub.CreateRollout, request, timeout=60), fmt)


def _show(rollout: fleet_pb2.Rollout, fmt: str) -> None:
    if is_structured(fmt):
        emit_structured(rollout, fmt)
    else:
        console.print(render(rollout))


@rollout_app.command("status")
@grpc_errors
def status(
    rollout_id: str = typer.Argument("", help="a rollout id; omit to list rollouts"), output: str = OutputOpt
) -> None:
    """Show one rollout in detail, or list all rollouts."""
    fmt = check_format(output)
    conn = OPTIONS.connection()
    if rollout_id:
        _show(conn.call(lambda stub: stub.GetRollout, fleet_pb2.GetRolloutRequest(id=rollout_id)), fmt)
        return
    reply = conn.call(lambda stub: stub.ListRollouts, fleet_pb2.ListRolloutsRequest())
    emit_table(
        list(reply.rollouts),
        fmt,
        f"rollouts ({len(reply.rollouts)})",
        ["ID", "NAME", "PHASE", "WAVE", "TARGET", "DEVICES", "CREATED"],
        lambda r: [
            r.id,
            r.name,
            phase_name(r.phase),
            f"{r.wave}/{r.waves_total}",
            " + ".join(filter(None, [short_digest(r.bundle_digest) if r.bundle_digest else "", r.config])),
            str(sum(1 for d in r.devices if d.status != "pending")),
            ts(r.created_at),
        ],
        ["MESSAGE"],
        lambda r: [r.message or "-"],
    )


@rollout_app.command("watch")
@grpc_errors
def watch(rollout_id: str = typer.Argument(..., help="the rollout id")) -> None:
    """Follow a rollout live until it finishes (Ctrl-C stops watching, not the rollout)."""
    conn = OPTIONS.connection()
    last: fleet_pb2.Rollout | None = None
    with conn.fleet() as stub, Live(console=console, auto_refresh=False) as live:
        for update in stub.WatchRollout(fleet_pb2.GetRolloutRequest(id=rollout_id), metadata=conn.metadata):
            last = update
            live.update(render(update), refresh=True)
    if last is not None and last.phase in (fleet_pb2.ROLLOUT_PHASE_ABORTED, fleet_pb2.ROLLOUT_PHASE_ROLLED_BACK):
        raise typer.Exit(1)


def _action(rpc: ActionRpc, rollout_id: str, reason: str) -> None:
    rollout = OPTIONS.connection().call(rpc, fleet_pb2.RolloutActionRequest(id=rollout_id, reason=reason), timeout=60)
    console.print(render(rollout))


ReasonOpt = typer.Option("", "--reason", "-r", help="recorded with the action")

#: The plain actions, one command each: name, RPC, help.
_ACTIONS: tuple[tuple[str, ActionRpc, str], ...] = (
    ("pause", lambda stub: stub.PauseRollout, "Stop assigning devices (gates are still checked while paused)."),
    ("resume", lambda stub: stub.ResumeRollout, "Continue a paused rollout."),
    ("approve", lambda stub: stub.ApproveRollout, "Start the next wave of a rollout waiting for approval."),
    (
        "abort",
        lambda stub: stub.AbortRollout,
        "Abort: nothing more is assigned; moved devices go back or stay, per the rollout's on_abort.",
    ),
)


def _action_command(rpc: ActionRpc) -> Callable[[str, str], None]:
    @grpc_errors
    def command(rollout_id: str = typer.Argument(...), reason: str = ReasonOpt) -> None:
        _action(rpc, rollout_id, reason)

    return command


for _name, _rpc, _help in _ACTIONS:
    rollout_app.command(_name, help=_help)(_action_command(_rpc))


@rollout_app.command("rollback")
@grpc_errors
def rollback(rollout_id: str = typer.Argument(...), reason: str = ReasonOpt) -> None:
    """Abort and send every device the rollout moved back to its previous bundle."""
    current = OPTIONS.connection().call(lambda stub: stub.GetRollout, fleet_pb2.GetRolloutRequest(id=rollout_id))
    if current.on_abort == "halt":
        err_console.print(
            f"[red]error:[/red] rollout {rollout_id} was created with on_abort=halt, so aborting it leaves devices "
            "where they are; abort it, then roll the previous bundle out with 'fleetctl rollout create'",
            highlight=False,
        )
        raise typer.Exit(1)
    _action(lambda stub: stub.AbortRollout, rollout_id, f"rollback: {reason}" if reason else "rollback")
