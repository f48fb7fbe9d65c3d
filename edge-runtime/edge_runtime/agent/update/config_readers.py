"""Which runtime code reads each config key: every leaf key of the manifest schema has a reader, or it goes.

A key nothing reads is a promise the device does not keep (``inference.conf_threshold`` was one until
issue 10). ``CONFIG_READERS`` maps every dotted key of ``$defs.config`` in the manifest JSON Schema
(``trusted_keys`` and ``source`` are keys of their own) to ``"module:qualified.name"`` of the function
or property that reads it from the resolved policy (``edgefleet.contract.precedence.resolve_policy``).
``tests/unit/test_config_keys.py`` holds it equal to the schema both ways and checks every reader
exists and names its key; ``tests/integration/test_config_keys.py`` feeds each key class through its
reader and checks the value changes what the reader produces. Add a key to the schema, and this table,
its reader and those tests change with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

_LOAD = "edge_runtime.agent.update.switcher:load_variant"
_POLICY = "edge_runtime.canary.policy:CanaryPolicy.from_config"
_UPLOAD = "edge_runtime.agent.telemetry.uploader:UploadSettings.from_config"
_PIPELINE = "edge_runtime.agent.telemetry.pipeline:TelemetryPipeline"

CONFIG_READERS: Mapping[str, str] = MappingProxyType(
    {
        # How a bundle is loaded and what its post-processing keeps.
        "inference.conf_threshold": _LOAD,
        "inference.providers": _LOAD,
        "inference.fp16": _LOAD,
        "inference.precision": _LOAD,
        # The canary and watch-window policy (over the candidate bundle's declared policy).
        "sla.latency_ms": _POLICY,
        "sla.thermal_buffer": _POLICY,
        "canary.min_frames": _POLICY,
        "canary.min_seconds": _POLICY,
        "canary.headroom": _POLICY,
        "canary.max_p95_ratio": _POLICY,
        "canary.psi_max": _POLICY,
        "canary.ks_alpha": _POLICY,
        "canary.min_agreement": _POLICY,
        "canary.inconclusive_limit": _POLICY,
        "canary.watch_window_s": _POLICY,
        "canary.watch_shadow_every_ms": _POLICY,
        "canary.watch_shadow_max_share": _POLICY,
        "canary.deadline_s": _POLICY,
        # Telemetry windows, upload batching and the on-device buffer.
        "telemetry.window_s": f"{_PIPELINE}.window_s",
        "telemetry.batch_max_records": _UPLOAD,
        "telemetry.batch_max_bytes": _UPLOAD,
        "telemetry.batch_max_delay_s": _UPLOAD,
        "telemetry.max_in_flight": _UPLOAD,
        "telemetry.backlog_rate_per_s": _UPLOAD,
        "telemetry.buffer_max_bytes": f"{_PIPELINE}.buffer_bounds",
        "telemetry.review_quota_bytes": f"{_PIPELINE}.buffer_bounds",
        # Review sampling.
        "review.sample_rate": f"{_PIPELINE}._review_sampler",
        "review.low_confidence_below": f"{_PIPELINE}._review_sampler",
        "review.max_per_hour": f"{_PIPELINE}._review_sampler",
        "review.jpeg_quality": f"{_PIPELINE}._review_sampler",
        # Frames and trust.
        "source": "edge_runtime.agent.agent:EdgeAgent.use_source",
        "trusted_keys": "edge_runtime.agent.agent:EdgeAgent._use_trusted_keys",
    }
)
