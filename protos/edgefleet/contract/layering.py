"""Config layering: built-in defaults, the merge rule, canonical JSON and the effective-config digest.

Pure (no I/O, no clock). Which documents apply to a device, and in what order, is decided in
``edgefleet.contract.manifest.effective_config``; this module owns how layers combine:

- The effective config a controller computes for a device (``DesiredState.config_json`` and its digest)
  holds only what the operator layers set (FleetConfig < SiteConfig < tag DeviceConfig < device
  DeviceConfig). ``DEFAULT_CONFIG`` (below) and a bundle's declared policy are NOT merged in: they are
  the two layers under the operator config that ``edgefleet.contract.precedence.resolve_policy`` puts
  below it, on the device with the bundle it runs and on the controller for ``fleetctl config effective``.
  So a bundle's own ``canary`` section applies unless a manifest sets the same key.
- Mappings merge deeply; lists and scalars in a higher layer replace the lower value whole (a site's
  ``providers: [cpu]`` is not appended to the fleet's list); an explicit ``null`` removes the key.
- The result is re-validated (``validate_config_values``), because layers that are each valid can
  combine into something that is not (``canary.deadline_s`` below ``canary.min_seconds``); cross-field
  bounds are checked over the defaults with the operator config on top, so an operator config that could
  never run with the built-in values is refused at apply time (a bundle's values are checked when the
  device reads them, ``CanaryPolicy``).
- The digest is ``sha256:<hex>`` of the canonical JSON: keys sorted, no spaces, UTF-8, integral
  floats written as integers (``60.0`` → ``60``, as RFC 8785 does), so the controller and a device
  that re-serialises the same values agree byte for byte.

Built-in defaults (``sla.latency_ms`` has none: the bundle's own SLA applies unless a layer sets one; the
frame ``source`` has none: the device's ``--source`` applies unless a layer sets one):

    inference  conf_threshold 0.5, providers [tensorrt, cuda, cpu], fp16 false, precision auto
    sla        thermal_buffer 0.0 (the budget applies to p95: there is no percentile key)
    canary     min_frames 300, min_seconds 30, headroom 0.2, max_p95_ratio 1.10, psi_max 0.25,
               ks_alpha 0.01, min_agreement 0.9, inconclusive_limit 2, watch_window_s 600, deadline_s 900,
               watch_shadow_every_ms 100, watch_shadow_max_share 0.25
    telemetry  window_s 10, batch_max_records 500, batch_max_bytes 1 MiB, batch_max_delay_s 5,
               buffer_max_bytes 256 MiB, review_quota_bytes 64 MiB, max_in_flight 2, backlog_rate_per_s 20
    review     sample_rate 0.01, low_confidence_below 0.35, max_per_hour 60, jpeg_quality 85
    trusted_keys {}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.contract.canonical import canonical_json
from edgefleet.contract.digests import sha256_digest
from edgefleet.contract.errors import ManifestError
from edgefleet.contract.frozen import freeze, thaw
from edgefleet.contract.manifest_schema import config_violations, validate_config_values
from edgefleet.contract.manifest_yaml import format_path

__all__ = [
    "DEFAULTS_SOURCE",
    "DEFAULT_CONFIG",
    "DeviceFacts",
    "EffectiveConfig",
    "deep_merge",
    "merge_config_layers",
    "validate_config_values",
]

DEFAULTS_SOURCE = "defaults"

_DEFAULTS: dict[str, Any] = {
    "inference": {
        "conf_threshold": 0.5,
        "providers": ["tensorrt", "cuda", "cpu"],
        "fp16": False,
        "precision": "auto",
    },
    "sla": {"thermal_buffer": 0.0},
    "canary": {
        "min_frames": 300,
        "min_seconds": 30,
        "headroom": 0.2,
        "max_p95_ratio": 1.10,
        "psi_max": 0.25,
        "ks_alpha": 0.01,
        "min_agreement": 0.9,
        "inconclusive_limit": 2,
        "watch_window_s": 600,
        "watch_shadow_every_ms": 100,
        "watch_shadow_max_share": 0.25,
        "deadline_s": 900,
    },
    "telemetry": {
        "window_s": 10,
        "batch_max_records": 500,
        "batch_max_bytes": 1024 * 1024,
        "batch_max_delay_s": 5,
        "buffer_max_bytes": 256 * 1024 * 1024,
        "review_quota_bytes": 64 * 1024 * 1024,
        "max_in_flight": 2,
        "backlog_rate_per_s": 20,
    },
    "review": {
        "sample_rate": 0.01,
        "low_confidence_below": 0.35,
        "max_per_hour": 60,
        "jpeg_quality": 85,
    },
    "trusted_keys": {},
}


DEFAULT_CONFIG: Mapping[str, Any] = freeze(_DEFAULTS)


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` on top of ``base``: mappings merge, lists and scalars replace, ``None`` removes the key."""
    merged: dict[str, Any] = thaw(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping):
            below = merged.get(key)
            # A mapping over a scalar starts fresh, but still drops its own nulls.
            merged[key] = deep_merge(below if isinstance(below, Mapping) else {}, value)
        else:
            merged[key] = thaw(value)
    return merged


@dataclass(frozen=True)
class DeviceFacts:
    """What layering needs to know about a device: identity, site and tags."""

    device_id: str
    name: str
    site: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EffectiveConfig:
    """A device's merged config, its digest, and the documents that contributed, lowest layer first."""

    values: Mapping[str, Any]
    digest: str
    sources: tuple[str, ...]

    def to_json_bytes(self) -> bytes:
        """The canonical JSON the digest is computed over (what ``DesiredState.config_json`` carries)."""
        return canonical_json(self.values, integral_floats=True)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], sources: Sequence[str] = ()) -> EffectiveConfig:
        """Validate ``values`` and compute the digest; raises ``ManifestError`` when they are invalid."""
        validate_config_values(values)
        return cls(
            values=freeze(values),
            digest=sha256_digest(canonical_json(values, integral_floats=True)),
            sources=tuple(sources),
        )

    @classmethod
    def from_json_bytes(cls, data: bytes, *, expected_digest: str | None = None) -> EffectiveConfig:
        """Read a config received over the wire; check its digest when one is given, then its values."""
        digest = sha256_digest(data)
        if expected_digest is not None and digest != expected_digest:
            raise ManifestError(
                f"config digest is {digest}, expected {expected_digest}; the config was altered or truncated",
                location="effective config",
            )
        try:
            values = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ManifestError(f"config is not valid UTF-8 JSON ({exc})", location="effective config") from None
        if not isinstance(values, dict):
            raise ManifestError(
                f"config must be a JSON object, got {type(values).__name__}", location="effective config"
            )
        found = config_violations(values)
        if found:
            raise ManifestError(found[0].message, location="effective config", path=format_path(found[0].path))
        return cls(
            values=freeze(values), digest=sha256_digest(canonical_json(values, integral_floats=True)), sources=()
        )


def merge_config_layers(layers: Sequence[tuple[str, Mapping[str, Any]]]) -> EffectiveConfig:
    """Merge the operator's ``(source, config)`` layers, lowest first, and validate the result.

    The result holds only the keys the layers set (no defaults; see the module docstring). Cross-field
    bounds are checked with ``DEFAULT_CONFIG`` below the merged layers.
    """
    values: dict[str, Any] = {}
    sources: list[str] = []
    for source, config in layers:
        values = deep_merge(values, config)
        sources.append(source)
    found = config_violations(values) or config_violations(deep_merge(DEFAULT_CONFIG, values))
    if found:
        raise ManifestError(
            f"{found[0].message} (merged from {' < '.join([DEFAULTS_SOURCE, *sources])})",
            location="effective config",
            path=format_path(found[0].path),
        )
    return EffectiveConfig(
        values=freeze(values),
        digest=sha256_digest(canonical_json(values, integral_floats=True)),
        sources=tuple(sources),
    )
