"""Config layering: which documents apply, merge order, null removal, digests, merged validation.

Since issue 10 the effective config holds only what the operator layers set; the built-in defaults sit
below it through ``precedence.resolve_policy``. Each case checks both: ``sources`` and ``absent`` on the
effective config the controller sends, ``expect`` on the resolved policy the device runs with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.contract.canonical import canonical_json
from edgefleet.contract.errors import ManifestError
from edgefleet.contract.frozen import thaw
from edgefleet.contract.layering import deep_merge
from edgefleet.contract.manifest import (
    DEFAULT_CONFIG,
    DeviceFacts,
    EffectiveConfig,
    ManifestDoc,
    config_layers,
    effective_config,
    load_manifests,
    parse_manifests,
    validate_config_values,
)
from edgefleet.contract.precedence import resolve_policy

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
HEAD = "apiVersion: edgefleet.io/v1\n"

CAM = DeviceFacts(device_id="dev-1", name="cam-1", site="wa", tags={"camera": "thermal", "floor": "2"})


def fleet(config: str, name: str = "default") -> str:
    return f"{HEAD}kind: FleetConfig\nmetadata: {{name: {name}}}\nspec:\n  config: {config}\n---\n"


def site(config: str, site_name: str = "wa") -> str:
    meta = f"metadata: {{name: {site_name}, site: {site_name}}}\n"
    return f"{HEAD}kind: SiteConfig\n{meta}spec:\n  config: {config}\n---\n"


def device_cfg(name: str, selector: str, config: str, priority: int | None = None) -> str:
    prio = f"  priority: {priority}\n" if priority is not None else ""
    return (
        f"{HEAD}kind: DeviceConfig\nmetadata: {{name: {name}}}\nspec:\n  selector: {selector}\n{prio}"
        f"  config: {config}\n---\n"
    )


def docs_of(*parts: str) -> list[ManifestDoc]:
    return parse_manifests("".join(parts), source="layers.yaml")


def at(values: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    expect: dict[str, Any]
    sources: tuple[str, ...]
    absent: tuple[str, ...] = ()
    device: DeviceFacts = field(default=CAM)


CASES = [
    Case(
        "defaults only",
        "",
        {"canary.headroom": 0.2, "canary.min_frames": 300, "telemetry.window_s": 10},
        (),
    ),
    Case(
        "fleet only",
        fleet("{canary: {min_frames: 500}, sla: {latency_ms: 80}}"),
        {"canary.min_frames": 500, "canary.headroom": 0.2, "sla.latency_ms": 80},
        ("FleetConfig/default",),
    ),
    Case(
        "site overrides fleet",
        fleet("{sla: {latency_ms: 80, thermal_buffer: 0.2}}") + site("{sla: {latency_ms: 50}}"),
        {"sla.latency_ms": 50, "sla.thermal_buffer": 0.2},
        ("FleetConfig/default", "SiteConfig/wa"),
    ),
    Case(
        "other site ignored",
        fleet("{sla: {latency_ms: 80}}") + site("{sla: {latency_ms: 50}}", "farm"),
        {"sla.latency_ms": 80},
        ("FleetConfig/default",),
    ),
    Case(
        "tag selector overrides site",
        site("{inference: {conf_threshold: 0.6}}")
        + device_cfg("thermal", "{tags: {camera: thermal}}", "{inference: {conf_threshold: 0.3}}"),
        {"inference.conf_threshold": 0.3, "inference.precision": "auto"},
        ("SiteConfig/wa", "DeviceConfig/thermal"),
    ),
    Case(
        "device overrides tag even at lower priority",
        device_cfg("by-id", "{device: dev-1}", "{canary: {psi_max: 0.5}}", priority=-5)
        + device_cfg("thermal", "{tags: {camera: thermal}}", "{canary: {psi_max: 0.4}}", priority=100),
        {"canary.psi_max": 0.5},
        ("DeviceConfig/thermal", "DeviceConfig/by-id"),
    ),
    Case(
        "device selector matches name",
        device_cfg("by-name", "{device: cam-1}", "{source: 'video:/x.mp4'}"),
        {"source": "video:/x.mp4"},
        ("DeviceConfig/by-name",),
    ),
    Case(
        "priority ordering, then name",
        device_cfg("zz-low", "{tags: {camera: thermal}}", "{review: {jpeg_quality: 10}}", priority=1)
        + device_cfg("b-high", "{tags: {floor: '2'}}", "{review: {jpeg_quality: 30}}", priority=5)
        + device_cfg("a-high", "{tags: {floor: '2'}}", "{review: {jpeg_quality: 20}}", priority=5),
        {"review.jpeg_quality": 30},
        ("DeviceConfig/zz-low", "DeviceConfig/a-high", "DeviceConfig/b-high"),
    ),
    Case(
        "null removes a key",
        fleet("{sla: {latency_ms: 80}, review: {jpeg_quality: 50, max_per_hour: 10}}")
        + site("{sla: {latency_ms: null}, review: {jpeg_quality: null}}"),
        # The null unsets the operator's value; the built-in one applies again.
        {"review.max_per_hour": 10, "review.jpeg_quality": 85, "sla.thermal_buffer": 0.0},
        ("FleetConfig/default", "SiteConfig/wa"),
        absent=("sla.latency_ms", "review.jpeg_quality"),
    ),
    Case(
        "null removes a whole section",
        site("{review: null}"),
        {"canary.min_frames": 300, "review.sample_rate": 0.01},
        ("SiteConfig/wa",),
        absent=("review",),
    ),
    Case(
        "list replaces, not appends",
        fleet("{inference: {providers: [tensorrt, cpu]}}") + site("{inference: {providers: [cpu]}}"),
        {"inference.providers": ("cpu",)},
        ("FleetConfig/default", "SiteConfig/wa"),
    ),
    Case(
        "non-matching selectors ignored",
        device_cfg("rgb", "{tags: {camera: rgb}}", "{canary: {min_frames: 999}}")
        + device_cfg("partial", "{tags: {camera: thermal, floor: '3'}}", "{canary: {min_frames: 998}}")
        + device_cfg("other", "{device: dev-2}", "{canary: {min_frames: 997}}"),
        {"canary.min_frames": 300},
        (),
    ),
    Case(
        "rollouts ignored",
        f"{HEAD}kind: Rollout\nmetadata: {{name: r}}\nspec: {{target: {{bundle: cls@1.2.3}}}}\n---\n",
        {"canary.min_frames": 300},
        (),
    ),
    Case(
        "all four layers",
        fleet("{canary: {min_frames: 400, headroom: 0.3}}")
        + site("{canary: {min_frames: 500}}")
        + device_cfg("thermal", "{tags: {camera: thermal}}", "{canary: {min_frames: 600}}")
        + device_cfg("me", "{device: dev-1}", "{canary: {min_frames: 700}}"),
        {"canary.min_frames": 700, "canary.headroom": 0.3},
        ("FleetConfig/default", "SiteConfig/wa", "DeviceConfig/thermal", "DeviceConfig/me"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_layering(case: Case) -> None:
    docs = docs_of(case.text)
    result = effective_config(docs, case.device)
    assert result.sources == case.sources
    resolved = resolve_policy(config_layers(docs, case.device))
    # The device resolves the one merged config it received; it must reach the same values.
    assert resolve_policy(result.values).values == resolved.values
    for dotted, value in case.expect.items():
        assert at(resolved.values, dotted) == value, dotted
    for dotted in case.absent:
        parent, _, leaf = dotted.rpartition(".")
        assert leaf not in (at(result.values, parent) if parent else result.values)
    assert result.digest.startswith("sha256:")
    validate_config_values(result.values)


def test_digest_is_stable_across_document_order_and_sources() -> None:
    parts = [
        fleet("{canary: {min_frames: 400}}"),
        site("{sla: {latency_ms: 50.0}}"),
        device_cfg("t", "{tags: {camera: thermal}}", "{review: {sample_rate: 0.5}}"),
    ]
    one = effective_config(docs_of(*parts), CAM)
    other = effective_config(parse_manifests("".join(reversed(parts)), source="elsewhere.yaml"), CAM)
    assert one.digest == other.digest
    assert one.to_json_bytes() == other.to_json_bytes()
    assert json.loads(one.to_json_bytes())["sla"]["latency_ms"] == 50


def test_digest_changes_when_a_value_changes() -> None:
    base = effective_config(docs_of(fleet("{canary: {min_frames: 400}}")), CAM)
    changed = effective_config(docs_of(fleet("{canary: {min_frames: 401}}")), CAM)
    assert base.digest != changed.digest


def test_to_json_bytes_is_canonical_and_round_trips() -> None:
    result = effective_config(docs_of(fleet("{review: {max_per_hour: 5}, source: 'video:/données/é.mp4'}")), CAM)
    data = result.to_json_bytes()
    assert data == '{"review":{"max_per_hour":5},"source":"video:/données/é.mp4"}'.encode()
    again = EffectiveConfig.from_json_bytes(data, expected_digest=result.digest)
    assert again.values == result.values and again.digest == result.digest


def test_from_json_bytes_refuses_a_wrong_digest_or_invalid_values() -> None:
    data = effective_config([], CAM).to_json_bytes()
    with pytest.raises(ManifestError, match="the config was altered or truncated"):
        EffectiveConfig.from_json_bytes(data, expected_digest="sha256:" + "0" * 64)
    with pytest.raises(ManifestError, match=r"effective config canary\.min_frames: must be >= 50, got 3"):
        EffectiveConfig.from_json_bytes(b'{"canary": {"min_frames": 3}}')
    with pytest.raises(ManifestError, match="config must be a JSON object"):
        EffectiveConfig.from_json_bytes(b"[1]")


def test_merged_result_is_validated() -> None:
    docs = docs_of(fleet("{canary: {min_seconds: 600}}"), site("{canary: {deadline_s: 300}}"))
    with pytest.raises(ManifestError) as info:
        effective_config(docs, CAM)
    err = info.value
    assert err.location == "effective config"
    assert err.path == "canary.deadline_s"
    assert err.detail == (
        "must be >= canary.min_seconds (600), got 300; a canary could never finish "
        "(merged from defaults < FleetConfig/default < SiteConfig/wa)"
    )


def test_cross_field_bounds_count_the_defaults() -> None:
    # deadline_s 20 is valid alone, but below the built-in min_seconds (30) no canary could ever finish.
    with pytest.raises(ManifestError) as info:
        effective_config(docs_of(fleet("{canary: {deadline_s: 20}}")), CAM)
    assert info.value.path == "canary.deadline_s"
    assert "must be >= canary.min_seconds (30), got 20" in info.value.detail


def test_effective_config_holds_only_operator_keys() -> None:
    result = effective_config(docs_of(fleet("{canary: {min_frames: 400}}")), CAM)
    assert thaw(result.values) == {"canary": {"min_frames": 400}}
    assert effective_config([], CAM).to_json_bytes() == b"{}"


def test_effective_config_checks_the_document_set() -> None:
    with pytest.raises(ManifestError, match="a fleet has exactly one FleetConfig"):
        effective_config(docs_of(fleet("{}", "a"), fleet("{}", "b")), CAM)


def test_validate_config_values_refuses_nulls_and_unknown_fields() -> None:
    with pytest.raises(ManifestError, match=r"effective config canary\.psi_max: null is only allowed"):
        validate_config_values({"canary": {"psi_max": None}})
    with pytest.raises(ManifestError, match=r"canary\.min_frame: unknown field; did you mean 'min_frames'\?"):
        validate_config_values({"canary": {"min_frame": 300}})
    # 'extra' was a free-form bag no runtime code read (issue 10: every key is read or removed).
    with pytest.raises(ManifestError, match=r"extra: unknown field"):
        validate_config_values({"extra": {"owner": "me"}})


def test_example_fleet_layers_for_a_dock_camera_and_a_thermal_pi() -> None:
    docs = [doc for p in ("fleet.yaml", "sites", "devices", "rollouts") for doc in load_manifests(MANIFESTS / p)]
    dock = effective_config(docs, DeviceFacts("wa-dock-door-3", "dock-door-3", "warehouse-a", {"camera": "rgb"}))
    assert dock.sources == (
        "FleetConfig/default",
        "SiteConfig/warehouse-a",
        "DeviceConfig/dock-door-3",
    )
    assert at(dock.values, "sla.latency_ms") == 50
    assert at(dock.values, "inference.precision") == "fp32"
    assert at(dock.values, "canary.min_frames") == 600
    pi = effective_config(docs, DeviceFacts("fb-07", "pi-07", "farm-b", {"camera": "thermal"}))
    assert pi.sources == (
        "FleetConfig/default",
        "SiteConfig/farm-b",
        "DeviceConfig/thermal-cameras",
    )
    assert at(pi.values, "inference.providers") == ("cpu",)
    assert at(pi.values, "canary.psi_max") == 0.35
    assert "release-2024" in pi.values["trusted_keys"]


def test_defaults_are_read_only() -> None:
    with pytest.raises(TypeError):
        DEFAULT_CONFIG["canary"]["headroom"] = 0.5


def test_canonical_json_writes_integral_floats_as_integers() -> None:
    assert canonical_json({"b": 1.0, "a": [2.5, 3.0]}, integral_floats=True) == b'{"a":[2.5,3],"b":1}'


LEAF = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
TREE = st.recursive(
    LEAF,
    lambda inner: st.dictionaries(st.sampled_from("abcd"), inner, max_size=3) | st.lists(inner, max_size=2),
    max_leaves=12,
)
MAPS = st.dictionaries(st.sampled_from("abcd"), TREE, max_size=4)


def _no_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    return value


@settings(max_examples=150, deadline=None)
@given(base=MAPS, overlay=MAPS)
def test_deep_merge_laws(base: dict[str, Any], overlay: dict[str, Any]) -> None:
    base = _no_nulls(base)
    merged = deep_merge(base, overlay)
    assert deep_merge(base, {}) == base
    assert deep_merge(merged, overlay) == merged  # applying the same layer twice changes nothing
    for key, value in overlay.items():
        if value is None:
            assert key not in merged
        elif not isinstance(value, dict):
            assert merged[key] == thaw(value)
    for key in base:
        if key not in overlay:
            assert merged[key] == base[key]
