"""``edge-runtime infer``: a bundle's outputs on image files, computed by the device's own pipeline.

    edge-runtime infer BUNDLE IMAGE... [--trusted DIR | --data-dir DIR | --no-verify] [--config FILE]
                       [--precision auto|fp32|int8|NAME] [--providers cpu,cuda,tensorrt] [--conf-threshold X]
                       [--output table|json]

What an operator runs before rolling a bundle out: the labels, confidences and boxes a device would produce
on these images, to compare with what they expect or with a bare onnxruntime run of the model file.
``edge_runtime.cli`` mounts it (``add_infer_command``); tables are plain text (a device installs no rich).

Decisions:
- The device's exact path, not a second implementation: the bundle is opened and verified as ``profile``
  does (``edge_runtime.bundle_open``), the engine is loaded by the agent's own
  ``edge_runtime.agent.update.switcher.load_variant`` (what ``SlotSwitcher`` stages with) and each image goes
  through ``InferenceEngine.infer`` (the contract's preprocess → model → postprocess). The flags (and
  ``--config FILE``, a JSON config such as a device's effective config) become the operator config the agent
  would have received: ``inference.providers``, ``inference.precision``, ``inference.conf_threshold``,
  ``inference.fp16``, resolved over the bundle's own policy exactly as on a device; flags win over the file.
  They are checked against the config manifest schema first, so a bad value is refused with the flag's name
  (precision names are checked against the bundle's variants instead, by ``load_variant`` itself).
- Precision: the variant is the one ``load_variant`` chose (``auto``: measured here, the fastest variant that
  passed its accuracy gate; a precision or variant name restricts the choice), printed with its figures and
  the refused variants' reasons. ``auto`` is a measurement: on a near tie two runs can pick different
  variants; force one with ``--precision`` to compare runs.
- Images are read with ``cv2.imread(IMREAD_COLOR)``, as the device's ``images:DIR`` source reads frames, all
  of them before the model loads: one unreadable file fails the run (exit 2, named) and nothing is printed
  as results.
- Boxes are x1, y1, x2, y2 in the ORIGINAL image's pixels (the engine undoes the letterbox and clips);
  classifications are the bundle's top-k at or above the threshold, best first, and ``top_confidence`` is the
  best class's score even below it (what telemetry's confidence histograms see).
- ``--output json`` prints one document (``INFER_FORMAT``, sorted keys, floats as computed) on stdout; logs
  go to stderr only. Everything but ``timings_ms`` and the variant choice's ``figures`` (under ``auto``, the
  choice too) is a function of the bundle, the flags and the image bytes: two runs print the same results.
- Exit codes: 0 ok; 2 the inputs cannot be used (arguments, bundle missing, unsigned, tampered or untrusted,
  an unreadable image, an unknown variant); 1 the bundle was opened but cannot be loaded or run here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
from numpy.typing import NDArray

from edge_runtime.agent.errors import AgentError
from edge_runtime.agent.update.switcher import load_variant
from edge_runtime.bundle_open import BundleInputError, OpenedBundle, open_bundle, trusted_keys
from edge_runtime.inference import FrameResult, InferenceError
from edge_runtime.precision import VariantError
from edge_runtime.profile_cli import text_table
from edge_runtime.update.errors import EngineSwitchError
from edgefleet.contract.errors import ContractError
from edgefleet.contract.manifest_schema import validate_config_values
from edgefleet.contract.precedence import resolve_policy
from edgefleet.contract.processing.postprocess import Classification, Detection
from edgefleet.contract.shown import shown
from edgefleet.logging import configure_logging

__all__ = ["INFER_FORMAT", "ImageResult", "InferRun", "add_infer_command", "infer_command", "run_images"]

INFER_FORMAT = "edgefleet.infer/v1"


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


class InferLoadError(Exception):
    """The bundle was opened but cannot be loaded or run on this device (exit 1)."""


@dataclass(frozen=True)
class LoadedImage:
    """One image file as the device's ``images:`` source decodes it (BGR uint8 HxWx3)."""

    path: Path
    image: NDArray[np.uint8]


@dataclass(frozen=True)
class ImageResult:
    """One image's answer from the engine."""

    path: Path
    width: int
    height: int
    result: FrameResult


@dataclass(frozen=True)
class InferRun:
    """What ``infer`` did: the bundle, the variant and provider that served, the inference keys in force,
    and one result per image in the order given."""

    bundle: OpenedBundle
    variant: str
    precision: str
    variant_choice: Mapping[str, object]
    variant_summary: str
    provider: str
    active_providers: tuple[str, ...]
    inference: Mapping[str, object]
    postprocess: Mapping[str, object]
    images: tuple[ImageResult, ...]


def read_images(paths: Sequence[Path]) -> list[LoadedImage]:
    """Decode every image first (``BundleInputError`` naming the first file that cannot be read)."""
    loaded = []
    for path in paths:
        if not path.is_file():
            raise BundleInputError(f"image {shown(str(path))}: no such file; pass .jpg or .png files")
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise BundleInputError(
                f"image {shown(str(path))}: OpenCV cannot decode it ({path.stat().st_size} bytes); "
                "pass a .jpg or .png image"
            )
        loaded.append(LoadedImage(path, cast(NDArray[np.uint8], image)))
    return loaded


def operator_config(
    base: Mapping[str, Any],
    *,
    providers: Sequence[str] | None,
    precision: str | None,
    conf_threshold: float | None,
) -> dict[str, Any]:
    """``base`` (a config file's values) with the flags set on top as ``inference.*`` keys, each checked
    against the config manifest schema (precision names are checked against the bundle instead: a bundle
    may carry variants the schema's enum does not list)."""
    config = dict(base)
    inference = dict(base.get("inference") or {})
    for flag, key, value in (
        ("--providers", "providers", list(providers) if providers is not None else None),
        ("--conf-threshold", "conf_threshold", conf_threshold),
    ):
        if value is None:
            continue
        try:
            validate_config_values({"inference": {key: value}})
        except ContractError as exc:
            raise BundleInputError(f"{flag} {shown(value)}: {str(exc).removeprefix('effective config ')}") from None
        inference[key] = value
    if precision is not None:
        inference["precision"] = precision
    config["inference"] = inference
    return config


def read_config_file(path: Path) -> dict[str, Any]:
    """A JSON config (a device's effective config, or just ``{"inference": {...}}``), schema-checked."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleInputError(f"--config {shown(str(path))}: cannot read a JSON config: {exc}") from None
    if not isinstance(values, dict):
        raise BundleInputError(f"--config {shown(str(path))}: must hold a JSON object, got {type(values).__name__}")
    try:
        validate_config_values(values)
    except ContractError as exc:
        raise BundleInputError(f"--config {shown(str(path))}: {exc}") from None
    return values


def run_images(
    opened: OpenedBundle, images: Sequence[LoadedImage], config: Mapping[str, Any], *, cache_root: Path
) -> InferRun:
    """Load the bundle as a device would under ``config`` and run every image through it."""
    manifest = opened.manifest
    try:
        loaded = load_variant(opened.path, manifest.digest, cache_root=cache_root, config=config)
    except EngineSwitchError as exc:
        if isinstance(exc.__cause__, VariantError):
            raise BundleInputError(f"--precision: {exc.__cause__}") from None
        raise InferLoadError(str(exc)) from exc
    engine, choice = loaded.engine, loaded.choice
    results = []
    for i, image in enumerate(images):
        try:
            result = engine.infer(image.image, i)
        except (InferenceError, ContractError) as exc:
            raise InferLoadError(f"{image.path}: bundle {manifest.ref} failed on this image: {exc}") from exc
        h, w = image.image.shape[:2]
        results.append(ImageResult(image.path, w, h, result))
    inference = resolve_policy(config, bundle=manifest).section("inference")
    return InferRun(
        bundle=opened,
        variant=choice.name,
        precision=choice.precision,
        variant_choice=choice.to_dict(),
        variant_summary=choice.summary(),
        provider=engine.provider,
        active_providers=tuple(engine.session.get_providers()),
        inference={k: list(v) if isinstance(v, tuple) else v for k, v in sorted(inference.items())},
        postprocess=engine.postprocess_spec.to_dict(),
        images=tuple(results),
    )


# ------------------------------------------------------------------------------------------------ output


def _output_dict(output: Classification | Detection) -> dict[str, object]:
    values: dict[str, object] = {"label": output.label, "class_id": output.class_id, "confidence": output.confidence}
    if isinstance(output, Detection):
        values["box"] = list(output.box)
    return values


def run_to_document(run: InferRun) -> dict[str, Any]:
    """The JSON document of ``--output json`` (format ``INFER_FORMAT``)."""
    manifest = run.bundle.manifest
    return {
        "format": INFER_FORMAT,
        "bundle": {"ref": manifest.ref, "digest": manifest.digest, "kind": manifest.postprocess.kind},
        "verified": run.bundle.verified,
        "key_id": run.bundle.key_id,
        "variant": run.variant,
        "precision": run.precision,
        "variant_choice": dict(run.variant_choice),
        "provider": run.provider,
        "active_providers": list(run.active_providers),
        "inference": dict(run.inference),
        "postprocess": dict(run.postprocess),
        "images": [
            {
                "path": str(img.path),
                "width": img.width,
                "height": img.height,
                "top_confidence": img.result.top_confidence,
                "outputs": [_output_dict(o) for o in img.result.outputs],
                "timings_ms": {
                    "pre": round(img.result.timings.pre_ms, 4),
                    "model": round(img.result.timings.model_ms, 4),
                    "post": round(img.result.timings.post_ms, 4),
                    "total": round(img.result.timings.total_ms, 4),
                },
            }
            for img in run.images
        ],
    }


# The postprocess keys that apply to each kind (False: a classifier, True: a detector).
_SHOWN_POST = {
    False: ("kind", "top_k", "conf_threshold", "softmax"),
    True: ("kind", "conf_threshold", "iou_threshold", "max_detections"),
}


def render_table(run: InferRun) -> str:
    """The bundle, the variant and provider that served, then each image's outputs and timings."""
    manifest = run.bundle.manifest
    post = run.postprocess
    detector = manifest.postprocess.kind != "classification"
    wanted = run.inference.get("providers")
    requested = "requested: " + ", ".join(str(p) for p in wanted) if isinstance(wanted, list) else "bundle's order"
    trust = f"verified ({run.bundle.key_id})" if run.bundle.verified else "UNVERIFIED bundle, --no-verify"
    facts = [
        ("bundle", f"{manifest.ref} {manifest.digest} [{trust}]"),
        ("variant", run.variant_summary),
        ("provider", f"{run.provider} (active: {', '.join(run.active_providers)}; {requested})"),
        ("postprocess", ", ".join(f"{k} {post[k]}" for k in _SHOWN_POST[detector] if k in post)),
    ]
    parts = [text_table(facts)]
    for img in run.images:
        r = img.result
        outputs = r.outputs
        t = r.timings
        title = f"{img.path} ({img.width} wide x {img.height} high): "
        if detector:
            title += f"{len(outputs)} detection(s)"
            rows = [
                (o.label, f"{o.confidence:.4f}", *(f"{v:.1f}" for v in o.box))
                for o in cast(tuple[Detection, ...], outputs)
            ]
            header: tuple[str, ...] = ("label", "confidence", "x1", "y1", "x2", "y2")
        else:
            title += f"{len(outputs)} class(es) at or above {post['conf_threshold']} (best {r.top_confidence:.4f})"
            rows = [
                (o.label, str(o.class_id), f"{o.confidence:.4f}") for o in cast(tuple[Classification, ...], outputs)
            ]
            header = ("label", "class", "confidence")
        timing = f"  ms: pre {t.pre_ms:.2f}  model {t.model_ms:.2f}  post {t.post_ms:.2f}  total {t.total_ms:.2f}"
        table = text_table(rows, header=header, title=title, right=len(header) - 1) if rows else title + "\n"
        parts.append(table + timing + "\n")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------ command


def add_infer_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Mount ``infer`` on the ``edge-runtime`` parser."""
    about = "Run a bundle on image files through the device's own pipeline; print labels, boxes, confidences."
    cmd = commands.add_parser("infer", help=about, description=about)
    cmd.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle directory or .efb archive")
    cmd.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files (.jpg, .png)")
    cmd.add_argument("--trusted", type=Path, default=None, help="directory of trusted <key_id>.pub.pem")
    cmd.add_argument("--data-dir", type=Path, default=None, help="an enrolled device's data dir (publisher keys)")
    cmd.add_argument("--no-verify", action="store_true", help="skip the signature check (local experiments only)")
    cmd.add_argument("--config", type=Path, default=None, help="JSON config whose inference.* keys apply")
    cmd.add_argument("--precision", default=None, help="auto (measure, as a device does), fp32, int8 or a variant name")
    cmd.add_argument("--providers", default=None, help="comma list: tensorrt,cuda,cpu (default: bundle's)")
    cmd.add_argument("--conf-threshold", type=float, default=None, help="override the bundle's threshold, 0..1")
    formats = [f.value for f in OutputFormat]
    cmd.add_argument("--output", "-o", choices=formats, default=OutputFormat.table.value, help="table or json")
    cmd.add_argument("--log-level", default="warning")
    cmd.set_defaults(command=infer_command)


def _error(message: str, code: int) -> int:
    print(f"edge-runtime infer: error: {message}", file=sys.stderr, flush=True)
    return code


def infer_command(args: argparse.Namespace) -> int:
    """Run the bundle on the images and print the results; the exit code (see the module docstring)."""
    configure_logging(args.log_level, json=True)
    no_verify: bool = args.no_verify
    if no_verify and args.trusted is not None:
        return _error("--no-verify and --trusted contradict each other; pass one", 2)
    providers_text: str | None = args.providers
    providers = [p.strip() for p in providers_text.split(",") if p.strip()] if providers_text is not None else None
    try:
        base = read_config_file(args.config) if args.config is not None else {}
        config = operator_config(
            base, providers=providers, precision=args.precision, conf_threshold=args.conf_threshold
        )
        images = read_images(args.images)
        keys = None if no_verify else trusted_keys(args.trusted, args.data_dir)
        with contextlib.ExitStack() as stack:
            opened = stack.enter_context(
                open_bundle(args.bundle, keys, verify=not no_verify, prefix="edgefleet-infer-")
            )
            cache = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefleet-infer-cache-")))
            result = run_images(opened, images, config, cache_root=cache)
            document = run_to_document(result) if OutputFormat(args.output) is OutputFormat.json else None
            text = json.dumps(document, indent=2, sort_keys=True) + "\n" if document else render_table(result)
    except (BundleInputError, ContractError, VariantError, AgentError) as exc:
        return _error(str(exc), 2)
    except (InferLoadError, InferenceError) as exc:
        return _error(str(exc), 1)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
