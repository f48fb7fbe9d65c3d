"""What each boundary costs a machine that installs only it (issue 11: one distribution per boundary).

- Install footprint: bytes pip installs for the edge runtime's dependency closure (from each installed
  distribution's RECORD) against the all-in-one closure (every shipped distribution together, which is what
  a device installed before the split), measured in the same run on the same venv.
- Cold start: seconds to import the runtime's entry point in a fresh interpreter against importing only the
  third-party libraries it needs (``RUNTIME_LIBRARIES``); and whether the database stack was loaded at all.
  The same for the controller against SQLAlchemy + Alembic + grpc, and whether onnxruntime
  or OpenCV were loaded.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from benchlib import Row, row, run_alone

from edgefleet_testing.distributions import closure

SHIPPED = {
    "edgefleet-contract": {"processing"},
    "edgefleet-pipeline": set(),
    "edgefleet-controller": {"postgres"},
    "edgefleet-fleetctl": set(),
    "edgefleet-edge-runtime": set(),
}


RUNTIME_LIBRARIES = (
    "onnxruntime, cv2, numpy, grpc, grpc_health.v1.health, google.protobuf, structlog, jsonschema, yaml, tenacity, "
    "psutil, ddsketch, cryptography.hazmat.primitives.asymmetric.ed25519, asyncio, sqlite3"
)


def installed_bytes(names: set[str]) -> int:
    total = 0
    for name in names:
        dist = metadata.distribution(name)
        for file in dist.files or []:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                total += path.stat().st_size
    return total


_PROBE = """
import json, sys, time
t = time.perf_counter()
import {modules}
elapsed = time.perf_counter() - t
print(json.dumps({{"s": elapsed, "loaded": sorted({{m.split(".")[0] for m in sys.modules}})}}))
"""


def import_time(modules: str, runs: int) -> tuple[float, set[str]]:
    times: list[float] = []
    loaded: set[str] = set()
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", _PROBE.format(modules=modules)], capture_output=True, text=True, check=True
        ).stdout
        result = json.loads(out)
        times.append(float(result["s"]))
        loaded = set(result["loaded"])
    return statistics.median(times), loaded


def run(quick: bool = False) -> list[Row]:
    runs = 3 if quick else 7
    rows: list[Row] = []
    runtime = closure("edgefleet-edge-runtime", set())
    everything: set[str] = set()
    for name, extras in SHIPPED.items():
        everything |= closure(name, extras)
    runtime_bytes, all_bytes = installed_bytes(runtime), installed_bytes(everything)
    heavy = sorted(everything - runtime - {n for n in everything if n.startswith("edgefleet")})
    rows.append(
        row(
            "distributions.runtime_install_bytes",
            f"{runtime_bytes / 1e6:.0f} MB, {len(runtime)} distributions (edge runtime alone)",
            f"{all_bytes / 1e6:.0f} MB, {len(everything)} distributions (all shipped together, as before the split)",
            runtime_bytes / all_bytes,
            "< 1.0, and none of sqlalchemy, alembic, typer, rich (left out: " + ", ".join(heavy[:8]) + ", …)",
            runtime_bytes < all_bytes and not runtime & {"sqlalchemy", "alembic", "typer", "rich"},
        )
    )
    rt_s, rt_loaded = import_time("edge_runtime.cli", runs)
    base_s, _ = import_time(RUNTIME_LIBRARIES, runs)
    rows.append(
        row(
            "distributions.runtime_cold_import",
            f"import edge_runtime.cli median {rt_s * 1000:.0f} ms; sqlalchemy loaded: {'sqlalchemy' in rt_loaded}",
            f"import of the libraries it needs (onnxruntime, cv2, grpc, …) median {base_s * 1000:.0f} ms",
            rt_s / base_s,
            "<= 2.5 (our modules cost at most 1.5x the libraries), with no database stack loaded",
            # not rich: structlog imports it by itself where it is installed (the dev venv), not on a device
            rt_s / base_s <= 2.5 and not rt_loaded & {"sqlalchemy", "alembic", "typer"},
        )
    )
    ctl_s, ctl_loaded = import_time("edgefleet_controller.cli", runs)
    db_s, _ = import_time("sqlalchemy, alembic, grpc", runs)
    rows.append(
        row(
            "distributions.controller_cold_import",
            f"import edgefleet_controller.cli median {ctl_s * 1000:.0f} ms; "
            f"onnxruntime/cv2 loaded: {bool(ctl_loaded & {'onnxruntime', 'cv2'})}",
            f"import sqlalchemy, alembic, grpc median {db_s * 1000:.0f} ms",
            ctl_s / db_s,
            "<= 2.0, with no model runtime loaded",
            ctl_s / db_s <= 2.0 and not ctl_loaded & {"onnxruntime", "cv2", "onnx"},
        )
    )
    return rows


if __name__ == "__main__":
    raise SystemExit(run_alone(run))
