"""The edgefleet demo (``make demo`` = ``python -m demo``).

Part 1 publishes a signed engine bundle and verifies it like a device would: generate a classifier with
``edgefleet_testing.modelgen``, build a bundle from ``examples/bundles/classifier-v1.spec.yaml``, sign it with a
fresh publisher key, pack it to an ``.efb``, then unpack and verify it against the trusted public key.
Part 2 (``demo/pipeline.py``) builds an INT8 bundle of a real trained model and profiles it; part 3
is the fleet demo (``demo/fleet.py``): a controller and four edge-runtime processes, a good rollout
and a drifted one that its canary stops. ``--bundle-only`` runs part 1 alone. Output goes to ``demo-out/``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import structlog
from rich.console import Console

from edgefleet.contract.bundle_archive import pack_bundle, unpack_bundle
from edgefleet.contract.errors import ContractError
from edgefleet.contract.signing import (
    PRIVATE_SUFFIX,
    PUBLIC_SUFFIX,
    TrustedKeys,
    generate_keypair,
    sign_bundle,
)
from edgefleet.logging import configure_logging
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_testing.modelgen import make_classifier
from fleetctl.bundle_cmds import manifest_table

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "examples" / "bundles" / "classifier-v1.spec.yaml"
OUT = REPO / "demo-out"


def main() -> int:
    configure_logging("warning")
    log = structlog.get_logger("demo")
    # Wide enough for the status tables when the output goes to a file or CI log.
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)
    for stale in ("keys", "staging", "device", "bundles"):
        shutil.rmtree(OUT / stale, ignore_errors=True)
    for folder in ("keys", "bundles", "device"):
        (OUT / folder).mkdir(parents=True, exist_ok=True)

    # The sample spec points at demo-out/models/classifier.onnx; seeded, so the model is the same every run.
    model = make_classifier(OUT / "models" / "classifier.onnx", num_classes=10, size=64, seed=0)
    log.info("demo.model_generated", path=str(model))

    key = generate_keypair("demo-publisher")
    key.save(OUT / "keys" / f"{key.key_id}{PRIVATE_SUFFIX}", OUT / "keys" / f"{key.key_id}{PUBLIC_SUFFIX}")
    log.info("demo.key_generated", key_id=key.key_id)

    staging = OUT / "staging" / "classifier"
    manifest = build_bundle(SPEC, staging)
    sign_bundle(staging, key)
    archive = pack_bundle(staging, OUT / "bundles" / f"{manifest.name}-{manifest.version}.efb")
    log.info("demo.bundle_packed", archive=str(archive), digest=manifest.digest, bytes=archive.stat().st_size)

    # The device side: trust only the publisher's public key file, unpack safely, verify everything.
    trusted = TrustedKeys.from_dir(OUT / "keys")
    verified = unpack_bundle(archive, OUT / "device" / manifest.digest.replace(":", "-"), trusted)
    log.info("demo.bundle_verified", path=str(verified.path), key_id=verified.key_id)

    console.print(manifest_table(verified.manifest))
    console.print(f"[green]verified:[/green] {verified.digest} signed by {verified.key_id}", highlight=False)
    if "--bundle-only" in sys.argv[1:]:
        return 0
    from demo.fleet import run as run_fleet
    from demo.pipeline import run as run_pipeline

    configure_logging("warning")
    console.rule("[bold]model pipeline: a real trained model, INT8 from calibration images, profiled")
    run_pipeline(OUT / "pipeline", OUT / "keys" / f"{key.key_id}{PRIVATE_SUFFIX}", OUT / "keys", console)
    console.rule("[bold]fleet: a controller and four cameras, a good rollout and a drifted one")
    return run_fleet(OUT / "fleet", console)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ContractError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]demo failed:[/red] {exc}", highlight=False)
        sys.exit(2)
