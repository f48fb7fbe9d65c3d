"""The configs a device holds, by digest: the committed one, the one in force, and candidates.

A candidate is (bundle, config), and the update machine (``edge_runtime.update.state``) decides by digest
which config is in force (``use``: the committed one, or a candidate's during its trial) and which one is
the durable last applied config (``commit``). This keeper holds the values behind the digests (the driver's
``ConfigApplier`` port, the switcher's config lookup):

- ``DATA_DIR/config.json`` is the committed config, the last one applied (``config_store``: a restart
  without a link keeps it); it is written only when a config commits, never for a candidate.
- ``DATA_DIR/configs/<hex>.json`` holds every config received and not yet committed (canonical JSON,
  written with ``write_durably``; checked against its digest when read back), so a restart during a config
  candidate's canary or trial resumes it with the same values. Files other than the committed and the
  in-force config (and the latest received) are removed when a config commits.
- ``use(None)`` / ``values(None)`` mean the committed config (none: empty); a digest the device does not
  hold raises ``LookupError`` in ``values`` and leaves the config in force unchanged in ``use``.

``on_change`` is called (from the update worker) whenever the config in force changes, with its values.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from edge_runtime.agent.update.config_store import load_config, save_config
from edgefleet.contract.config_classes import inference_fingerprint
from edgefleet.contract.durable import write_durably
from edgefleet.contract.errors import ContractError
from edgefleet.contract.layering import EffectiveConfig

log = structlog.get_logger(__name__)

CONFIGS_DIR = "configs"


class ConfigKeeper:
    """Configs by digest under ``data_dir``; thread-safe (the agent's loop adds, the update worker uses)."""

    def __init__(
        self, data_dir: Path, *, on_change: Callable[[Mapping[str, Any]], None] = lambda _values: None
    ) -> None:
        self._data_dir = Path(data_dir)
        self._dir = self._data_dir / CONFIGS_DIR
        self._dir.mkdir(parents=True, exist_ok=True)
        self._on_change = on_change
        self._lock = threading.Lock()
        self._known: dict[str, EffectiveConfig] = {}
        self._committed = load_config(self._data_dir)
        if self._committed is not None:
            self._known[self._committed.digest] = self._committed
        self._in_force = self._committed
        self._latest: str | None = None

    # ------------------------------------------------------------------ reading

    @property
    def committed_digest(self) -> str | None:
        committed = self._committed
        return committed.digest if committed is not None else None

    @property
    def in_force_digest(self) -> str | None:
        in_force = self._in_force
        return in_force.digest if in_force is not None else None

    @property
    def in_force(self) -> Mapping[str, Any]:
        """The values of the config in force (empty when the device never had one)."""
        in_force = self._in_force
        return in_force.values if in_force is not None else {}

    def get(self, digest: str | None) -> EffectiveConfig | None:
        """The config ``digest`` (None: the committed one), or None when the device does not hold it."""
        if digest is None:
            return self._committed
        with self._lock:
            found = self._known.get(digest)
        if found is not None:
            return found
        path = self._path(digest)
        try:
            config = EffectiveConfig.from_json_bytes(path.read_bytes(), expected_digest=digest)
        except FileNotFoundError:
            return None
        except (OSError, ContractError) as exc:
            log.warning("agent.config_file_damaged", path=str(path), error=str(exc))
            return None
        with self._lock:
            self._known[digest] = config
        return config

    def saved(self) -> tuple[str, str] | None:
        """(digest, inference fingerprint) of the committed config on disk (``config.json``), if any."""
        committed = self._committed
        return (committed.digest, inference_fingerprint(committed.values)) if committed is not None else None

    def values(self, digest: str | None) -> Mapping[str, Any]:
        """The values of ``digest`` (None: the committed config; empty when none); ``LookupError`` when the
        device does not hold that config."""
        config = self.get(digest)
        if config is None:
            if digest is None:
                return {}
            raise LookupError(f"config {digest} was never received or its file is damaged; sync again")
        return config.values

    # ------------------------------------------------------------------ writing

    def add(self, config: EffectiveConfig) -> None:
        """Hold a config received from the controller (durably, so a restart can resume its candidate)."""
        with self._lock:
            self._known[config.digest] = config
            self._latest = config.digest
        path = self._path(config.digest)
        if path.exists() or config.digest == self.committed_digest:
            return
        try:
            write_durably(path, config.to_json_bytes(), mode=0o600)
        except OSError as exc:
            log.error("agent.config_not_saved", digest=config.digest, error=str(exc))

    def use(self, digest: str | None) -> None:
        """Put ``digest`` in force (None: the committed config)."""
        config = self.get(digest)
        if config is None and digest is not None:
            log.error("agent.config_unavailable", digest=digest, keeping=self.in_force_digest)
            return
        changed = self.in_force_digest != (config.digest if config is not None else None)
        self._in_force = config
        if changed:
            log.info("agent.config_in_force", digest=self.in_force_digest)
            self._on_change(self.in_force)

    def commit(self, digest: str | None) -> None:
        """Make ``digest`` the durable last applied config (``config.json``); None keeps the current one."""
        if digest is None or digest == self.committed_digest:
            return
        config = self.get(digest)
        if config is None:
            log.error("agent.config_unavailable", digest=digest, keeping=self.committed_digest)
            return
        try:
            save_config(self._data_dir, config)
        except OSError as exc:
            log.error("agent.config_not_saved", digest=digest, error=str(exc))
        self._committed = config
        log.info("agent.config_committed", digest=digest)
        self._prune()

    def _prune(self) -> None:
        # The latest received config may be the next candidate, still queued for the update machine.
        keep = {d for d in (self.committed_digest, self.in_force_digest, self._latest) if d is not None}
        for path in self._dir.glob("*.json"):
            if f"sha256:{path.stem}" not in keep:
                path.unlink(missing_ok=True)

    def _path(self, digest: str) -> Path:
        return self._dir / f"{digest.removeprefix('sha256:')}.json"
