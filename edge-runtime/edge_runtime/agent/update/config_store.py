"""The last effective config the device applied, kept in ``DATA_DIR/config.json``.

A device that restarts while its link is down must keep its canary policy, telemetry settings, trusted
keys and thresholds, not fall back to built-in defaults until the controller answers. The file holds the
canonical JSON exactly as the controller sent it; on load its digest and values are checked again
(``EffectiveConfig.from_json_bytes``), and a damaged file is ignored (the next Sync brings the config
back), never a reason not to start. Written with ``write_durably``.

What is stored is the operator config only (the keys manifests set; ``{}`` when none do): readers resolve
it with ``edgefleet.contract.precedence.resolve_policy`` over the built-in defaults and the bundle they
load or judge. A file written before that rule (defaults baked in) still loads: its values read as if an
operator had set them all, until the next Sync replaces it.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from edgefleet.contract.durable import read_durable, write_durably
from edgefleet.contract.errors import ContractError
from edgefleet.contract.manifest import EffectiveConfig

log = structlog.get_logger(__name__)

CONFIG_FILE = "config.json"


def save_config(data_dir: Path, config: EffectiveConfig) -> Path:
    path = data_dir / CONFIG_FILE
    write_durably(path, config.to_json_bytes(), mode=0o600)
    return path


def load_config(data_dir: Path) -> EffectiveConfig | None:
    path = data_dir / CONFIG_FILE
    try:
        data = read_durable(path)
        return None if data is None else EffectiveConfig.from_json_bytes(data)
    except OSError as exc:
        log.warning("agent.config_unreadable", path=str(path), error=str(exc))
    except (ContractError, ValueError) as exc:
        log.warning("agent.config_damaged", path=str(path), error=str(exc))
    return None
