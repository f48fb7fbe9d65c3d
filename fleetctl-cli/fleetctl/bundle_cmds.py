"""``fleetctl bundle``: build, sign, verify and inspect engine bundle archives (``.efb``).

These commands work on local files only; publishing to a controller is a separate command group.

``bundle build`` prints, on stdout, the calibration and evaluation sets, a candidates table (each variant's
activation/weight types, calibration method, agreement with FP32 and the images/boxes it rests on, p50 on
this builder, carried or refused and why), the builder's SLA check and the built line; warnings (the
``--precision auto`` fallback to FP32, an SLA missed on the builder, few calibration images) go to stderr,
and so does anything a library prints while building.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_archive import (
    pack_bundle,
    read_archive_manifest,
    unpack_bundle,
    unpack_unverified_bundle,
)
from edgefleet.contract.bundle_sections import describe_size
from edgefleet.contract.errors import ContractError
from edgefleet.contract.signing import SigningKey, TrustedKeys, sign_bundle
from edgefleet_pipeline.precision_bundle import (
    DEFAULT_MAX_ACCURACY_LOSS,
    DEFAULT_MIN_EVAL_BOXES,
    DEFAULT_MIN_EVAL_IMAGES,
    CalibrationRequest,
    PrecisionBuild,
    PrecisionRequest,
    ReduceRangeRequest,
    build_precision_bundle,
)
from fleetctl.errors import fail
from fleetctl.output import console, err_console

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
    eval_dir: Path | None = typer.Option(
        None, "--eval", help="Held-out images to measure each candidate's agreement with FP32."
    ),
    precision: PrecisionRequest | None = typer.Option(
        None,
        "--precision",
        help="fp32, fp16, int8 or auto (carry every passing candidate, prefer the fastest here, fall back to "
        "fp32; default: int8 with --calibration).",
    ),
    max_accuracy_loss: float = typer.Option(
        DEFAULT_MAX_ACCURACY_LOSS, "--max-accuracy-loss", help="Refuse above this loss vs FP32 (0.01 = 1%)."
    ),
    calibration_method: CalibrationRequest = typer.Option(
        "minmax", "--calibration-method", help="minmax, entropy, percentile, or best (try all three, keep the best)."
    ),
    reduce_range: ReduceRangeRequest = typer.Option(
        "auto", "--reduce-range", help="7-bit INT8 weights: on, off, or auto (on where the CPU lacks VNNI)."
    ),
    fp16: bool | None = typer.Option(
        None,
        "--fp16/--no-fp16",
        help="Make the FP16 candidate under auto (default: when providers name tensorrt/cuda).",
    ),
    min_eval_images: int = typer.Option(
        DEFAULT_MIN_EVAL_IMAGES, "--min-eval-images", help="Refuse an agreement figure on fewer evaluation images."
    ),
    min_eval_boxes: int = typer.Option(
        DEFAULT_MIN_EVAL_BOXES, "--min-eval-boxes", help="Detectors: refuse an mAP resting on fewer FP32 boxes."
    ),
    latency_runs: int = typer.Option(50, "--latency-runs", help="Timed runs per variant on this machine."),
) -> None:
    """Build a bundle from a spec (INT8/FP16 candidates + TensorRT table with --calibration), sign it if --key
    is given. The candidates table goes to stdout, warnings to stderr."""
    chosen: PrecisionRequest = precision or ("int8" if calibration is not None else "fp32")
    try:
        signing_key = SigningKey.load(key) if key is not None else None
        with tempfile.TemporaryDirectory(prefix="fleetctl-build-") as tmp:
            bundle_dir = Path(tmp) / "bundle"
            # Libraries (onnxruntime's calibration, tqdm) print progress: it is not this command's output.
            with contextlib.redirect_stdout(sys.stderr):
                result = build_precision_bundle(
                    spec,
                    bundle_dir,
                    calibration_dir=calibration,
                    eval_dir=eval_dir,
                    precision=chosen,
                    max_accuracy_loss=max_accuracy_loss,
                    method=calibration_method,
                    reduce_range=reduce_range,
                    fp16=fp16,
                    min_eval_images=min_eval_images,
                    min_eval_boxes=min_eval_boxes,
                    latency_runs=latency_runs,
                )
            if signing_key is not None:
                sign_bundle(bundle_dir, signing_key)
            pack_bundle(bundle_dir, out)
    except ContractError as exc:
        raise fail(exc) from None
    manifest = result.manifest
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    if result.calibration is not None:
        cal = result.calibration
        method = str(calibration_method)
        if method == "best":
            method = f"best: {(manifest.calibration or {}).get('method', '-')} for the TensorRT table"
        console.print(f"calibration: {cal.count} images sha256:{cal.sha256[:12]}… ({method})", highlight=False)
    if result.evaluation is not None and (result.candidates or result.fallback):
        ev = result.evaluation
        held_out = "held-out" if eval_dir is not None else "the calibration images"
        console.print(f"evaluation: {ev.count} images sha256:{ev.sha256[:12]}… ({held_out})", highlight=False)
    if result.latency:
        console.print(candidates_table(result))
    if result.sla is not None:
        sla = result.sla
        verdict = "fits" if sla.fits else "MISSES"
        console.print(
            f"sla: {result.preferred} p{sla.percentile:g} {sla.measured_ms:.2f} ms on this builder {verdict} the "
            f"budget {sla.budget_ms:.1f} ms (sla {sla.sla_ms:g} ms, headroom {sla.headroom:g}; model only, "
            "the device measures itself)",
            highlight=False,
        )
    signed = f"signed by {signing_key.key_id}" if signing_key else "unsigned"
    carried = "+".join(result.carried)
    console.print(
        f"built {out}: {manifest.ref} {manifest.digest} ({signed}, carries {carried}, prefers {result.preferred})",
        highlight=False,
    )


def candidates_table(result: PrecisionBuild) -> Table:
    """One row per variant tried: fp32 (the reference), then every candidate, carried or refused and why."""
    table = Table(title=f"candidates on this builder ({result.hardware_class})", title_justify="left")
    for column in ("variant", "act/weight", "calibration", "agreement", "images/boxes", "p50 ms", "result"):
        table.add_column(column)
    evaluated = result.evaluation.count if result.evaluation is not None else 0
    boxes = next((c.accuracy.reference_boxes for c in result.candidates if c.accuracy is not None), None)
    fp32 = result.latency.get("fp32")
    table.add_row(
        "fp32",
        "fp32/fp32",
        "-",
        "reference",
        _rests_on(evaluated, boxes) if result.candidates else "-",
        f"{fp32.p50_ms:.2f}" if fp32 else "-",
        "preferred" if result.preferred == "fp32" else "carried (reference)",
    )
    short = {"int8": "s8", "uint8": "u8", "float16": "fp16"}
    for c in result.candidates:
        kind = c.candidate
        acc = c.accuracy
        method: str = c.method or "-"
        if len(c.methods_tried) > 1:
            method += (
                " ("
                + ", ".join(
                    f"{m} {v:.3f}" if isinstance(v, float) else f"{m} failed" for m, v in c.methods_tried.items()
                )
                + ")"
            )
        if c.reduce_range:
            method += ", reduce_range"
        if c.preprocessing:
            method += f", {c.preprocessing}"
        verdict = ("preferred" if c.preferred else "carried") if c.carried else f"refused: {c.reason}"
        table.add_row(
            c.name,
            f"{short.get(kind.activations, kind.activations)}/{short.get(kind.weights, kind.weights)}",
            method,
            f"{acc.metric} {acc.value:.3f}" if acc else "-",
            _rests_on(acc.samples, acc.reference_boxes) if acc else "-",
            f"{c.latency.p50_ms:.2f}" if c.latency else "-",
            escape(verdict),
        )
    return table


def _rests_on(images: int, boxes: int | None) -> str:
    return f"{images}" if boxes is None else f"{images}/{boxes}"


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
        ("preprocess", f"{pre.resize} {describe_size(pre)} {pre.color} {pre.layout} {pre.dtype}"),
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
