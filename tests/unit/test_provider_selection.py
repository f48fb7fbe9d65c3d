"""Execution-provider selection as a pure function: every provider the bundle format names, decided for devices
this machine is not (an Intel box with onnxruntime-openvino, a Mac with CoreML, ROCm and DirectML hosts).

CoreML is tested here only (it needs macOS); OpenVINO also runs for real in
``tests/integration/test_openvino_provider.py``, TensorRT/CUDA in ``make gpu-check``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_runtime.inference.errors import ProviderError
from edge_runtime.inference.providers import (
    COREML,
    CPU,
    CUDA,
    DIRECTML,
    OPENVINO,
    PROVIDER_NAMES,
    ROCM,
    TENSORRT,
    ProviderChoice,
    ProviderOptions,
    provider_name,
    resolve_preference,
    select_providers,
)
from edgefleet.contract.bundle_sections import KNOWN_PROVIDERS

CACHE = Path("/data/cache/sha-of-bundle")
INTEL_BOX = [OPENVINO, CPU]
MAC = [COREML, CPU]


def names(chosen: list[ProviderChoice]) -> list[str]:
    return [provider_name(c) for c in chosen]


def options_of(chosen: list[ProviderChoice], name: str) -> ProviderOptions:
    for choice in chosen:
        if not isinstance(choice, str) and choice[0] == name:
            return choice[1]
    raise AssertionError(f"{name} not chosen with options: {chosen!r}")


def test_every_provider_the_bundle_format_accepts_is_known_to_the_device() -> None:
    # A bundle that validates must never be refused by the device for naming a provider.
    assert tuple(PROVIDER_NAMES) == KNOWN_PROVIDERS
    resolved = resolve_preference(KNOWN_PROVIDERS)
    assert resolved == [TENSORRT, CUDA, ROCM, OPENVINO, DIRECTML, COREML, CPU]
    # onnxruntime's own names are accepted too, and duplicates collapse.
    assert resolve_preference([OPENVINO, "openvino", "cpu"]) == [OPENVINO, CPU]


def test_unknown_provider_names_what_is_accepted() -> None:
    with pytest.raises(ProviderError, match="unknown execution provider 'vulkan'; accepted: tensorrt, cuda, rocm"):
        select_providers(["vulkan", "cpu"], INTEL_BOX, cache_dir=CACHE)


def test_openvino_on_an_intel_box_defaults_to_cpu_fp32_with_its_cache_under_the_data_dir() -> None:
    chosen = select_providers(["openvino", "cpu"], INTEL_BOX, cache_dir=CACHE)
    assert names(chosen) == [OPENVINO, CPU]
    assert options_of(chosen, OPENVINO) == {
        "device_type": "CPU",
        "precision": "FP32",
        "cache_dir": str(CACHE / "openvino"),
    }
    # The CPU plugin accepts only FP32/ACCURACY: fp16 must not ask it for FP16 (onnxruntime would drop OpenVINO).
    assert options_of(select_providers(["openvino"], INTEL_BOX, cache_dir=CACHE, fp16=True), OPENVINO)["precision"] == (
        "FP32"
    )
    # OpenVINO runs its subgraph on its own pool: the runtime's thread count reaches it.
    threaded = select_providers(["openvino"], INTEL_BOX, cache_dir=CACHE, threads=2)
    assert options_of(threaded, OPENVINO)["num_of_threads"] == "2"


@pytest.mark.parametrize(
    ("device", "fp16", "device_type", "precision"),
    [
        ("GPU", True, "GPU", "FP16"),
        ("GPU", False, "GPU", "FP32"),
        ("gpu.1", True, "GPU.1", "FP16"),
        ("NPU", False, "NPU", None),  # the NPU computes in FP16 whatever is asked: left to OpenVINO
        ("AUTO:GPU,CPU", False, "AUTO:GPU,CPU", None),
        ("HETERO:NPU,GPU.0,CPU", True, "HETERO:NPU,GPU.0,CPU", None),
    ],
)
def test_openvino_device_types(device: str, fp16: bool, device_type: str, precision: str | None) -> None:
    chosen = select_providers(["openvino", "cpu"], INTEL_BOX, cache_dir=CACHE, fp16=fp16, openvino_device=device)
    options = options_of(chosen, OPENVINO)
    assert options["device_type"] == device_type
    assert options.get("precision") == precision
    assert options["cache_dir"] == str(CACHE / "openvino")


@pytest.mark.parametrize("device", ["TPU", "GPU0", "AUTO:", "CPU,GPU", "", "AUTO:GPU;rm -rf"])
def test_openvino_device_type_is_checked(device: str) -> None:
    with pytest.raises(ProviderError, match=r"OpenVINO device_type must be CPU, GPU, GPU.<n>, NPU .*got '"):
        select_providers(["openvino"], INTEL_BOX, cache_dir=CACHE, openvino_device=device)


def test_openvino_without_onnxruntime_openvino_is_skipped() -> None:
    # Stock onnxruntime on a Pi: the bundle's preference is honoured as far as the device can.
    assert select_providers(["openvino", "cpu"], [CPU], cache_dir=CACHE) == [CPU]
    jetson = select_providers(["openvino", "tensorrt", "cpu"], [TENSORRT, CUDA, CPU], cache_dir=CACHE)
    assert names(jetson) == [TENSORRT, CPU]


def test_coreml_on_a_mac_builds_an_ml_program_on_every_compute_unit_cached_under_the_data_dir() -> None:
    chosen = select_providers(["coreml", "cpu"], MAC, cache_dir=CACHE)
    assert names(chosen) == [COREML, CPU]
    assert options_of(chosen, COREML) == {
        "ModelFormat": "MLProgram",
        "MLComputeUnits": "ALL",
        "ModelCacheDirectory": str(CACHE / "coreml"),
    }
    fp16 = options_of(select_providers(["coreml"], MAC, cache_dir=CACHE, fp16=True), COREML)
    assert fp16["AllowLowPrecisionAccumulationOnGPU"] == "1"
    ane = select_providers(["coreml"], MAC, cache_dir=CACHE, coreml_compute_units="CPUAndNeuralEngine")
    assert options_of(ane, COREML)["MLComputeUnits"] == "CPUAndNeuralEngine"


def test_coreml_compute_units_are_checked() -> None:
    with pytest.raises(ProviderError, match=r"CoreML compute units must be one of ALL, CPUAndGPU, .* got 'GPU'"):
        select_providers(["coreml"], MAC, cache_dir=CACHE, coreml_compute_units="GPU")


def test_rocm_and_directml_get_their_device_where_offered() -> None:
    assert select_providers(["rocm", "cpu"], [ROCM, CPU], cache_dir=CACHE) == [(ROCM, {"device_id": "0"}), CPU]
    assert select_providers(["directml"], [DIRECTML, CPU], cache_dir=CACHE) == [(DIRECTML, {"device_id": "0"}), CPU]
    assert select_providers(["rocm", "directml", "cpu"], INTEL_BOX, cache_dir=CACHE) == [CPU]


@given(
    preferred=st.lists(st.sampled_from(KNOWN_PROVIDERS), min_size=1, unique=True),
    available=st.sets(st.sampled_from(list(PROVIDER_NAMES.values()))),
)
def test_selection_follows_the_bundle_within_what_the_device_has_and_ends_on_cpu(
    preferred: list[str], available: set[str]
) -> None:
    chosen = names(select_providers(preferred, sorted(available), cache_dir=CACHE))
    assert chosen[-1] == CPU and chosen.count(CPU) == 1
    accelerators = chosen[:-1]
    assert set(accelerators) <= available
    wanted = [PROVIDER_NAMES[p] for p in preferred if PROVIDER_NAMES[p] != CPU]
    # Every wanted provider the device has is chosen, in the bundle's order.
    assert accelerators == [p for p in wanted if p in available]
