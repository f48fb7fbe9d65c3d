"""The device's choice among several precision variants (FP32, S8S8 and U8S8 QDQ INT8, FP16) of one real bundle,
with real onnxruntime: the rule with an injected clock (deterministic), what ``inference.precision`` may ask for
(strictly from a CLI, as a preference from a config manifest), the engine the switcher loads, and the choice
reported in the metric window."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from edge_runtime.agent.update.switcher import SlotSwitcher, load_variant
from edge_runtime.inference import EngineSlot
from edge_runtime.precision import (
    VariantChoice,
    VariantError,
    choice_engine_flags,
    choose_variant,
    eligible_variants,
    engine_flags,
)
from edge_runtime.profiling import profile_bundle
from edge_runtime.sources import open_source
from edge_runtime.telemetry.window import WindowAggregator
from edge_runtime.update.errors import EngineSwitchError
from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_sections import PrecisionVariant
from edgefleet.contract.bundle_spec import BundleSpec
from edgefleet.contract.errors import ManifestError
from edgefleet.contract.manifest_schema import validate_config_values
from edgefleet.contract.request_bounds import MAX_REASON_CHARS
from edgefleet.v1 import common_pb2
from edgefleet_pipeline.bundle_builder import build_bundle
from edgefleet_testing.modelgen import make_classifier
from fleetctl.fleet_cmds import precision_lines
from tests.integration.precision_variants_bundle import build_variant_bundle

pytestmark = pytest.mark.integration
SERVABLE = ["fp16", "fp32", "int8", "int8-u8s8"]  # the order choose_variant times them in (by name)
LOSSY = "int8-lossy: accuracy loss 5.00% is above the bound 1.00%"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BundleManifest]:
    return build_variant_bundle(tmp_path_factory.mktemp("variants"), size=96, extra_matmuls=2)


def scripted_clock(order: list[str], ms: Mapping[str, float], runs: int) -> Callable[[], int]:
    """Nanoseconds for ``interleaved_latency``: two reads per timed run (start, end), round-robin over ``order``
    with the first runner rotating each round, each run of ``name`` lasting ``ms[name]``. Reading past the
    script fails the test (a variant timed that should not have been)."""
    ticks: list[int] = []
    now = 0
    for i in range(runs):
        shift = i % len(order)
        for name in order[shift:] + order[:shift]:
            ticks.append(now)
            now += int(ms[name] * 1e6)
            ticks.append(now)
    script: Iterator[int] = iter(ticks)

    def clock() -> int:
        tick = next(script, None)
        assert tick is not None, "the clock was read more often than the variants in the script were timed"
        return tick

    return clock


def choose(
    bundle: tuple[Path, BundleManifest],
    ms: Mapping[str, float],
    precision: str = "auto",
    runs: int = 6,
    *,
    strict: bool = True,
) -> VariantChoice:
    directory, manifest = bundle
    order = [n for n in SERVABLE if n in ms]
    return choose_variant(
        directory,
        manifest,
        providers=["cpu"],
        runs=runs,
        warmup=0,
        precision=precision,
        clock=scripted_clock(order, ms, runs),
        intra_op_threads=1,
        strict=strict,
    )


def test_every_servable_variant_is_measured_and_the_fastest_served(bundle: tuple[Path, BundleManifest]) -> None:
    choice = choose(bundle, {"fp16": 9.0, "fp32": 10.0, "int8": 14.0, "int8-u8s8": 3.2})
    assert choice.name == "int8-u8s8" and choice.precision == "int8"
    assert sorted(choice.figures) == SERVABLE and all(f.runs == 6 for f in choice.figures.values())
    assert choice.figures["int8"].p50_ms == pytest.approx(14.0)
    assert choice.speedup == pytest.approx(10.0 / 3.2) and choice.reference == "fp32"
    assert choice.model_path == bundle[0] / bundle[1].artifact("model.int8-u8s8").path
    assert choice.refused == {"int8-lossy": LOSSY}  # failed its accuracy gate: never loaded nor timed
    assert choice.summary() == (
        "int8-u8s8 (U8S8 QDQ) on CPUExecutionProvider, 3.1x vs fp32: fp16 p50 9.0 ms, fp32 10.0 ms, int8 14.0 ms, "
        f"int8-u8s8 3.2 ms (measured on the device); refused: {LOSSY}"
    )
    data = choice.to_dict()
    assert data["chosen"] == "int8-u8s8" and data["kind"] == "U8S8 QDQ" and data["measured_on"] == "device"
    assert data["provider"] == "CPUExecutionProvider" and data["requested"] == "auto"
    assert choice.numbers() == {
        "speedup": 3.125,
        "p50_ms.fp16": 9.0,
        "p50_ms.fp32": 10.0,
        "p50_ms.int8": 14.0,
        "p50_ms.int8-u8s8": 3.2,
    }


@pytest.mark.parametrize(
    ("ms", "chosen"),
    [
        # Nobody is 1.05x faster than FP32: the reference stays.
        ({"fp16": 9.8, "fp32": 10.0, "int8": 9.7, "int8-u8s8": 9.6}, "fp32"),
        ({"fp16": 5.0, "fp32": 10.0, "int8": 7.0, "int8-u8s8": 6.0}, "fp16"),
        # S8S8 is the fast one here (a CPU with VNNI); both INT8 variants are always candidates.
        ({"fp16": 11.0, "fp32": 10.0, "int8": 4.0, "int8-u8s8": 6.0}, "int8"),
    ],
)
def test_the_rule_among_four_variants(bundle: tuple[Path, BundleManifest], ms: dict[str, float], chosen: str) -> None:
    assert choose(bundle, ms).name == chosen


def test_int8_means_the_fastest_int8_variant(bundle: tuple[Path, BundleManifest]) -> None:
    # Only the two servable INT8 variants are loaded and timed (the script has no others).
    choice = choose(bundle, {"int8": 4.0, "int8-u8s8": 6.0}, precision="int8")
    assert choice.name == "int8" and sorted(choice.figures) == ["int8", "int8-u8s8"]
    assert choice.refused["fp32"] == "fp32: not requested (inference.precision int8)"
    assert choice.refused["fp16"] == "fp16: not requested (inference.precision int8)"
    assert choice.refused["int8-lossy"] == LOSSY and choice.requested == "int8"
    assert "int8 (S8S8 QDQ) on CPUExecutionProvider, fp32 not measured: int8 p50 4.0 ms, int8-u8s8 6.0 ms" in (
        choice.summary()
    )
    assert choose(bundle, {"int8": 6.0, "int8-u8s8": 4.0}, precision="int8").name == "int8-u8s8"


@pytest.mark.parametrize(
    ("precision", "chosen", "artifact"),
    [("int8-u8s8", "int8-u8s8", "model.int8-u8s8"), ("fp32", "fp32", "model"), ("fp16", "fp16", "model.fp16")],
)
def test_a_precision_or_variant_name_with_one_servable_variant_is_not_measured(
    bundle: tuple[Path, BundleManifest], precision: str, chosen: str, artifact: str
) -> None:
    directory, manifest = bundle
    # No clock script: a single servable variant is served without being loaded or timed here.
    choice = choose_variant(
        directory, manifest, providers=["cpu"], precision=precision, clock=scripted_clock([], {}, 0)
    )
    assert choice.name == chosen and not choice.measured and choice.provider == ""
    assert choice.model_path == directory / manifest.artifact(artifact).path
    assert "the only servable variant (nothing measured)" in choice.served_on("CPUExecutionProvider").summary()


def test_unknown_and_refused_requests_name_what_the_bundle_has(bundle: tuple[Path, BundleManifest]) -> None:
    directory, manifest = bundle
    with pytest.raises(VariantError) as unknown:
        choose_variant(directory, manifest, providers=["cpu"], precision="int4")
    assert str(unknown.value) == (
        f"bundle {manifest.ref} has no precision variant 'int4' (it has: fp16 (fp16), fp32 (fp32), int8 (int8), "
        "int8-lossy (int8), int8-u8s8 (int8)); set inference.precision to auto, a precision (fp32, fp16, int8) "
        "the bundle has, or one of its variant names"
    )
    with pytest.raises(VariantError, match=rf"no requested variant may be served .*{re.escape(LOSSY)}"):
        choose_variant(directory, manifest, providers=["cpu"], precision="int8-lossy")
    _, eligible, refused = eligible_variants(manifest)
    assert sorted(eligible) == SERVABLE and list(refused) == ["int8-lossy"]


def test_tensorrt_flags_per_variant(bundle: tuple[Path, BundleManifest]) -> None:
    variants = bundle[1].precision_variants or {}
    # INT8 for any INT8 variant (S8S8 or U8S8: a QDQ model carries its scales, TensorRT needs INT8 on to use
    # them); FP16 kernels for the FP16 variant (else TensorRT builds its FP16 weights into an FP32 engine);
    # an operator's inference.fp16 still applies to the others.
    assert engine_flags(variants["int8"]) == (False, True)
    assert engine_flags(variants["int8-u8s8"]) == (False, True)
    assert engine_flags(variants["fp16"]) == (True, False)
    assert engine_flags(variants["fp32"]) == (False, False)
    assert engine_flags(variants["fp32"], fp16=True) == (True, False)


def test_the_switcher_serves_the_chosen_variant(bundle: tuple[Path, BundleManifest], tmp_path: Path) -> None:
    directory, manifest = bundle
    with capture_logs() as logs:
        loaded = load_variant(directory, manifest.digest, cache_root=tmp_path, intra_op_threads=1)
    choice = loaded.choice
    assert sorted(choice.figures) == SERVABLE and choice.name in SERVABLE
    assert choice.provider == loaded.engine.provider == "CPUExecutionProvider"
    served = [e["model"] for e in logs if e["event"] == "inference.engine_loaded"]
    assert Path(served[-1]) == choice.model_path  # the last load is the engine that serves: the chosen model

    forced = load_variant(
        directory,
        manifest.digest,
        cache_root=tmp_path,
        config={"inference": {"precision": "int8-u8s8"}},
        intra_op_threads=1,
    )
    assert forced.choice.name == "int8-u8s8" and forced.choice.requested == "int8-u8s8"
    assert forced.choice.provider == "CPUExecutionProvider"
    # Strict by default (edge-runtime infer --precision): a variant the bundle lacks is refused.
    with pytest.raises(EngineSwitchError, match=r"has no precision variant 'int4' .*int8-u8s8 \(int8\)"):
        load_variant(directory, manifest.digest, cache_root=tmp_path, config={"inference": {"precision": "int4"}})
    # As the agent loads from its config: a preference, served as auto would serve it, and said so.
    preferred = load_variant(
        directory,
        manifest.digest,
        cache_root=tmp_path,
        config={"inference": {"precision": "int4"}},
        intra_op_threads=1,
        strict=False,
    )
    assert sorted(preferred.choice.figures) == SERVABLE and preferred.choice.requested == "int4"
    assert preferred.choice.note == (
        "inference.precision int4 requested; bundle has fp16, fp32, int8, int8-lossy (int8), int8-u8s8 (int8): "
        f"serving {preferred.choice.name}"
    )


def test_config_schema_takes_variant_names() -> None:
    for value in ("auto", "fp32", "fp16", "int8", "int8-u8s8"):
        validate_config_values({"inference": {"precision": value}})
    with pytest.raises(ManifestError, match=r"inference\.precision: must be auto, a precision"):
        validate_config_values({"inference": {"precision": "Int8 U8S8"}})


def test_the_metric_window_names_the_served_variant() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    window = WindowAggregator(
        bundle_digest="sha256:" + "a" * 64, provider="CPUExecutionProvider", precision="int8-u8s8", started_at=t0
    )
    window.observe(3.0, 2.0, 0.9)
    closed = window.close(t0.replace(second=10))
    assert closed.precision == "int8-u8s8" and closed.provider == "CPUExecutionProvider"
    # And on the next window of the same aggregator.
    window.observe(3.0, 2.0, 0.9)
    assert window.close(t0.replace(second=20)).precision == "int8-u8s8"


def test_fleetctl_describe_line_from_the_reported_choice(bundle: tuple[Path, BundleManifest]) -> None:
    # What the agent puts in details.precision, as the controller hands it to fleetctl.
    choice = choose(bundle, {"fp16": 21.0, "fp32": 24.9, "int8": 44.3, "int8-u8s8": 7.8})
    reported = common_pb2.ReportedState()
    reported.details.update({"precision": cast(dict[str, Any], choice.to_dict())})
    assert precision_lines(reported) == [
        "precision:   int8-u8s8 (U8S8 QDQ) on CPUExecutionProvider, 3.2x vs fp32: fp16 p50 21.0 ms, fp32 24.9 ms, "
        "int8 44.3 ms, int8-u8s8 7.8 ms (measured on the device)",
        f"             refused {LOSSY}",
    ]
    forced = choose(bundle, {"int8": 44.3, "int8-u8s8": 7.8}, precision="int8")
    reported.details.update({"precision": cast(dict[str, Any], forced.to_dict())})
    assert precision_lines(reported)[0] == (
        "precision:   int8-u8s8 (U8S8 QDQ) on CPUExecutionProvider, fp32 not measured: int8 p50 44.3 ms, "
        "int8-u8s8 7.8 ms (measured on the device); inference.precision int8"
    )
    # A config preference the bundle could not meet: the device's note says what it serves instead.
    noted = dict(cast(dict[str, Any], forced.to_dict()), note="inference.precision fp16 requested; serving fp32")
    reported.details.update({"precision": noted})
    assert precision_lines(reported)[0].endswith(
        "(measured on the device); inference.precision fp16 requested; serving fp32"
    )
    assert precision_lines(common_pb2.ReportedState()) == []  # a device that reports no choice: no line


def test_candidates_the_builder_refused_are_reported(bundle: tuple[Path, BundleManifest]) -> None:
    directory, manifest = bundle
    variants = dict(manifest.precision_variants or {})
    fp32 = variants["fp32"]
    built = {"int8-entropy": "accuracy loss 3.10% is above the bound 1.00%"}
    variants["fp32"] = dataclasses.replace(fp32, metrics={**fp32.metrics, "refused": built})
    refusing = dataclasses.replace(manifest, precision_variants=variants)
    choice = choose_variant(directory, refusing, providers=["cpu"], precision="fp32")
    reason = "int8-entropy: refused when the bundle was built: accuracy loss 3.10% is above the bound 1.00%"
    assert choice.refused["int8-entropy"] == reason and choice.refused["int8-lossy"] == LOSSY
    with pytest.raises(VariantError, match=re.escape(f"int8-u8s8 (int8); {reason})")):
        choose_variant(directory, refusing, providers=["cpu"], precision="int8-entropy")


def test_a_variant_this_device_cannot_load_is_refused_not_fatal(bundle: tuple[Path, BundleManifest]) -> None:
    directory, manifest = bundle
    # An "INT8 variant" whose artifact onnxruntime cannot load (the golden set: not a model).
    broken = PrecisionVariant("golden", "int8", {"accuracy_loss": 0.0})
    with_broken = dataclasses.replace(
        manifest, precision_variants={**(manifest.precision_variants or {}), "int8-x": broken}
    )
    choice = choose(
        (directory, with_broken), {"fp16": 9.0, "fp32": 10.0, "int8": 14.0, "int8-u8s8": 3.2}
    )  # the script has no int8-x: it is never timed
    assert choice.name == "int8-u8s8" and sorted(choice.figures) == SERVABLE
    assert choice.refused["int8-x"].startswith("int8-x: cannot be loaded on this device: onnxruntime cannot load")
    assert len(choice.summary()) <= MAX_REASON_CHARS
    only_broken = dataclasses.replace(
        manifest,
        precision_variants={"fp32": (manifest.precision_variants or {})["fp32"], "int8-x": broken, "int8-y": broken},
    )
    with pytest.raises(VariantError, match="no precision variant can be loaded on this device: int8-x: cannot"):
        choose_variant(directory, only_broken, providers=["cpu"], precision="int8")


def test_u8s8_is_not_a_tensorrt_candidate(bundle: tuple[Path, BundleManifest]) -> None:
    directory, manifest = bundle
    jetson = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    gpu = ["tensorrt", "cuda", "cpu"]
    reason = "int8-u8s8: U8S8 QDQ cannot run on TensorRT (it takes signed INT8 only); its S8S8 variants can"
    # Decided before anything loads (fp32 forced: nothing is loaded or timed here).
    choice = choose_variant(directory, manifest, providers=gpu, precision="fp32", available=jetson)
    assert choice.refused["int8-u8s8"] == reason and choice.name == "fp32"
    with pytest.raises(VariantError, match=re.escape(reason)):
        choose_variant(directory, manifest, providers=gpu, precision="int8-u8s8", available=jetson)
    # Where TensorRT is absent (or not first), U8S8 stays a candidate.
    cpu_only = choose_variant(directory, manifest, providers=gpu, precision="int8-u8s8", available=jetson[2:])
    assert cpu_only.name == "int8-u8s8"


def fp32_only_bundle(work: Path) -> tuple[Path, BundleManifest]:
    """A bundle without precision variants (its model is FP32), as most publishers build them."""
    model = make_classifier(work / "model.onnx", num_classes=4, size=32, seed=2)
    spec = BundleSpec.from_dict(
        {
            "name": "plain",
            "version": "1.0.0",
            "model": str(model),
            "preprocess": {"size": [32, 32], "layout": "nchw", "dtype": "float32", "scale": 1 / 255},
            "postprocess": {"kind": "classification", "top_k": 1},
            "labels": ["a", "b", "c", "d"],
            "latency": {"sla_ms": 500},
            "providers": ["cpu"],
        },
        source="plain.yaml",
        base_dir=work,
    )
    manifest = build_bundle(spec, work / "bundle", golden_count=2)
    return work / "bundle", manifest


def test_config_int8_is_a_preference_fp32_only_bundles_serve_fp32_then_an_int8_bundle_serves_int8(
    bundle: tuple[Path, BundleManifest], tmp_path: Path
) -> None:
    # A site config (manifests/sites/farm-b.yaml) asks every device for int8, whatever bundle it gets.
    config = {"inference": {"precision": "int8"}}
    switcher = SlotSwitcher(EngineSlot(), cache_root=tmp_path / "cache", configs=lambda _d: config, intra_op_threads=1)
    chosen: list[VariantChoice] = []
    switcher.listen(lambda _digest, choice: chosen.append(choice))
    plain_dir, plain = fp32_only_bundle(tmp_path / "plain")
    switcher.stage(plain.digest, plain_dir)  # staging no longer fails for the site's preference
    choice = switcher.choice_of(switcher.staged_engine(plain.digest))
    assert choice is not None and choice == chosen[-1]
    note = "inference.precision int8 requested; bundle has fp32 only: serving fp32"
    assert choice.name == "fp32" and choice.requested == "int8" and choice.note == note
    assert (
        choice.summary() == f"fp32 (FP32) on CPUExecutionProvider, the only servable variant (nothing measured); {note}"
    )
    assert choice.to_dict()["note"] == note and choice.to_dict()["requested"] == "int8"

    # Next, a bundle that has INT8 variants: the preference is honoured, with no note.
    directory, manifest = bundle
    switcher.stage(manifest.digest, directory)
    served = switcher.choice_of(switcher.staged_engine(manifest.digest))
    assert served is not None and served.precision == "int8" and served.name in ("int8", "int8-u8s8")
    assert served.note == "" and served.requested == "int8" and sorted(served.figures) == ["int8", "int8-u8s8"]
    assert served.summary().endswith(f"; inference.precision int8; refused: {served.refused['fp16']}; "
        f"{served.refused['fp32']}; {LOSSY}")  # fmt: skip

    # And the FP32-only bundle again, under the same config: the same preference, the same note.
    switcher.stage(plain.digest, plain_dir)
    again = switcher.choice_of(switcher.staged_engine(plain.digest))
    assert again is not None and again.name == "fp32" and again.note == note


def test_a_config_request_none_of_whose_variants_may_be_served_is_served_as_auto(
    bundle: tuple[Path, BundleManifest],
) -> None:
    ms = {"fp16": 9.0, "fp32": 10.0, "int8": 14.0, "int8-u8s8": 3.2}
    # int8-lossy exists but failed its accuracy gate: strictly an error, as a preference auto with a note.
    with pytest.raises(VariantError, match="no requested variant may be served"):
        choose(bundle, ms, precision="int8-lossy")
    choice = choose(bundle, ms, precision="int8-lossy", strict=False)
    assert choice.name == "int8-u8s8" and sorted(choice.figures) == SERVABLE  # exactly what auto serves
    assert choice.requested == "int8-lossy" and choice.refused["int8-lossy"] == LOSSY
    assert choice.note == (
        "inference.precision int8-lossy requested; no int8-lossy variant may be served on this device: "
        "serving int8-u8s8"
    )
    assert choice.summary().endswith(f"(measured on the device); {choice.note}; refused: {LOSSY}")
    # A preference the bundle can honour is served as asked, exactly as a strict request.
    honoured = choose(bundle, {"int8": 4.0, "int8-u8s8": 6.0}, precision="int8", strict=False)
    assert honoured.name == "int8" and honoured.note == "" and sorted(honoured.figures) == ["int8", "int8-u8s8"]


@pytest.mark.parametrize(
    ("precision", "flags"), [("fp16", (True, False)), ("int8-u8s8", (False, True)), ("fp32", (False, False))]
)
def test_profile_loads_the_variant_with_the_switchers_engine_flags(
    bundle: tuple[Path, BundleManifest], tmp_path: Path, precision: str, flags: tuple[bool, bool]
) -> None:
    directory, manifest = bundle
    with capture_logs() as logs:
        profile = profile_bundle(
            directory,
            manifest,
            iter(open_source("synthetic:30", size=(96, 96), seed=1)),
            seconds=5.0,
            warmup=0,
            read_sensors=lambda: (),
            now=lambda: datetime(2026, 1, 1, tzinfo=UTC),
            hardware_class="x86-avx2",
            providers=["cpu"],
            precision=precision,
            cache_dir=tmp_path,
            max_frames=3,
            intra_op_threads=1,
        )
    assert profile.variant == precision and profile.frames == 3
    (measured,) = [e for e in logs if e["event"] == "profile.measured"]
    # What TensorRT would be asked for (FP16 kernels for the FP16 variant, INT8 for an INT8 one): the flags the
    # agent's switcher loads the same choice with.
    assert (measured["fp16"], measured["int8"]) == flags
    choice = choose_variant(directory, manifest, providers=["cpu"], precision=precision)
    assert choice_engine_flags(manifest, choice) == flags
    # An explicit --precision stays strict.
    with pytest.raises(VariantError, match="has no precision variant 'int4'"):
        profile_bundle(
            directory,
            manifest,
            iter(open_source("synthetic:30", size=(96, 96), seed=1)),
            seconds=1.0,
            warmup=0,
            read_sensors=lambda: (),
            now=lambda: datetime(2026, 1, 1, tzinfo=UTC),
            hardware_class="x86-avx2",
            precision="int4",
            cache_dir=tmp_path,
        )
