"""The device's choice on a bundle as the pipeline builds it (``build_precision_bundle --precision auto`` with
FP16): every candidate the builder carried is measured on the device and the rule picks among them; the
builder's own figures (``metrics.latency``, ``preferred``) do not decide anything on the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge_runtime.precision import choose_variant
from edgefleet.contract.bundle import BundleManifest, read_manifest
from edgefleet_pipeline.precision_bundle import build_precision_bundle
from edgefleet_pipeline.synthetic_documents import write_document_set
from edgefleet_testing.modelgen import make_classifier
from tests.integration.test_device_precision_variants import scripted_clock

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BundleManifest]:
    work = tmp_path_factory.mktemp("built")
    model = make_classifier(work / "model.onnx", num_classes=4, size=64, seed=0, extra_matmuls=2)
    spec = yaml.safe_load((REPO / "examples/bundles/classifier-v1.spec.yaml").read_text())
    spec.update(model=str(model), labels=["0", "90", "180", "270"], providers=["cpu"])
    (work / "bundle.spec.yaml").write_text(yaml.safe_dump(spec))
    write_document_set(work / "calibration", 16, seed=1, size=(96, 96))
    build_precision_bundle(
        work / "bundle.spec.yaml",
        work / "bundle",
        calibration_dir=work / "calibration",
        precision="auto",
        fp16=True,
        min_eval_images=10,
        latency_runs=5,
    )
    return work / "bundle", read_manifest(work / "bundle")


def test_every_carried_candidate_is_measured_and_the_rule_picks(built: tuple[Path, BundleManifest]) -> None:
    directory, manifest = built
    variants = manifest.precision_variants or {}
    assert {"fp32", "int8", "int8-u8s8"} <= set(variants)  # S8S8 and U8S8 both carried
    carried = sorted(variants)
    ms = {name: 12.0 for name in carried} | {"fp32": 10.0, "int8-u8s8": 3.0}
    choice = choose_variant(
        directory, manifest, providers=["cpu"], runs=4, warmup=0, clock=scripted_clock(carried, ms, 4)
    )
    assert sorted(choice.figures) == carried and choice.name == "int8-u8s8"
    assert choice.kinds["int8-u8s8"] == "U8S8 QDQ" and choice.kinds["int8"] == "S8S8 QDQ"
    # The builder preferred something on its machine; the device decides by its own figures.
    slow_u8 = {name: 12.0 for name in carried} | {"fp32": 10.0, "int8": 4.0, "int8-u8s8": 30.0}
    assert (
        choose_variant(
            directory, manifest, providers=["cpu"], runs=4, warmup=0, clock=scripted_clock(carried, slow_u8, 4)
        ).name
        == "int8"
    )
    int8_only = [n for n in carried if variants[n].precision == "int8"]
    forced = choose_variant(
        directory,
        manifest,
        providers=["cpu"],
        runs=4,
        warmup=0,
        precision="int8",
        clock=scripted_clock(int8_only, {n: ms[n] for n in int8_only}, 4),
    )
    assert forced.name == "int8-u8s8" and sorted(forced.figures) == int8_only
