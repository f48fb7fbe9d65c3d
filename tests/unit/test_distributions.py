"""Each boundary is its own distribution, with only its own dependencies (docs/ARCHITECTURE.md).

The dependency closure of each edgefleet distribution is computed from the installed metadata (what pip
would install for it alone, extras included where the distribution asks for them), so a dependency added to
the wrong pyproject.toml fails here, not on a device.
"""

from __future__ import annotations

import importlib
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from edgefleet_testing.distributions import closure

REPO = Path(__file__).resolve().parents[2]

DISTRIBUTIONS = {
    "edgefleet-contract": "protos",
    "edgefleet-pipeline": "pipeline",
    "edgefleet-controller": "controller",
    "edgefleet-fleetctl": "fleetctl-cli",
    "edgefleet-edge-runtime": "edge-runtime",
    "edgefleet-testing": "testing",
}


def test_every_boundary_is_an_installed_distribution_with_its_own_pyproject() -> None:
    for dist, folder in DISTRIBUTIONS.items():
        project = tomllib.loads((REPO / folder / "pyproject.toml").read_text())["project"]
        assert project["name"] == dist
        assert metadata.version(dist) == project["version"]


def test_the_edge_runtime_installs_no_database_stack_or_rich_cli() -> None:
    runtime = closure("edgefleet-edge-runtime")
    assert {"onnxruntime", "opencv-python-headless", "tenacity", "grpcio"} <= runtime
    assert not runtime & {"sqlalchemy", "alembic", "typer", "rich", "psycopg", "edgefleet-controller"}
    assert "edgefleet-pipeline" not in runtime


def test_the_controller_installs_no_model_runtime_or_opencv() -> None:
    controller = closure("edgefleet-controller", frozenset({"postgres"}))
    assert {"sqlalchemy", "alembic", "grpcio", "edgefleet-contract"} <= controller
    assert not controller & {"onnxruntime", "onnx", "opencv-python-headless", "edgefleet-edge-runtime"}


def test_fleetctl_installs_without_the_controllers_database_stack() -> None:
    fleetctl = closure("edgefleet-fleetctl")
    assert {"typer", "rich", "grpcio", "edgefleet-contract"} <= fleetctl
    assert not fleetctl & {"sqlalchemy", "alembic", "psycopg", "edgefleet-controller", "edgefleet-edge-runtime"}


@pytest.mark.parametrize("dist", ["edgefleet-contract", "edgefleet-pipeline"])
def test_the_contract_and_pipeline_need_neither_side(dist: str) -> None:
    assert not closure(dist) & {"edgefleet-controller", "edgefleet-edge-runtime", "sqlalchemy", "alembic"}


def test_opencv_comes_with_the_contract_only_through_its_processing_extra() -> None:
    assert "opencv-python-headless" not in closure("edgefleet-contract")
    assert "opencv-python-headless" in closure("edgefleet-contract", frozenset({"processing"}))


@pytest.mark.parametrize(
    "package",
    ["edgefleet", "edgefleet_pipeline", "edgefleet_controller", "fleetctl", "edge_runtime", "edgefleet_testing"],
)
def test_from_the_repository_root_each_package_is_the_package_not_a_folder(package: str) -> None:
    """The tests, the demo and the benchmarks run with the repository root on sys.path: a distribution folder named
    like its package would shadow it as an empty namespace package (its ``__init__`` never run)."""
    module = importlib.import_module(package)
    assert module.__file__ is not None, f"{package} resolves to a namespace package at {list(module.__path__)}"
    assert Path(module.__file__).parent.name == package
