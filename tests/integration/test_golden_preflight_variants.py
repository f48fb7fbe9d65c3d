"""The golden preflight of a device serving a lower-precision variant, on a bundle the pipeline really built.

The bundle: rapidocr's PaddlePaddle text-direction classifier (a real export from a pinned wheel), built by
``build_precision_bundle --precision int8`` from generated text lines, so it carries FP32, S8S8 and U8S8. Its
golden outputs are FP32's, with the bundle's default tolerance (1e-3). The staged engine is loaded by the
agent's ``SlotSwitcher`` under an operator config (``inference.precision``) and the preflight is the
``CanaryEvaluator``'s own (``start_canary``): an INT8 engine passes with the tolerance the builder recorded
for its variant; a variant whose weights were scaled (a device computing the model wrongly) fails it; a
bundle built before tolerances were recorded is judged with the bundle's tolerance, as it always was.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper
from structlog.testing import capture_logs

from edge_runtime.agent.canary.evaluator import CanaryEvaluator, golden_check, served_golden_tolerance
from edge_runtime.agent.runner import FrameRunner
from edge_runtime.agent.update.switcher import SlotSwitcher
from edge_runtime.inference import EngineSlot
from edge_runtime.sources import open_source
from edge_runtime.update.events import CanaryFailed, CanaryStarted, UpdateEvent
from edgefleet.contract.bundle import BundleManifest, read_manifest
from edgefleet.contract.bundle_layout import MANIFEST_NAME
from edgefleet.contract.bundle_policy import GoldenTolerance
from edgefleet.contract.bundle_sections import PrecisionVariant
from edgefleet.v1 import common_pb2
from edgefleet_pipeline.precision_bundle import GOLDEN_MARGIN, build_precision_bundle
from edgefleet_testing.calibration_images import write_text_lines
from edgefleet_testing.real_models import text_direction_spec

pytestmark = pytest.mark.integration
INT8 = ("int8", "int8-u8s8")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BundleManifest]:
    work = tmp_path_factory.mktemp("golden-variants")
    write_text_lines(work / "cal", 16, seed=3)
    write_text_lines(work / "eval", 16, seed=4)
    (work / "spec.yaml").write_text(yaml.safe_dump(text_direction_spec(providers=["cpu"])))
    build_precision_bundle(
        work / "spec.yaml",
        work / "bundle",
        calibration_dir=work / "cal",
        eval_dir=work / "eval",
        precision="int8",
        max_accuracy_loss=0.1,
        latency_runs=5,
    )
    return work / "bundle", read_manifest(work / "bundle")


@dataclass
class Preflight:
    """What ``start_canary`` answered, the verdicts it reported and its ``canary.preflight`` log."""

    events: list[UpdateEvent]
    verdicts: list[common_pb2.CanaryVerdict]
    log: Mapping[str, Any]
    served: str


def preflight(directory: Path, tmp: Path, precision: str) -> Preflight:
    """Stage ``directory`` as the device's first bundle under ``inference.precision: precision`` and run the
    evaluator's golden preflight on it (the shadow run that follows a pass is stopped at once)."""
    manifest = read_manifest(directory)
    config = {"inference": {"precision": precision}}
    slot = EngineSlot()
    switcher = SlotSwitcher(slot, cache_root=tmp / "cache", configs=lambda _digest: config, intra_op_threads=1)
    runner = FrameRunner(slot, iter(open_source("synthetic:30", size=(192, 48), seed=1)))
    verdicts: list[common_pb2.CanaryVerdict] = []
    evaluator = CanaryEvaluator(
        switcher, runner, lambda _e: None, config=lambda: config, report_verdict=verdicts.append
    )
    switcher.stage(manifest.digest, directory)
    choice = switcher.choice_of(switcher.staged_engine(manifest.digest))
    assert choice is not None
    try:
        with capture_logs() as logs:
            events = list(evaluator.start_canary(manifest.digest, directory))
    finally:
        evaluator.stop(manifest.digest)
    (entry,) = [e for e in logs if e["event"] == "canary.preflight"]
    return Preflight(events, verdicts, entry, choice.name)


def int8_tolerances(manifest: BundleManifest) -> dict[str, Mapping[str, Any]]:
    variants = manifest.precision_variants or {}
    out = {}
    for name in INT8:
        recorded = variants[name].metrics["golden_tolerance"]
        assert isinstance(recorded, Mapping)
        out[name] = recorded
    return out


def test_the_builder_records_each_variants_golden_tolerance(built: tuple[Path, BundleManifest]) -> None:
    _, manifest = built
    variants = manifest.precision_variants or {}
    bundle = manifest.canary.golden_tolerance
    assert bundle == GoldenTolerance()  # the default 1e-3: nothing loosened for the whole bundle
    assert "golden_tolerance" not in variants["fp32"].metrics  # the reference is judged with the bundle's
    for name, recorded in int8_tolerances(manifest).items():
        deviation = recorded["max_abs_deviation"]
        # The problem is real: quantization alone moves this model's outputs beyond the bundle's tolerance.
        assert deviation > bundle.atol, name
        assert recorded["atol"] >= GOLDEN_MARGIN * deviation and recorded["atol"] >= bundle.atol
        assert recorded["atol"] == pytest.approx(GOLDEN_MARGIN * deviation, abs=1e-5)
        assert recorded["rtol"] == bundle.rtol and recorded["cases"] == 4 and recorded["measured_by"] == "builder"


@pytest.mark.parametrize("precision", ["int8", "int8-u8s8"])
def test_an_int8_device_passes_its_preflight_with_the_default_bundle_tolerance(
    built: tuple[Path, BundleManifest], tmp_path: Path, precision: str
) -> None:
    directory, manifest = built
    result = preflight(directory, tmp_path, precision)
    assert result.served in INT8 and (precision == "int8" or result.served == precision)
    assert result.events == [CanaryStarted()] and result.verdicts == []  # passed: the shadow canary started
    atol = int8_tolerances(manifest)[result.served]["atol"]
    assert result.log["passed"] is True
    summary = result.log["summary"]
    assert summary.startswith(f"golden preflight passed (variant {result.served}): 4 cases, max abs diff ")
    assert summary.endswith(f"within atol {atol:g}, rtol 0.001: the builder's tolerance for variant {result.served}")
    # Judged with the bundle's own tolerance (as before), the same engine fails: what the fix is about.
    switcher = SlotSwitcher(
        EngineSlot(), cache_root=tmp_path / "c2", configs=lambda _d: {"inference": {"precision": precision}}
    )
    switcher.stage(manifest.digest, directory)
    staged = switcher.staged_engine(manifest.digest)
    assert staged is not None
    names = [o.name for o in staged.session.get_outputs()]
    passed, reason = golden_check(staged.run_tensor, staged.input_name, names, directory)
    assert not passed and "(atol 0.001, rtol 0.001: the bundle's canary.golden_tolerance (variant unknown))" in reason


def test_fp32_is_judged_with_the_bundle_tolerance_and_passes(
    built: tuple[Path, BundleManifest], tmp_path: Path
) -> None:
    directory, _ = built
    result = preflight(directory, tmp_path, "fp32")
    assert result.served == "fp32" and result.log["passed"] is True
    assert result.log["summary"].endswith(
        "within atol 0.001, rtol 0.001: the bundle's canary.golden_tolerance (variant fp32)"
    )


def scaled_weights(model: Path, factor: float) -> None:
    """Scale every weight of a QDQ model (its weight DequantizeLinear scales) by ``factor``, in place."""
    proto = onnx.load(str(model))
    initializers = {i.name: i for i in proto.graph.initializer}
    weights = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers]
    assert weights, "a QDQ model dequantizes its weights"
    for node in weights:
        scale = initializers[node.input[1]]
        scaled = (numpy_helper.to_array(scale) * factor).astype(np.float32)
        scale.CopyFrom(numpy_helper.from_array(scaled, scale.name))
    onnx.save(proto, str(model))


@pytest.mark.parametrize("factor", [1.1, 2.0])
def test_a_variant_computed_wrongly_still_fails(
    built: tuple[Path, BundleManifest], tmp_path: Path, factor: float
) -> None:
    directory, manifest = built
    # The device's copy of the U8S8 model computes with scaled weights (what a broken INT8 build or wrong
    # scales do); its bundle.json still records the tolerance the builder measured on the right model.
    broken = tmp_path / "bundle"
    shutil.copytree(directory, broken)
    scaled_weights(broken / manifest.artifact("model.int8-u8s8").path, factor)
    result = preflight(broken, tmp_path, "int8-u8s8")
    atol = int8_tolerances(manifest)["int8-u8s8"]["atol"]
    assert result.served == "int8-u8s8" and result.log["passed"] is False
    (failed,) = [e for e in result.events if isinstance(e, CanaryFailed)]
    assert failed.reason.startswith("golden case ")
    assert " of variant int8-u8s8 differs from the reference by up to " in failed.reason
    assert failed.reason.endswith(
        f"(atol {atol:g}, rtol 0.001: the builder's tolerance for variant int8-u8s8); this device computes the "
        "model differently"
    )
    (verdict,) = result.verdicts
    assert verdict.outcome == common_pb2.CanaryVerdict.OUTCOME_FAIL and list(verdict.reasons) == [failed.reason]


def without_tolerances(directory: Path, manifest: BundleManifest, out: Path) -> Path:
    """A copy of the bundle as built before variant tolerances were recorded."""
    shutil.copytree(directory, out)
    variants = {
        name: dataclasses.replace(v, metrics={k: x for k, x in v.metrics.items() if k != "golden_tolerance"})
        for name, v in (manifest.precision_variants or {}).items()
    }
    (out / MANIFEST_NAME).write_bytes(dataclasses.replace(manifest, precision_variants=variants).to_json_bytes())
    return out


def test_an_older_bundle_without_variant_tolerances_keeps_the_bundle_tolerance(
    built: tuple[Path, BundleManifest], tmp_path: Path
) -> None:
    directory, manifest = built
    older = without_tolerances(directory, manifest, tmp_path / "older")
    result = preflight(older, tmp_path, "int8-u8s8")
    assert result.served == "int8-u8s8" and result.log["passed"] is False
    assert result.log["summary"].endswith(
        "(atol 0.001, rtol 0.001: the bundle's canary.golden_tolerance (variant int8-u8s8)); this device computes "
        "the model differently"
    )
    # And FP32 on the same older bundle passes as it always did.
    assert preflight(older, tmp_path / "fp32", "fp32").log["passed"] is True


def test_a_recorded_tolerance_is_never_tighter_than_the_bundles_and_must_be_numbers(
    built: tuple[Path, BundleManifest],
) -> None:
    _, manifest = built
    variants = dict(manifest.precision_variants or {})

    def with_recorded(value: object) -> BundleManifest:
        int8 = variants["int8"]
        metrics = {**int8.metrics, "golden_tolerance": value}
        return dataclasses.replace(manifest, precision_variants={**variants, "int8": PrecisionVariant(
            int8.artifact, int8.precision, metrics)})  # fmt: skip

    tight = served_golden_tolerance(with_recorded({"atol": 1e-6, "rtol": 0.0}), "int8")
    assert tight.tolerance == GoldenTolerance(atol=1e-3, rtol=1e-3)
    assert served_golden_tolerance(manifest, "fp32").tolerance == manifest.canary.golden_tolerance
    assert served_golden_tolerance(manifest, "no-such-variant").source == (
        "the bundle's canary.golden_tolerance (variant no-such-variant)"
    )
    for bad in ({"atol": "0.3", "rtol": 0.001}, {"atol": -1.0, "rtol": 0.001}, {"rtol": 0.001}, "0.3"):
        with pytest.raises(ValueError, match=r"variant 'int8': metrics\.golden_tolerance\.(atol|rtol) must be"):
            served_golden_tolerance(with_recorded(bad), "int8")
