"""``fleetctl budget``: which bundle is the largest that fits a latency SLA on a hardware class?

    fleetctl budget [BUNDLE ...] --sla 40ms --hardware-class x86-avx2 [--headroom 0.2] [--thermal-buffer 0.1]
                    [--profile FILE ...] [-o table|json|yaml]

``fleetctl.main`` mounts ``budget`` on the app (``app.command("budget")(budget)``).

Profiles come from the controller (``FleetService.ListProfiles``, the latest p95 per bundle and hardware
class, sizes from ``GetBundle``) or, with ``--profile FILE`` (repeatable), from latency-profile JSON files
written by ``edge-runtime profile --output json`` — then nothing is asked of the controller, so it works
offline. BUNDLE names (``name@version`` or ``sha256:…``) narrow the candidates; none = every profiled bundle.

The ranking and the rule are ``edgefleet.contract.budget.rank_candidates``: largest model first (bytes of
the bundle's ``model`` artifact), chosen = the first with ``p95 <= sla × (1 − headroom − thermal_buffer)``
that never failed a canary: ``GetBundle.canary_failures`` marks a bundle known to be bad, and its row says
``excluded: failed its canary (<device> in rollout <id> …)`` instead (offline files carry no such record).
The table shows that arithmetic per candidate; the last line is ``chosen: NAME@VER (p95 31.2 ms <= 32.0 ms)``.
Exit codes: 0 a candidate fits, 1 none fits (the arithmetic is still printed), 2 bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import typer
import yaml
from rich.markup import escape
from rich.table import Table

from edgefleet.contract.budget import (
    SIZE_BUNDLE,
    SIZE_MODEL,
    BudgetCandidate,
    BudgetResult,
    candidate_from_profile,
    format_size,
    merge_candidates,
    parse_latency_ms,
    rank_candidates,
    select_candidates,
)
from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_layout import MODEL_ROLE
from edgefleet.contract.errors import BudgetError, ContractError
from edgefleet.contract.shown import shown
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc
from fleetctl.errors import grpc_errors
from fleetctl.output import console, err_console
from fleetctl.settings import OPTIONS

BUDGET_FORMATS = ("table", "json", "yaml")
RPC_TIMEOUT_S = 30.0


def load_profile_files(paths: list[Path]) -> list[BudgetCandidate]:
    """Candidates from latency-profile JSON files; raises ``BudgetError`` naming the file."""
    out: list[BudgetCandidate] = []
    for path in paths:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise BudgetError(f"--profile {path}: cannot be read: {exc.strerror}") from None
        except ValueError as exc:
            raise BudgetError(
                f"--profile {path}: is not JSON ({exc}); write it with 'edge-runtime profile -o json'"
            ) from None
        out.append(candidate_from_profile(document, source=str(path)))
    return out


def failed_canary_text(failures: list[fleet_pb2.BundleFailure]) -> str:
    """The newest recorded failure, as the budget line shows it (``""`` when there is none)."""
    if not failures:
        return ""
    newest = failures[-1]
    where = f" in rollout {newest.rollout_id}" if newest.rollout_id else ""
    what = "canary FAIL" if newest.kind == "canary_fail" else "rolled back"
    summary = newest.summary if len(newest.summary) <= 120 else newest.summary[:119] + "…"
    more = f"; {len(failures)} failures" if len(failures) > 1 else ""
    return f"{newest.device_name or newest.device_id}{where}: {what}: {summary}{more}"


def _bundle_facts(
    stub: fleet_pb2_grpc.FleetServiceStub, digest: str, metadata: tuple[tuple[str, str], ...]
) -> tuple[int, str, str]:
    """(model size, size basis, failed-canary text) of a published bundle."""
    reply = stub.GetBundle(fleet_pb2.GetBundleRequest(ref=digest), metadata=metadata, timeout=RPC_TIMEOUT_S)
    failed = failed_canary_text(list(reply.canary_failures))
    try:
        manifest = BundleManifest.from_json_bytes(reply.manifest)
        return manifest.artifact(MODEL_ROLE).size, SIZE_MODEL, failed
    except ContractError:
        return int(reply.bundle.size_bytes), SIZE_BUNDLE, failed


def fetch_candidates(bundles: list[str], hardware_class: str) -> list[BudgetCandidate]:
    """Candidates from the controller: ``ListProfiles``, then each bundle's model size from ``GetBundle``."""
    conn = OPTIONS.connection()
    with conn.fleet() as stub:
        reply = stub.ListProfiles(
            fleet_pb2.ListProfilesRequest(bundles=bundles, hardware_class=hardware_class),
            metadata=conn.metadata,
            timeout=RPC_TIMEOUT_S,
        )
        sizes: dict[str, tuple[int, str, str]] = {}
        out: list[BudgetCandidate] = []
        for p in reply.profiles:
            if p.bundle_digest not in sizes:
                try:
                    sizes[p.bundle_digest] = _bundle_facts(stub, p.bundle_digest, conn.metadata)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    sizes[p.bundle_digest] = (0, SIZE_BUNDLE, "")
            size, basis, failed = sizes[p.bundle_digest]
            out.append(
                BudgetCandidate(
                    ref=p.bundle_ref,
                    digest=p.bundle_digest,
                    hardware_class=p.hardware_class,
                    p95_ms=p.p95_ms if p.samples else None,
                    p50_ms=p.p50_ms if p.samples else None,
                    size_bytes=size,
                    samples=p.samples,
                    source=f"{p.source or 'profile'} on {p.device_id or '?'}",
                    size_basis=basis,
                    failed_canary=failed,
                )
            )
    return out


def render(result: BudgetResult, fmt: str, hardware_class: str) -> None:
    if fmt != "table":
        data = result.to_dict()
        data["hardware_class"] = hardware_class
        if fmt == "json":
            console.print_json(json.dumps(data))
        else:
            console.print(yaml.safe_dump(data, sort_keys=False), end="", markup=False, highlight=False, soft_wrap=True)
        return
    title = (
        f"latency budget on {hardware_class or 'every hardware class'}: {result.formula} = {result.budget_ms:.1f} ms"
    )
    grid = Table(title=title, title_justify="left")
    for name in ("#", "bundle", "size", "p50 ms", "p95 ms", "p95 vs budget", "fits"):
        grid.add_column(name, no_wrap=name in ("bundle", "p95 vs budget"))
    for c in result.lines:
        cand = c.candidate
        p50 = "-" if cand.p50_ms is None else f"{cand.p50_ms:.1f}"
        if cand.p95_ms is None:
            p95, arithmetic = "-", "unmeasured"
        else:
            p95 = f"{cand.p95_ms:.1f}"
            arithmetic = f"{p95} {'<=' if c.fits else '>'} {result.budget_ms:.1f} ms"
        verdict = "[green]fits[/green]" if c.fits else "[red]no[/red]"
        if cand.failed_canary:
            verdict = f"[red]failed its canary[/red] ({escape(cand.failed_canary)})"
        if result.chosen is cand:
            verdict = "[bold green]chosen[/bold green]"
        grid.add_row(str(c.rank), cand.label, format_size(cand.size_bytes), p50, p95, arithmetic, verdict)
    console.print(grid)
    console.print(result.summary, highlight=False, markup=False, soft_wrap=True)


@grpc_errors
def budget(
    bundles: list[str] = typer.Argument(None, help="bundles (name@version or sha256:…); default: every profiled one"),
    sla: str = typer.Option(..., "--sla", help="latency SLA, e.g. 40ms"),
    headroom: float = typer.Option(0.2, "--headroom", help="fraction of the SLA kept free (0.2 = 20%)"),
    thermal_buffer: float = typer.Option(0.0, "--thermal-buffer", help="extra fraction kept for throttling"),
    hardware_class: str = typer.Option("", "--hardware-class", help="e.g. x86-avx2, jetson (default: all)"),
    profile_files: list[Path] = typer.Option(
        [], "--profile", help="latency-profile JSON (edge-runtime profile -o json); repeatable; works offline"
    ),
    output: str = typer.Option("table", "-o", "--output", help="table, json or yaml"),
) -> None:
    """Pick the largest bundle whose measured p95 fits SLA × (1 − headroom − thermal buffer)."""
    if output not in BUDGET_FORMATS:
        raise typer.BadParameter(f"-o must be one of {', '.join(BUDGET_FORMATS)}; got {shown(output)}")
    wanted = list(bundles or [])
    try:
        sla_ms = parse_latency_ms(sla)
        candidates = load_profile_files(profile_files) if profile_files else fetch_candidates(wanted, hardware_class)
        chosen_from = merge_candidates(select_candidates(candidates, wanted, hardware_class))
        classes = sorted({c.hardware_class for c in chosen_from if c.hardware_class})
        if not hardware_class and len(classes) > 1:
            raise BudgetError(
                f"profiles span several hardware classes ({', '.join(classes)}); pass --hardware-class to "
                "budget for one of them"
            )
        result = rank_candidates(chosen_from, sla_ms, headroom, thermal_buffer)
    except BudgetError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    render(result, output, hardware_class or (classes[0] if classes else ""))
    if result.chosen is None:
        raise typer.Exit(1)
