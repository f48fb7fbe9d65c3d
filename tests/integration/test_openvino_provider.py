"""OpenVINO for real: a bundle naming ``openvino`` runs through the edge runtime on OpenVINO's CPU plugin.

``onnxruntime-openvino`` replaces the ``onnxruntime`` module, so it lives in its own virtualenv
(``.venv-openvino``, made by ``make openvino-venv``, a prerequisite of ``make test``). The bundle is built here,
in the main venv, by the real pipeline; ``openvino_probe.py`` loads it there the way a device stages a bundle
and prints what ran. The same bundle loads here too, where OpenVINO is absent: CPU, nothing reported as a
fallback, OpenVINO listed as unavailable. The two runs must agree.

Tolerance: both sides compute in FP32 (the runtime pins OpenVINO's ``precision`` to FP32 on CPU), so they differ
only by kernel choice and summation order (oneDNN vs onnxruntime's MLAS). Measured on this CPU: at most 1.8e-7
on the classifier's probabilities, 2.1e-4 on the detector's raw tensor (values up to ~320, pixels and scores).
The bounds, 1e-4 absolute on probabilities and 1e-3 relative + 1e-2 absolute on the detector's tensor, sit
orders of magnitude above that and below what reduced precision gives: rounding those same outputs to bf16
alone moves them by 3.7e-3 and 2.0, so a silent bf16/fp16 computation (OpenVINO's CPU default with AMX) fails.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import structlog
import yaml

from edge_runtime.agent.update.switcher import load_engine
from edge_runtime.inference.providers import CPU, OPENVINO
from edgefleet.contract.bundle import read_manifest
from edgefleet.contract.processing.preprocess import preprocess
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_pipeline.synthetic_documents import write_document_set
from edgefleet_testing.orientation import orientation_spec
from edgefleet_testing.real_models import yolov8n_spec

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OV_PYTHON = REPO / ".venv-openvino" / "bin" / "python"
PROBE = Path(__file__).with_name("openvino_probe.py")
PROBE_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("frames")
    write_document_set(root, 6, seed=21)
    return root


def _build(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    build_bundle(path, tmp_path / "bundle")
    return tmp_path / "bundle"


def _probe(bundle: Path, frames: Path, cache: Path, out: Path) -> dict[str, Any]:
    if not OV_PYTHON.is_file():
        pytest.fail(f"{OV_PYTHON} is missing: run `make openvino-venv` (make test makes it)")
    args = {"--bundle": bundle, "--frames": frames, "--cache": cache, "--out": out}
    proc = subprocess.run(
        [str(OV_PYTHON), str(PROBE), *(part for pair in args.items() for part in map(str, pair))],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, f"probe failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def _cpu_reference(bundle: Path, frames: Path, cache: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The same bundle through the same device path in this venv (stock onnxruntime: no OpenVINO)."""
    manifest = read_manifest(bundle)
    with structlog.testing.capture_logs() as logs:
        engine = load_engine(bundle, manifest.digest, cache_root=cache, intra_op_threads=1)
    info = engine.session_info
    assert info.active[0] == CPU and info.fell_back is False
    assert info.unavailable == (OPENVINO,)
    assert not [e for e in logs if e["event"] == "inference.provider_fallback"]
    results: dict[str, Any] = {}
    raw: dict[str, np.ndarray] = {}
    for path in sorted(frames.glob("*.png")):
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        result = engine.infer(frame, len(results))
        results[path.stem] = {
            "labels": [o.label for o in result.outputs],
            "confidences": [o.confidence for o in result.outputs],
        }
        raw[path.stem] = engine.run_model(preprocess(frame, manifest.preprocess)[0])
    return results, raw


def _assert_ran_on_openvino(report: dict[str, Any]) -> None:
    assert OPENVINO in report["available"]
    # What the agent's hardware profile reports on Sync in this install.
    assert report["hardware_providers"][0] == OPENVINO and CPU in report["hardware_providers"]
    assert report["session"] == {
        "requested": [OPENVINO, CPU],
        "active": [OPENVINO, CPU],
        "fell_back": False,
        "unavailable": [],
    }
    assert report["provider"] == OPENVINO
    # OpenVINO took the whole graph: no node was left to onnxruntime's CPU provider.
    assert report["graph_providers"] == [OPENVINO]
    assert {f["provider"] for f in report["frames"].values()} == {OPENVINO}
    # The compiled model is cached under the bundle's cache dir, for the next start.
    assert report["cache_files"] and all(f.startswith("openvino/") for f in report["cache_files"])
    # A device type this box lacks (no NPU here): onnxruntime drops the provider, and the runtime notices.
    if "NPU" not in report["openvino_devices"]:
        assert report["npu_session"] == {"active": [CPU], "fell_back": True}


def test_orientation_bundle_runs_on_openvino_and_matches_cpu(tmp_path: Path, frames: Path) -> None:
    bundle = _build(tmp_path, orientation_spec(sla_ms=500, providers=["openvino", "cpu"]))
    expected, expected_raw = _cpu_reference(bundle, frames, tmp_path / "cpu-cache")

    cache = tmp_path / "ov-cache"
    first = _probe(bundle, frames, cache, tmp_path / "ov-1")
    _assert_ran_on_openvino(first)
    assert set(first["frames"]) == set(expected) and len(expected) == 6
    for name, want in expected.items():
        got = first["frames"][name]
        assert got["labels"] == want["labels"], name
        np.testing.assert_allclose(got["confidences"], want["confidences"], rtol=0, atol=1e-4, err_msg=name)
        probabilities = np.load(tmp_path / "ov-1" / f"{name}.npy")
        np.testing.assert_allclose(probabilities, expected_raw[name], rtol=0, atol=1e-4, err_msg=name)
    # The synthetic pages are readable: OpenVINO reads their rotation like CPU does, not just the same noise.
    assert [first["frames"][n]["labels"][0] for n in sorted(expected)] == ["0", "90", "180", "270", "0", "90"]

    # Restart: a new process on the same data dir reuses the compiled blob and answers the same.
    again = _probe(bundle, frames, cache, tmp_path / "ov-2")
    _assert_ran_on_openvino(again)
    assert again["cache_files"] == first["cache_files"]
    for name in expected:
        assert again["frames"][name]["labels"] == first["frames"][name]["labels"]
        np.testing.assert_allclose(
            np.load(tmp_path / "ov-2" / f"{name}.npy"), np.load(tmp_path / "ov-1" / f"{name}.npy"), rtol=0, atol=1e-6
        )


def test_ultralytics_yolov8n_export_runs_on_openvino_and_matches_cpu(tmp_path: Path, frames: Path) -> None:
    # A real export with dynamic batch, height and width: OpenVINO must compile it and give the same tensor. On
    # document pages this detector finds nothing above its threshold, so the raw tensor (every anchor's box and
    # class scores) carries the comparison; the decoded results must agree as well.
    bundle = _build(tmp_path, yolov8n_spec(sla_ms=500, providers=["openvino", "cpu"]))
    expected, expected_raw = _cpu_reference(bundle, frames, tmp_path / "cpu-cache")
    report = _probe(bundle, frames, tmp_path / "ov-cache", tmp_path / "ov")
    _assert_ran_on_openvino(report)
    for name, want in expected.items():
        raw = np.load(tmp_path / "ov" / f"{name}.npy")
        assert raw.shape == expected_raw[name].shape
        np.testing.assert_allclose(raw, expected_raw[name], rtol=1e-3, atol=1e-2, err_msg=name)
        got = report["frames"][name]
        assert got["labels"] == want["labels"], name
        np.testing.assert_allclose(got["confidences"], want["confidences"], rtol=0, atol=1e-3, err_msg=name)
