"""The device's configs by digest (``ConfigKeeper``): in force vs committed, candidates durable across a
restart, config.json written only when a config commits."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.agent.update.config_keeper import CONFIGS_DIR, ConfigKeeper
from edge_runtime.agent.update.config_store import load_config
from edgefleet.contract.layering import EffectiveConfig


def config(threshold: float) -> EffectiveConfig:
    return EffectiveConfig.from_values({"inference": {"conf_threshold": threshold}})


def test_a_candidate_config_is_in_force_only_when_used_and_durable_only_when_committed(tmp_path: Path) -> None:
    changes: list[Mapping[str, Any]] = []
    keeper = ConfigKeeper(tmp_path, on_change=changes.append)
    old, new = config(0.5), config(0.9)
    keeper.add(old)
    keeper.use(old.digest)
    keeper.commit(old.digest)
    assert keeper.committed_digest == old.digest and load_config(tmp_path) is not None
    keeper.add(new)
    assert keeper.in_force_digest == old.digest, "received is not in force"
    assert keeper.values(new.digest)["inference"]["conf_threshold"] == 0.9
    keeper.use(new.digest)  # its trial
    assert keeper.in_force["inference"]["conf_threshold"] == 0.9 and len(changes) == 2
    loaded = load_config(tmp_path)
    assert loaded is not None and loaded.digest == old.digest, "config.json is the committed config"
    keeper.use(None)  # rolled back: the committed config again
    assert keeper.in_force_digest == old.digest and len(changes) == 3
    keeper.use(old.digest)
    assert len(changes) == 3, "no change, no callback"


def test_a_restart_resumes_with_the_candidate_config_from_disk(tmp_path: Path) -> None:
    keeper = ConfigKeeper(tmp_path)
    old, new = config(0.5), config(0.9)
    keeper.add(old)
    keeper.commit(old.digest)
    keeper.add(new)
    restarted = ConfigKeeper(tmp_path)
    assert restarted.committed_digest == old.digest and restarted.in_force_digest == old.digest
    assert restarted.values(new.digest)["inference"]["conf_threshold"] == 0.9
    restarted.use(new.digest)
    restarted.commit(new.digest)
    assert load_config(tmp_path) is not None and restarted.committed_digest == new.digest
    # Committed: the old config's file is gone, the committed one lives in config.json.
    assert {p.stem for p in (tmp_path / CONFIGS_DIR).glob("*.json")} <= {new.digest.removeprefix("sha256:")}


def test_unknown_or_damaged_configs_are_refused_not_guessed(tmp_path: Path) -> None:
    keeper = ConfigKeeper(tmp_path)
    assert keeper.values(None) == {} and keeper.in_force == {}
    missing = "sha256:" + "9" * 64
    with pytest.raises(LookupError, match="never received"):
        keeper.values(missing)
    keeper.use(missing)
    assert keeper.in_force_digest is None, "an unknown config never goes in force"
    damaged = config(0.7)
    (tmp_path / CONFIGS_DIR / f"{damaged.digest.removeprefix('sha256:')}.json").write_bytes(b'{"inference": {"conf')
    with pytest.raises(LookupError):
        ConfigKeeper(tmp_path).values(damaged.digest)
