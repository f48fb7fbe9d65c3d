"""``fleetctl bundle``: build, sign, verify and inspect engine bundle archives (``.efb``).

These commands work on local files only; publishing to a controller is a separate command group.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.table import Table

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_archive import (
    pack_bundle,
    read_archive_manifest,
    unpack_bundle,
    unpack_unverified_bundle,
)
from edgefleet.contract.errors import ContractError
from edgefleet.contract.signing import SigningKey, TrustedKeys, sign_bundle
from edgefleet_pipeline.precision_bundle import (
    DEFAULT_MAX_ACCURACY_LOSS,
    PrecisionRequest,
    build_precision_bundle,
)
from edgefleet_pipeline.quantize import CalibrationMethodName
from fleetctl.errors import fail

bundle_app = typer.Typer(help="Build, sign, verify and inspect engine bundles.", no_args_is_help=True)
_out = Console(soft_wrap=True)


# The choices are the pipeline's own literal types: typer lists and checks them, no second copy here.
InspectFormat = Literal["table", "json"]


@bundle_app.command("build")
def build(
    spec: Path = typer.Argument(..., help="Bundle spec YAML."),
    out: Path = typer.Option(..., "--out", help="Archive to write (.efb)."),
    key: Path | None = typer.Option(None, "--key", help="Sign with this private key (PEM)."),
    calibration: Path | None = typer.Option(
        None, "--calibration", help="Calibration images (jpg/png, 200-500 from the target environment)."
    ),
    eval_dir: Path | None = typer.Option(None, "--eval", help="Held-out images to measure INT8 accuracy against FP32."),
    precision: PrecisionRequest | None = typer.Option(
        None, "--precision", help="fp32, fp16, int8 or auto (measure; default: int8 with --calibration)."
    ),
    max_accuracy_loss: float = typer.Option(
        DEFAULT_MAX_ACCURACY_LOSS, "--max-accuracy-loss", help="Refuse above this loss vs FP32 (0.01 = 1%)."
    ),
    calibration_method: CalibrationMethodName = typer.Option(
        "minmax", "--calibration-method", help="minmax, entropy or percentile."
    ),
) -> None:
    """Build a bundle from a spec (INT8 + TensorRT table with --calibration), sign it if --key is given."""
    chosen: PrecisionRequest = precision or ("int8" if calibration is not None else "fp32")
    try:
        signing_key = SigningKey.load(key) if key is not None else None
        with tempfile.TemporaryDirectory(prefix="fleetctl-build-") as tmp:
            bundle_dir = Path(tmp) / "bundle"
            result = build_precision_bundle(
                spec,
                bundle_dir,
                calibration_dir=calibration,
                eval_dir=eval_dir,
                precision=chosen,
                max_accuracy_loss=max_accuracy_loss,
                method=calibration_method,
            )
            if signing_key is not None:
                sign_bundle(bundle_dir, signing_key)
            pack_bundle(bundle_dir, out)
    except ContractError as exc:
        raise fail(exc) from None
    manifest = result.manifest
    for warning in result.warnings:
        _out.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    if result.calibration is not None:
        cal = result.calibration
        _out.print(
            f"calibration: {cal.count} images sha256:{cal.sha256[:12]}… ({calibration_method})",
            highlight=False,
        )
    if result.accuracy is not None:
        acc = result.accuracy
        _out.print(
            f"int8: {acc.metric} {acc.value:.3f} vs fp32, loss {acc.loss:.1%} over {acc.samples} images",
            highlight=False,
        )
    if result.choice is not None:
        figures = ", ".join(f"{n} p50 {f.p50_ms:.2f} ms" for n, f in sorted(result.choice.figures.items()))
        _out.print(f"precision: {result.choice.chosen} ({figures} on {result.choice.hardware_class})", highlight=False)
    signed = f"signed by {signing_key.key_id}" if signing_key else "unsigned"
    _out.print(f"built {out}: {manifest.ref} {manifest.digest} ({signed}, prefers {result.preferred})", highlight=False)


@bundle_app.command("sign")
def sign(
    archive: Path = typer.Argument(..., help="Bundle archive (.efb) to sign in place."),
    key: Path = typer.Option(..., "--key", help="Private key (PEM)."),
) -> None:
    """Sign (or re-sign) an archive; artifacts are checked against bundle.json first."""
    try:
        signing_key = SigningKey.load(key)
        with tempfile.TemporaryDirectory(prefix="fleetctl-sign-") as tmp:
            bundle_dir = Path(tmp) / "bundle"
            manifest = unpack_unverified_bundle(archive, bundle_dir)
            sign_bundle(bundle_dir, signing_key)
            pack_bundle(bundle_dir, archive)
    except ContractError as exc:
        raise fail(exc) from None
    _out.print(f"signed {archive}: {manifest.digest} by {signing_key.key_id}", highlight=False)


@bundle_app.command("verify")
def verify(
    archive: Path = typer.Argument(..., help="Bundle archive (.efb)."),
    trusted: list[Path] = typer.Option(..., "--trusted", help="Trusted public key file or directory."),
) -> None:
    """Verify an archive's signature and every artifact against trusted keys."""
    try:
        keys = TrustedKeys.from_paths(trusted)
        with tempfile.TemporaryDirectory(prefix="fleetctl-verify-") as tmp:
            verified = unpack_bundle(archive, Path(tmp) / "bundle", keys)
    except ContractError as exc:
        raise fail(exc) from None
    _out.print(f"verified: {verified.digest} signed by {verified.key_id}", highlight=False)


def manifest_table(manifest: BundleManifest, *, title: str | None = None) -> Table:
    """A rich table of a manifest's main fields and artifacts."""
    table = Table(title=title or manifest.ref, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    pre, post, canary = manifest.preprocess, manifest.postprocess, manifest.canary
    rows = [
        ("digest", manifest.digest),
        ("name", manifest.name),
        ("version", manifest.version),
        ("created", manifest.created_at.isoformat()),
        ("inputs", ", ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in manifest.inputs)),
        ("outputs", ", ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in manifest.outputs)),
        ("preprocess", f"{pre.resize} {pre.size[0]}x{pre.size[1]} {pre.color} {pre.layout} {pre.dtype}"),
        ("postprocess", f"{post.kind} conf≥{post.conf_threshold} iou={post.iou_threshold}"),
        ("labels", ", ".join(manifest.labels) or "-"),
        ("latency", f"p{manifest.latency.percentile:g} ≤ {manifest.latency.sla_ms:g} ms"),
        (
            # The bundle's declared policy: it applies on a device unless a manifest sets the same key
            # (``fleetctl config effective DEVICE`` shows which layer won each key).
            "canary",
            f"≥{canary.min_frames} frames and ≥{canary.min_seconds:g} s, headroom {canary.headroom:g}, "
            f"p95 ratio ≤ {canary.max_p95_ratio:g}, psi ≤ {canary.psi_max:g}, KS α {canary.ks_alpha:g}, "
            f"agreement ≥ {canary.min_agreement:g} (unless a manifest sets the key)",
        ),
        ("providers", " > ".join(manifest.providers)),
    ]
    for role, ref in manifest.artifacts.items():
        rows.append((f"artifact {role}", f"{ref.path} {ref.size} B {ref.digest[:19]}…"))
    for name, value in rows:
        table.add_row(name, value)
    return table


@bundle_app.command("inspect")
def inspect(
    archive: Path = typer.Argument(..., help="Bundle archive (.efb)."),
    output: InspectFormat = typer.Option("table", "--output", "-o", help="table or json."),
) -> None:
    """Print an archive's manifest and digest (no verification)."""
    try:
        manifest, sig = read_archive_manifest(archive)
    except ContractError as exc:
        raise fail(exc) from None
    try:
        key_id = json.loads(sig).get("key_id") if sig else None
    except (ValueError, AttributeError):
        key_id = "<malformed bundle.sig>"
    if output == "json":
        doc = {"digest": manifest.digest, "signed_by": key_id, "manifest": manifest.to_dict()}
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    _out.print(manifest_table(manifest))
    _out.print(f"signature: {'key ' + str(key_id) + ' (not verified)' if key_id else 'unsigned'}")
