"""The config key classes (``edgefleet.contract.config_classes``): every schema key has one, and the
classification of a change decides shadow canary (inference) or watch window only (passive)."""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st

from edgefleet.contract.config_classes import (
    CONFIG_KEY_CLASSES,
    ConfigClass,
    changed_keys,
    classify_change,
    config_class,
    inference_fingerprint,
    inference_view,
)
from edgefleet.contract.manifest_schema import config_keys


def test_every_schema_key_has_a_class_and_every_class_a_schema_key() -> None:
    assert set(config_keys()) - set(CONFIG_KEY_CLASSES) == set(), "schema keys with no class: classify them"
    assert set(CONFIG_KEY_CLASSES) - set(config_keys()) == set(), "classes of keys the schema no longer has"


def test_classes_of_the_keys_the_issue_names() -> None:
    for key in ("inference.conf_threshold", "inference.providers", "inference.precision", "inference.fp16"):
        assert config_class(key) is ConfigClass.INFERENCE
    for key in ("telemetry.window_s", "review.sample_rate", "canary.min_frames", "sla.latency_ms", "source"):
        assert config_class(key) is ConfigClass.PASSIVE
    assert config_class("trusted_keys") is ConfigClass.TRUST
    assert config_class("trusted_keys.release-2024") is ConfigClass.TRUST  # inside a free-keyed mapping
    assert config_class("inference.some_future_knob") is ConfigClass.INFERENCE  # unknown: canaried


def test_a_threshold_change_changes_inference_a_telemetry_change_does_not() -> None:
    base = {"inference": {"conf_threshold": 0.5}, "telemetry": {"window_s": 10}, "trusted_keys": {"k": "PEM"}}
    threshold = {**base, "inference": {"conf_threshold": 0.9}}
    telemetry = {**base, "telemetry": {"window_s": 5}}
    keys = {**base, "trusted_keys": {"k": "PEM", "k2": "PEM2"}}
    assert classify_change(base, threshold).changes_inference
    assert classify_change(base, threshold).of_class(ConfigClass.INFERENCE) == ("inference.conf_threshold",)
    assert not classify_change(base, telemetry).changes_inference
    assert classify_change(base, telemetry).of_class(ConfigClass.PASSIVE) == ("telemetry.window_s",)
    assert classify_change(base, keys).of_class(ConfigClass.TRUST) == ("trusted_keys",)
    assert classify_change(base, dict(base)).empty
    # Setting a key that was unset, or unsetting it, is a change of that key.
    assert changed_keys({}, {"inference": {"providers": ["cpu"]}}) == ("inference.providers",)
    assert changed_keys({"source": "synthetic:10"}, {}) == ("source",)


def test_inference_fingerprint_ignores_everything_but_inference_keys() -> None:
    a = {"inference": {"conf_threshold": 0.5, "providers": ["cpu"]}, "telemetry": {"window_s": 10}}
    b = {
        "telemetry": {"window_s": 5},
        "review": {"sample_rate": 0.5},
        "inference": {"providers": ["cpu"], "conf_threshold": 0.5},
    }
    assert inference_view(a) == {"inference": {"conf_threshold": 0.5, "providers": ["cpu"]}}
    assert inference_fingerprint(a) == inference_fingerprint(b)
    assert inference_fingerprint(a) != inference_fingerprint({**a, "inference": {"conf_threshold": 0.6}})
    assert inference_fingerprint({}) == inference_fingerprint({"telemetry": {"window_s": 1}})


_values = st.one_of(
    st.integers(0, 3), st.sampled_from(["cpu", "auto"]), st.lists(st.sampled_from(["cpu", "cuda"]), max_size=2)
)


def _nest(flat: Mapping[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[leaf] = value
    return out


_configs = st.dictionaries(st.sampled_from(sorted(CONFIG_KEY_CLASSES)), _values, max_size=6).map(_nest)


@given(_configs, _configs)
def test_same_fingerprint_exactly_when_no_inference_key_changed(old: dict[str, object], new: dict[str, object]) -> None:
    change = classify_change(old, new)
    assert (inference_fingerprint(old) == inference_fingerprint(new)) is (not change.changes_inference)
    assert classify_change(new, old).keys == change.keys
