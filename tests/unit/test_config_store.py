"""The device keeps its last applied config across restarts; a damaged copy is ignored, not fatal."""

from __future__ import annotations

from pathlib import Path

from edge_runtime.agent.update.config_store import CONFIG_FILE, load_config, save_config
from edgefleet.contract.manifest import DEFAULT_CONFIG, EffectiveConfig


def _config() -> EffectiveConfig:
    values = {**DEFAULT_CONFIG, "canary": {**DEFAULT_CONFIG["canary"], "min_frames": 120}}
    return EffectiveConfig.from_values(values, sources=("defaults", "FleetConfig/default"))


def test_round_trip_keeps_values_and_digest(tmp_path: Path) -> None:
    config = _config()
    save_config(tmp_path, config)
    loaded = load_config(tmp_path)
    assert loaded is not None
    assert loaded.digest == config.digest
    assert loaded.values["canary"]["min_frames"] == 120
    assert (tmp_path / CONFIG_FILE).stat().st_mode & 0o777 == 0o600


def test_missing_damaged_or_invalid_copies_are_ignored(tmp_path: Path) -> None:
    assert load_config(tmp_path) is None
    (tmp_path / CONFIG_FILE).write_bytes(b'{"canary": {"min_frames": 1')  # truncated by a power cut
    assert load_config(tmp_path) is None
    (tmp_path / CONFIG_FILE).write_bytes(b'{"canary": {"min_frames": 10}}')  # below the schema's minimum
    assert load_config(tmp_path) is None


def test_an_operator_only_config_round_trips_and_resolves_over_the_defaults(tmp_path: Path) -> None:
    # Since issue 10 the controller sends only what manifests set; {} when none do.
    from edgefleet.contract.precedence import resolve_policy

    for values in ({}, {"canary": {"min_frames": 60}}):
        save_config(tmp_path, EffectiveConfig.from_values(values))
        loaded = load_config(tmp_path)
        assert loaded is not None and dict(loaded.values) == values
        resolved = resolve_policy(loaded.values)
        assert resolved.get("canary.min_frames") == values.get("canary", {}).get("min_frames", 300)
        assert resolved.get("telemetry.window_s") == DEFAULT_CONFIG["telemetry"]["window_s"]
