"""Policy precedence: the values a device runs with, per leaf key, and the layer each one came from.

Pure (no I/O, no clock). The one place that decides which layer wins, used by the edge runtime (with the
bundle it is canarying or serving) and by the controller (``GetEffectiveConfig`` / ``fleetctl config
effective DEVICE``, with the device's desired bundle, else its running one). Lowest layer first:

    defaults  <  bundle NAME@VERSION  <  FleetConfig  <  SiteConfig  <  tag DeviceConfig  <  device DeviceConfig

- ``defaults`` is ``DEFAULT_CONFIG`` (``edgefleet.contract.layering``).
- The bundle layer is what the bundle declares in ``bundle.json`` (``bundle_policy``): its ``canary``
  section, its latency SLA (``latency.sla_ms`` → ``sla.latency_ms``; the canary judges p95, so the
  manifest's ``latency.percentile`` is not a policy key), its detection/classification threshold
  (``postprocess.conf_threshold`` → ``inference.conf_threshold``) and its provider preference
  (``providers`` → ``inference.providers``).
- The operator layers are the config manifests. The controller merges them into the device's effective
  config (``DesiredState.config_json`` / ``config_digest``), which holds ONLY what operators set: neither
  the defaults nor any bundle's policy are baked in, so a bundle's ``canary: {min_frames: 100}`` takes
  effect unless a manifest sets ``canary.min_frames`` itself.

A layer overrides only the leaf keys it sets: mappings merge key by key, lists and scalars replace whole
(``layering.deep_merge``). A ``null`` in a manifest layer unsets the key in the operator config (it removes
what a lower manifest layer set), so the bundle's or the built-in value applies again; operators cannot
delete a built-in policy value, only choose another one. That is what makes the result the same whether
the operator layers are resolved one by one (controller) or as the one merged config the device received.

The resolved values are not re-validated against the manifest schema: a bundle may declare values the
schema would refuse from an operator (``canary.min_frames: 40``, below the manifest minimum of 50); each
reader checks what it reads (``CanaryPolicy`` bounds, the telemetry buffer's bounds).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.canonical import canonical_json
from edgefleet.contract.frozen import freeze, thaw
from edgefleet.contract.layering import DEFAULT_CONFIG, DEFAULTS_SOURCE, deep_merge

__all__ = [
    "BUNDLE_LAYER_PREFIX",
    "DEFAULTS_SOURCE",
    "OPERATOR_LAYER",
    "ConfigLeaf",
    "ResolvedConfig",
    "bundle_layer_name",
    "bundle_policy",
    "leaf_paths",
    "resolve_policy",
]

BUNDLE_LAYER_PREFIX = "bundle "
#: The name of the operator layer when a device resolves the one merged config it received.
OPERATOR_LAYER = "config"

Path = tuple[str, ...]


@dataclass(frozen=True)
class ConfigLeaf:
    """One resolved leaf key: its path, its value and the layer that set it."""

    path: Path
    value: Any
    layer: str

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def value_json(self) -> str:
        """The value as canonical JSON (``100``, ``"auto"``, ``["cpu"]``)."""
        return canonical_json(thaw(self.value), integral_floats=True).decode("utf-8")


@dataclass(frozen=True)
class ResolvedConfig:
    """The policy a device runs with: ``values`` (read-only, same shape as a config) and per-leaf layers.

    ``layers`` names every layer that took part, lowest first (``defaults``, ``bundle x@1.0.0``, the
    operator layers), whether or not it won a key.
    """

    values: Mapping[str, Any]
    leaves: tuple[ConfigLeaf, ...]
    layers: tuple[str, ...]

    def section(self, name: str) -> Mapping[str, Any]:
        """A top-level mapping section (``canary``, ``telemetry``, …); empty when absent."""
        found = self.values.get(name)
        return found if isinstance(found, Mapping) else freeze({})

    def get(self, dotted: str, default: Any = None) -> Any:
        """The value at a dotted path (``canary.min_frames``), or ``default``."""
        value: Any = self.values
        for part in dotted.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return default
            value = value[part]
        return value

    def layer_of(self, dotted: str) -> str | None:
        """The layer that set the leaf at ``dotted``; None when no layer set it."""
        for leaf in self.leaves:
            if leaf.dotted == dotted:
                return leaf.layer
        return None


def bundle_layer_name(manifest: BundleManifest) -> str:
    """``bundle NAME@VERSION``, how resolution and ``fleetctl config effective`` name a bundle's layer."""
    return f"{BUNDLE_LAYER_PREFIX}{manifest.ref}"


def bundle_policy(manifest: BundleManifest) -> dict[str, Any]:
    """The config keys a bundle declares, in config shape (see the module docstring for the mapping).

    ``bundle.json`` always holds its whole ``canary`` section (the builder writes its defaults for what a
    spec leaves out), so every key below is set by every bundle.
    """
    canary = manifest.canary
    return {
        "inference": {
            "conf_threshold": manifest.postprocess.conf_threshold,
            "providers": list(manifest.providers),
        },
        "sla": {"latency_ms": manifest.latency.sla_ms},
        "canary": {
            "min_frames": canary.min_frames,
            "min_seconds": canary.min_seconds,
            "headroom": canary.headroom,
            "max_p95_ratio": canary.max_p95_ratio,
            "psi_max": canary.psi_max,
            "ks_alpha": canary.ks_alpha,
            "min_agreement": canary.min_agreement,
        },
    }


def leaf_paths(value: Mapping[str, Any], prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every leaf of a config in key order: non-mapping values, and mappings with no keys."""
    for key in sorted(value, key=str):
        item = value[key]
        path = (*prefix, str(key))
        if isinstance(item, Mapping) and item:
            yield from leaf_paths(item, path)
        else:
            yield path, item


def _claim(owners: dict[Path, str], overlay: Mapping[str, Any], layer: str, prefix: Path = ()) -> None:
    """Record ``layer`` as the owner of every path ``overlay`` sets; a null or a replacement drops the
    owners of everything below the path it replaces."""
    for key, item in overlay.items():
        path = (*prefix, str(key))
        if item is None or not isinstance(item, Mapping):
            for owned in [p for p in owners if p[: len(path)] == path and len(p) > len(path)]:
                del owners[owned]
        if item is None:
            owners.pop(path, None)
            continue
        owners[path] = layer
        if isinstance(item, Mapping):
            _claim(owners, item, layer, path)


def _merge(layers: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[dict[str, Any], dict[Path, str]]:
    values: dict[str, Any] = {}
    owners: dict[Path, str] = {}
    for layer, overlay in layers:
        values = deep_merge(values, overlay)
        _claim(owners, overlay, layer)
    return values, owners


def resolve_policy(
    operator: Mapping[str, Any] | Sequence[tuple[str, Mapping[str, Any]]],
    *,
    bundle: BundleManifest | None = None,
) -> ResolvedConfig:
    """Resolve defaults < ``bundle``'s declared policy < ``operator`` config, per leaf key.

    ``operator`` is either the one merged config a device received (named ``OPERATOR_LAYER``) or the
    manifest layers as ``(name, config)`` pairs, lowest first (``("FleetConfig/default", {...})``, …).
    Without ``bundle`` only the defaults are below the operator config (telemetry, review and trusted
    keys, which no bundle declares, resolve the same either way).
    """
    operator_layers = [(OPERATOR_LAYER, operator)] if isinstance(operator, Mapping) else list(operator)
    base_layers: list[tuple[str, Mapping[str, Any]]] = [(DEFAULTS_SOURCE, DEFAULT_CONFIG)]
    if bundle is not None:
        base_layers.append((bundle_layer_name(bundle), bundle_policy(bundle)))
    # Operator layers merge among themselves first, so their nulls unset only operator values.
    base, base_owners = _merge(base_layers)
    chosen, chosen_owners = _merge(operator_layers)
    values = deep_merge(base, chosen)
    owners = {**base_owners, **chosen_owners}
    leaves = tuple(ConfigLeaf(path, freeze(value), _owner(owners, path)) for path, value in leaf_paths(values))
    return ResolvedConfig(
        values=freeze(values),
        leaves=leaves,
        layers=tuple(name for name, _ in (*base_layers, *operator_layers)),
    )


def _owner(owners: Mapping[Path, str], path: Path) -> str:
    # A leaf is always claimed by the layer that wrote it; the fallback walks up for defensive symmetry
    # (an operator mapping that replaced a base scalar owns everything under it).
    for end in range(len(path), 0, -1):
        found = owners.get(path[:end])
        if found is not None:
            return found
    return DEFAULTS_SOURCE
