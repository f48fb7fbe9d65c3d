"""Policy precedence: defaults < the bundle's declared policy < operator layers, per leaf key, with layers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.frozen import thaw
from edgefleet.contract.layering import DEFAULT_CONFIG, DEFAULTS_SOURCE, deep_merge
from edgefleet.contract.manifest import DeviceFacts, config_layers, effective_config, parse_manifests
from edgefleet.contract.precedence import (
    OPERATOR_LAYER,
    bundle_layer_name,
    bundle_policy,
    leaf_paths,
    resolve_policy,
)

Path = tuple[str, ...]


def manifest(*, min_frames: int = 40, min_seconds: float = 10.0, sla_ms: float = 120.0) -> BundleManifest:
    """A shelf classifier whose bundle.json declares its own canary policy and SLA."""
    return BundleManifest.from_dict(
        {
            "schema_version": 1,
            "name": "shelf-classifier",
            "version": "2.0.0",
            "created_at": "2025-01-31T12:00:00Z",
            "inputs": [{"name": "images", "dtype": "float32", "shape": [1, 3, 32, 32]}],
            "outputs": [{"name": "scores", "dtype": "float32", "shape": [1, 4]}],
            "preprocess": {"size": [32, 32]},
            "postprocess": {"kind": "classification", "conf_threshold": 0.3},
            "labels": ["a", "b", "c", "d"],
            "latency": {"sla_ms": sla_ms, "percentile": 90},
            "canary": {"min_frames": min_frames, "min_seconds": min_seconds, "psi_max": 0.3},
            "providers": ["cuda", "cpu"],
            "artifacts": {
                "model": {
                    "path": "artifacts/model.onnx",
                    "sha256": "0" * 64,
                    "size": 10,
                    "media_type": "application/vnd.onnx",
                }
            },
        }
    )


BUNDLE = manifest()


def at(values: Any, path: Path) -> Any:
    for part in path:
        values = values[part]
    return values


def test_bundle_policy_sits_between_defaults_and_operator_config() -> None:
    resolved = resolve_policy([("FleetConfig/default", {"canary": {"min_frames": 60}})], bundle=BUNDLE)
    assert resolved.layers == (DEFAULTS_SOURCE, "bundle shelf-classifier@2.0.0", "FleetConfig/default")
    # The operator set min_frames: it wins; the bundle's min_seconds still applies; defaults fill the rest.
    assert resolved.get("canary.min_frames") == 60
    assert resolved.layer_of("canary.min_frames") == "FleetConfig/default"
    assert resolved.get("canary.min_seconds") == 10.0
    assert resolved.layer_of("canary.min_seconds") == "bundle shelf-classifier@2.0.0"
    assert resolved.get("canary.deadline_s") == 900
    assert resolved.layer_of("canary.deadline_s") == DEFAULTS_SOURCE
    # What else the bundle declares: its SLA, its threshold, its providers (its latency.percentile is not
    # policy: the canary judges p95).
    assert resolved.get("sla.latency_ms") == 120.0 and resolved.get("sla.percentile") is None
    assert resolved.get("inference.conf_threshold") == 0.3
    assert resolved.get("inference.providers") == ("cuda", "cpu")
    assert resolved.get("telemetry.window_s") == 10
    assert resolved.layer_of("telemetry.window_s") == DEFAULTS_SOURCE


def test_without_a_bundle_defaults_are_the_only_layer_below() -> None:
    resolved = resolve_policy({})
    assert resolved.layers == (DEFAULTS_SOURCE, OPERATOR_LAYER)
    assert thaw(resolved.values) == thaw(DEFAULT_CONFIG)
    assert {leaf.layer for leaf in resolved.leaves} == {DEFAULTS_SOURCE}
    assert resolved.get("sla.latency_ms") is None and resolved.layer_of("sla.latency_ms") is None


def test_bundle_values_below_the_manifest_minimum_are_kept() -> None:
    # A bundle may ask for 40 frames (manifests refuse < 50); the reader (CanaryPolicy) checks its own bounds.
    assert resolve_policy({}, bundle=manifest(min_frames=40)).get("canary.min_frames") == 40


def test_a_null_unsets_the_operator_value_and_the_bundle_value_returns() -> None:
    layers: list[tuple[str, dict[str, Any]]] = [
        ("FleetConfig/default", {"sla": {"latency_ms": 80}, "review": {"jpeg_quality": 50}}),
        ("SiteConfig/wa", {"sla": {"latency_ms": None}, "review": None}),
    ]
    resolved = resolve_policy(layers, bundle=BUNDLE)
    assert resolved.get("sla.latency_ms") == 120.0
    assert resolved.layer_of("sla.latency_ms") == "bundle shelf-classifier@2.0.0"
    assert resolved.get("review.jpeg_quality") == 85
    assert resolved.layer_of("review.jpeg_quality") == DEFAULTS_SOURCE


def test_leaves_carry_canonical_json_and_dotted_paths() -> None:
    resolved = resolve_policy(
        [("DeviceConfig/cam", {"inference": {"providers": ["cpu"]}, "source": "video:/x.mp4"})], bundle=BUNDLE
    )
    by_path = {leaf.dotted: leaf for leaf in resolved.leaves}
    assert by_path["inference.providers"].value_json == '["cpu"]'
    assert by_path["inference.providers"].layer == "DeviceConfig/cam"
    assert by_path["source"].value_json == '"video:/x.mp4"'
    assert by_path["canary.max_p95_ratio"].value_json == "1.1"
    assert by_path["trusted_keys"].value_json == "{}"  # an empty mapping is a leaf of its own
    assert [leaf.dotted for leaf in resolved.leaves] == sorted(by_path, key=lambda p: tuple(p.split(".")))


def test_controller_and_device_resolve_the_same_policy_for_the_example_fleet() -> None:
    from pathlib import Path as FsPath

    from edgefleet.contract.manifest import load_manifests

    root = FsPath(__file__).resolve().parents[2] / "manifests"
    docs = [d for p in ("fleet.yaml", "sites", "devices") for d in load_manifests(root / p)]
    dock = DeviceFacts("wa-dock-door-3", "dock-door-3", "warehouse-a", {"camera": "thermal"})
    per_layer = resolve_policy(config_layers(docs, dock), bundle=BUNDLE)
    received = resolve_policy(effective_config(docs, dock).values, bundle=BUNDLE)
    assert per_layer.values == received.values
    assert per_layer.layer_of("canary.min_frames") == "SiteConfig/warehouse-a"
    assert per_layer.layer_of("inference.conf_threshold") == "DeviceConfig/thermal-cameras"
    assert per_layer.layer_of("sla.thermal_buffer") == "DeviceConfig/dock-door-3"
    assert per_layer.layer_of("canary.inconclusive_limit") == "FleetConfig/default"
    assert received.layer_of("canary.min_frames") == OPERATOR_LAYER


def test_bundle_layer_name() -> None:
    assert bundle_layer_name(BUNDLE) == "bundle shelf-classifier@2.0.0"
    assert set(bundle_policy(BUNDLE)) == {"inference", "sla", "canary"}


# ------------------------------------------------------------------ properties

# Leaf keys of the schema's config (sections and their keys) and free-form trusted key ids.
LEAVES: list[Path] = [p for p, _ in leaf_paths(DEFAULT_CONFIG) if p != ("trusted_keys",)] + [
    ("sla", "latency_ms"),
    ("source",),
    ("trusted_keys", "k1"),
    ("trusted_keys", "k2"),
]
VALUE = st.integers(0, 1000) | st.text(max_size=3) | st.lists(st.integers(0, 9), max_size=2)


@st.composite
def layers(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for index in range(draw(st.integers(0, 4))):
        keys = draw(st.lists(st.sampled_from(LEAVES), max_size=6, unique=True))
        layer: dict[str, Any] = {}
        for path in keys:
            value = draw(VALUE | st.none())
            layer = deep_merge(layer, _nest(path, value)) if value is not None else _set_null(layer, path)
        # A whole-section null now and then.
        if draw(st.booleans()) and draw(st.booleans()):
            layer[draw(st.sampled_from(["canary", "review", "telemetry"]))] = None
        out.append((f"L{index}", layer))
    return out


def _nest(path: Path, value: Any) -> dict[str, Any]:
    nested: Any = value
    for part in reversed(path):
        nested = {part: nested}
    return dict(nested)


def _set_null(layer: dict[str, Any], path: Path) -> dict[str, Any]:
    out: dict[str, Any] = thaw(layer)
    node = out
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = None
    return out


def _expected(
    path: Path, operator: list[tuple[str, dict[str, Any]]], bundle: BundleManifest | None
) -> tuple[Any, str] | None:
    """The value and layer a leaf should resolve to, derived independently: the last operator layer that
    set it (a null — on it or on a section above it — unsets it), else the bundle, else the default."""
    found: tuple[Any, str] | None = None
    for name, layer in operator:
        node: Any = layer
        for depth, part in enumerate(path):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
            if node is None:
                found = None
                break
            if depth == len(path) - 1:
                found = (node, name)
    if found is not None:
        return found
    below: list[tuple[str, Any]] = [(DEFAULTS_SOURCE, DEFAULT_CONFIG)]
    if bundle is not None:
        below.insert(0, (bundle_layer_name(bundle), bundle_policy(bundle)))
    for name, values in below:
        try:
            return at(values, path), name
        except (KeyError, TypeError):
            continue
    return None


@settings(max_examples=200, deadline=None)
@given(operator=layers(), with_bundle=st.booleans())
def test_a_layer_overrides_only_the_keys_it_sets(operator: list[tuple[str, dict[str, Any]]], with_bundle: bool) -> None:
    bundle = BUNDLE if with_bundle else None
    resolved = resolve_policy(operator, bundle=bundle)
    leaves = {leaf.path: leaf for leaf in resolved.leaves}
    for path in LEAVES:
        want = _expected(path, operator, bundle)
        if want is None:
            assert path not in leaves
            continue
        leaf = leaves[path]
        assert thaw(leaf.value) == thaw(want[0]), path
        assert leaf.layer == want[1], path
    # The device gets one merged config; it must resolve to the same values, every operator key as "config".
    merged: dict[str, Any] = {}
    for _, layer in operator:
        merged = deep_merge(merged, layer)
    received = resolve_policy(merged, bundle=bundle)
    assert received.values == resolved.values
    for leaf in received.leaves:
        original = leaves[leaf.path].layer
        assert leaf.layer == (OPERATOR_LAYER if original.startswith("L") else original)


@settings(max_examples=100, deadline=None)
@given(min_frames=st.integers(1, 10_000), operator_sets=st.booleans())
def test_the_bundle_wins_over_defaults_and_loses_to_the_operator(min_frames: int, operator_sets: bool) -> None:
    operator = [("SiteConfig/wa", {"canary": {"min_frames": 77}})] if operator_sets else []
    resolved = resolve_policy(operator, bundle=manifest(min_frames=min_frames))
    assert resolved.get("canary.min_frames") == (77 if operator_sets else min_frames)
    assert resolved.get("canary.min_seconds") == 10.0  # the bundle's, whatever the operator does to min_frames


def test_resolved_values_are_read_only() -> None:
    resolved = resolve_policy({}, bundle=BUNDLE)
    with pytest.raises(TypeError):
        resolved.values["canary"]["min_frames"] = 1


def test_example_rollout_documents_are_not_config_layers() -> None:
    text = "apiVersion: edgefleet.io/v1\nkind: Rollout\nmetadata: {name: r}\nspec: {target: {bundle: c@1.0.0}}\n"
    assert config_layers(parse_manifests(text), DeviceFacts("d", "d", "s")) == []
