"""Which config keys change inference: the one classification a device trials a new config by.

Pure (no I/O, no clock). A candidate on a device is (bundle, config): when the effective config changes, the
update machine decides how to trial it from the classes of the keys that changed (``classify_change``):

- ``INFERENCE``: the key changes what the engine computes or how fast (thresholds, pre/post-processing
  overrides, provider or precision choice). A change is canaried in shadow on the same frames: a candidate
  engine loaded with the new config runs beside the current engine and config, then trial, then commit.
- ``PASSIVE``: the key changes what the device reports or how it judges, not what it infers (telemetry,
  review sampling, the canary and SLA policy, the frame source). A change needs no shadow: the new config is
  put in force for a watch window (errors and the latency budget on the served frames), then committed.
- ``TRUST``: the publisher keys. They take effect when the config is received, because they decide which
  bundles the device accepts, the candidate's own included; they never make a config a candidate by
  themselves beyond the watch window of a passive change.

``CONFIG_KEY_CLASSES`` lists every leaf key of the config schema (``manifest_schema.config_keys``; a
free-keyed mapping such as ``trusted_keys`` is one key). A key not listed (a schema newer than this table)
counts as ``INFERENCE``: canarying what need not be is slow, not canarying what must be is unsafe.
``tests/unit/test_config_classes.py`` holds the table equal to the schema, so a new key gets a class.

``inference_fingerprint`` is the digest of a config's inference keys only: two configs with the same
fingerprint load the same engine from the same bundle, which is how the device knows a passive change can
keep its engine.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from edgefleet.contract.canonical import canonical_json
from edgefleet.contract.digests import sha256_digest
from edgefleet.contract.frozen import thaw

__all__ = [
    "CONFIG_KEY_CLASSES",
    "ConfigChange",
    "ConfigClass",
    "changed_keys",
    "classify_change",
    "config_class",
    "inference_fingerprint",
    "inference_view",
]


class ConfigClass(StrEnum):
    """How a change of a config key is trialled. Stored values never change."""

    INFERENCE = "inference"
    PASSIVE = "passive"
    TRUST = "trust"


_I, _P, _T = ConfigClass.INFERENCE, ConfigClass.PASSIVE, ConfigClass.TRUST

CONFIG_KEY_CLASSES: Mapping[str, ConfigClass] = MappingProxyType(
    {
        # What the engine computes and how fast.
        "inference.conf_threshold": _I,
        "inference.providers": _I,
        "inference.fp16": _I,
        "inference.precision": _I,
        # How candidates are judged: the SLA and the canary / watch-window policy.
        "sla.latency_ms": _P,
        "sla.thermal_buffer": _P,
        "canary.min_frames": _P,
        "canary.min_seconds": _P,
        "canary.headroom": _P,
        "canary.max_p95_ratio": _P,
        "canary.psi_max": _P,
        "canary.ks_alpha": _P,
        "canary.min_agreement": _P,
        "canary.inconclusive_limit": _P,
        "canary.watch_window_s": _P,
        "canary.watch_shadow_every_ms": _P,
        "canary.watch_shadow_max_share": _P,
        "canary.deadline_s": _P,
        # What the device reports.
        "telemetry.window_s": _P,
        "telemetry.batch_max_records": _P,
        "telemetry.batch_max_bytes": _P,
        "telemetry.batch_max_delay_s": _P,
        "telemetry.max_in_flight": _P,
        "telemetry.backlog_rate_per_s": _P,
        "telemetry.buffer_max_bytes": _P,
        "telemetry.review_quota_bytes": _P,
        "review.sample_rate": _P,
        "review.low_confidence_below": _P,
        "review.max_per_hour": _P,
        "review.jpeg_quality": _P,
        # Which frames come in (not how they are inferred).
        "source": _P,
        # Which publishers' bundles the device accepts.
        "trusted_keys": _T,
    }
)


def config_class(key: str) -> ConfigClass:
    """The class of the dotted ``key``: its own entry, else that of the listed key above it (a key inside a
    free-keyed mapping, ``trusted_keys.release-2024``), else ``INFERENCE`` (see the module docstring)."""
    found = CONFIG_KEY_CLASSES.get(key)
    if found is not None:
        return found
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        found = CONFIG_KEY_CLASSES.get(".".join(parts[:end]))
        if found is not None:
            return found
    return ConfigClass.INFERENCE


def _leaves(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every key: listed keys are leaves even when their value is a mapping."""
    for name, value in values.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and key not in CONFIG_KEY_CLASSES and value:
            yield from _leaves(value, f"{key}.")
        else:
            yield key, value


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, ...]:
    """The dotted keys set differently (or only) in one of two configs, sorted."""
    before, after = dict(_leaves(old)), dict(_leaves(new))
    return tuple(
        sorted(
            k
            for k in before.keys() | after.keys()
            if k not in before
            or k not in after
            or canonical_json(thaw(before[k]), integral_floats=True)
            != canonical_json(thaw(after[k]), integral_floats=True)
        )
    )


@dataclass(frozen=True)
class ConfigChange:
    """The keys that differ between two configs, each with its class."""

    keys: tuple[tuple[str, ConfigClass], ...]

    def of_class(self, cls: ConfigClass) -> tuple[str, ...]:
        return tuple(k for k, c in self.keys if c is cls)

    @property
    def changes_inference(self) -> bool:
        """Whether the change must be canaried in shadow (some ``INFERENCE`` key differs)."""
        return any(c is ConfigClass.INFERENCE for _, c in self.keys)

    @property
    def empty(self) -> bool:
        return not self.keys


def classify_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> ConfigChange:
    """Every key that differs from ``old`` to ``new``, with its class."""
    return ConfigChange(tuple((k, config_class(k)) for k in changed_keys(old, new)))


def inference_view(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``INFERENCE`` keys of a config, in config shape (everything else left out)."""
    view: dict[str, Any] = {}
    for key, value in _leaves(values):
        if config_class(key) is not ConfigClass.INFERENCE:
            continue
        node = view
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = thaw(value)
    return view


def inference_fingerprint(values: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON of a config's ``INFERENCE`` keys (``inference_view``)."""
    return sha256_digest(canonical_json(inference_view(values), integral_floats=True))
