"""Device-side precision choice on a real FP32 + QDQ INT8 bundle, with real onnxruntime.

The rule is checked with an injected clock (so the test knows which variant is faster); the real
measurement runs once and returns figures for both variants; variants whose accuracy failed are never timed
or served."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from edge_runtime.precision import VariantChoice, VariantError, choose_variant, eligible_variants, interleaved_latency
from edgefleet.contract.bundle import BundleManifest, read_manifest
from edgefleet.contract.bundle_sections import PrecisionVariant
from edgefleet.contract.precision import select_precision
from edgefleet_pipeline.precision_bundle import build_precision_bundle
from edgefleet_pipeline.synthetic_documents import write_document_set
from edgefleet_testing.modelgen import make_classifier

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def build_int8_bundle(work: Path) -> Path:
    """A bundle with fp32 + int8 variants: a generated classifier calibrated on synthetic document images."""
    model = make_classifier(work / "model.onnx", num_classes=4, size=64, seed=0, extra_matmuls=2)
    spec = yaml.safe_load((REPO / "examples/bundles/classifier-v1.spec.yaml").read_text())
    spec.update(model=str(model), labels=["0", "90", "180", "270"], providers=["cpu"])
    spec_path = work / "bundle.spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    write_document_set(work / "calibration", 16, seed=1, size=(96, 96))
    # S8S8 only: these tests are about one INT8 variant beside FP32 (the builder also makes U8S8 by default).
    build_precision_bundle(
        spec_path, work / "bundle", calibration_dir=work / "calibration", precision="int8", candidates={"int8"}
    )
    return work / "bundle"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_int8_bundle(tmp_path_factory.mktemp("int8"))


def with_int8_metrics(manifest: BundleManifest, **metrics: object) -> BundleManifest:
    variants = dict(manifest.precision_variants or {})
    int8 = variants["int8"]
    variants["int8"] = PrecisionVariant(int8.artifact, int8.precision, {**int8.metrics, **metrics})
    return dataclasses.replace(manifest, precision_variants=variants)


class FakeClock:
    """Nanoseconds that only move when a runner 'works'."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns

    def work(self, name: str, ms: float, log: list[str]) -> None:
        log.append(name)
        self.ns += int(ms * 1e6)


@pytest.mark.parametrize(
    ("fp32_ms", "int8_ms", "chosen"),
    [(10.0, 6.0, "int8"), (10.0, 9.8, "fp32"), (10.0, 14.0, "fp32")],
)
def test_rule_by_injected_clock(fp32_ms: float, int8_ms: float, chosen: str) -> None:
    clock, order = FakeClock(), list[str]()
    figures = interleaved_latency(
        {
            "fp32": lambda: clock.work("fp32", fp32_ms, order),
            "int8": lambda: clock.work("int8", int8_ms, order),
        },
        runs=6,
        clock=clock,
    )
    assert figures["fp32"].p50_ms == pytest.approx(fp32_ms) and figures["int8"].p50_ms == pytest.approx(int8_ms)
    assert figures["int8"].runs == 6
    # Interleaved with a rotating first runner: drift hits both variants alike.
    assert order[:6] == ["fp32", "int8", "int8", "fp32", "fp32", "int8"]
    # The 1.05x margin: 9.8 ms is faster than 10 ms, but not by enough to leave the reference.
    assert select_precision(figures, eligible={"fp32", "int8"}).chosen == chosen


def test_real_measurement_returns_figures_for_both_variants(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    choice = choose_variant(bundle, manifest, providers=["cpu"], runs=15)
    assert isinstance(choice, VariantChoice)
    assert set(choice.figures) == {"fp32", "int8"}
    for fig in choice.figures.values():
        assert fig.runs == 15 and 0 < fig.p50_ms <= fig.p90_ms
    expected = select_precision(choice.figures, eligible={"fp32", "int8"}).chosen
    assert choice.name == expected
    assert choice.model_path == bundle / manifest.artifact("model" if expected == "fp32" else "model.int8").path
    assert choice.model_path.is_file()
    assert choice.provider == "CPUExecutionProvider" and choice.refused == {}
    data = choice.to_dict()
    assert data["chosen"] == expected and data["measured"] is True


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"accuracy_loss": 0.05}, "accuracy loss 5.00% is above the bound 1.00%"),
        ({"accuracy_passed": False}, "accuracy check failed"),
        ({"accuracy_loss": None}, "no accuracy figures"),
    ],
)
def test_failed_accuracy_is_never_timed_or_served(bundle: Path, metrics: dict[str, object], reason: str) -> None:
    manifest = with_int8_metrics(read_manifest(bundle), **metrics)
    reference, eligible, refused = eligible_variants(manifest)
    assert reference == "fp32" and set(eligible) == {"fp32"} and reason in refused["int8"]
    choice = choose_variant(bundle, manifest, providers=["cpu"], runs=5)
    assert choice.name == "fp32" and choice.precision == "fp32"
    assert choice.figures == {} and not choice.measured
    assert reason in choice.refused["int8"]
    with pytest.raises(VariantError, match="no requested variant may be served"):
        choose_variant(bundle, manifest, providers=["cpu"], only={"int8"})


def test_forcing_a_variant_and_unknown_names(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    forced = choose_variant(bundle, manifest, providers=["cpu"], only={"int8"})
    assert (
        forced.name == "int8"
        and forced.precision == "int8"
        and forced.refused["fp32"] == "fp32: not requested (inference.precision int8)"
    )
    with pytest.raises(VariantError, match="has no precision variant 'fp16'"):
        choose_variant(bundle, manifest, providers=["cpu"], only={"fp16"})


def test_bundle_without_variants_serves_its_model(bundle: Path) -> None:
    manifest = dataclasses.replace(read_manifest(bundle), precision_variants=None)
    choice = choose_variant(bundle, manifest, providers=["cpu"])
    assert choice.name == "fp32" and choice.model_path.name == "model.onnx" and not choice.measured
