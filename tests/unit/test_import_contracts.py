"""The import contracts in ``.importlinter`` (run by ``make lint``) hold on the tree, and fail on a wrong import.

Each wrong-import case copies the source packages to a temporary tree, adds one deliberately wrong import,
and runs ``lint-imports`` on the copy with the real configuration: the run must fail and name the contract
and the offending import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ["protos", "pipeline", "controller", "fleetctl-cli", "edge-runtime", "testing"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(root / d) for d in [*SOURCE_DIRS, "."]))
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / ".importlinter")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.onnx", "*.so")
    for d in SOURCE_DIRS:
        shutil.copytree(REPO / d, root / d, ignore=ignore)
    shutil.copytree(REPO / "tools", root / "tools", ignore=ignore)
    shutil.copy(REPO / ".importlinter", root / ".importlinter")
    return root


def test_the_tree_keeps_every_contract() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


def _module_file(root: Path, module: str) -> Path:
    top, *rest = module.split(".")
    folder = {
        "edgefleet": "protos",
        "edgefleet_pipeline": "pipeline",
        "edgefleet_controller": "controller",
        "fleetctl": "fleetctl-cli",
        "edge_runtime": "edge-runtime",
    }[top]
    base = root / folder / top / Path(*rest) if rest else root / folder / top
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


WRONG_IMPORTS = [
    # (module that gets the import, the import line, the contract name that must break)
    ("edge_runtime.cli", "import edgefleet_controller.store", "never import each other"),
    ("edgefleet_controller.cli", "import edge_runtime.cli", "never import each other"),
    ("edgefleet.contract.manifest", "import edgefleet_controller", "The contract imports no side of it"),
    ("edgefleet.contract.layering", "import edge_runtime", "The contract imports no side of it"),
    ("edgefleet_controller.rollout.planner", "import time", "read no clock and do no I/O"),
    ("edgefleet_controller.rollout.planner", "import edgefleet_controller.store", "no I/O, clocks, gRPC or store"),
    ("edgefleet_controller.rollout.admission", "import grpc", "no I/O, clocks, gRPC or store"),
    ("edgefleet.contract.layering", "import socket", "read no clock and do no I/O"),
    ("edgefleet_controller.cli", "import onnxruntime", "The controller runs no models"),
    ("edge_runtime.cli", "import sqlalchemy", "no database stack"),
    ("fleetctl.main", "import edgefleet_controller", "fleetctl is a gRPC client"),
    ("edgefleet_controller.cli", "import edgefleet_testing", "never imports the testing package"),
    ("edgefleet_controller.rollout.facts", "import time", "read no clock and do no I/O"),
    ("edge_runtime.agent.sync.loop", "import edge_runtime.bootstrap", "Only the runtime's composition root"),
    ("edgefleet_controller.devices.service", "import edgefleet_controller.bootstrap", "Only the controller's"),
    ("edgefleet_controller.bundles.service", "import edgefleet.v1.fleet_pb2", "speak domain values"),
]


@pytest.mark.parametrize(("module", "line", "contract"), WRONG_IMPORTS, ids=[f"{m}:{i}" for m, i, _ in WRONG_IMPORTS])
def test_a_deliberately_wrong_import_breaks_its_contract(tree: Path, module: str, line: str, contract: str) -> None:
    path = _module_file(tree, module)
    original = path.read_text()
    try:
        path.write_text(original + f"\n{line}  # deliberately wrong\n")
        result = _lint(tree)
    finally:
        path.write_text(original)
    assert result.returncode != 0, result.stdout
    broken = result.stdout[result.stdout.index("Broken contracts") :]
    assert contract in broken
    assert line.split()[-1] in broken
