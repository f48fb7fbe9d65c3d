"""The last effective config the device applied, kept in ``DATA_DIR/config.json``.

A device that restarts while its link is down must keep its canary policy, telemetry settings, trusted
keys and thresholds, not fall back to built-in defaults until the controller answers. The file holds the
canonical JSON exactly as the controller sent it; on load its digest and values are checked again
(``EffectiveConfig.from_json_bytes``), and a damaged file is ignored (the next Sync brings the config
back), never a reason not to start. Written as temp file + fsync + rename + fsync of the directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from edgefleet.contract.errors import ContractError
from edgefleet.contract.manifest import EffectiveConfig

log = structlog.get_logger(__name__)

CONFIG_FILE = "config.json"


def save_config(data_dir: Path, config: EffectiveConfig) -> Path:
    path = data_dir / CONFIG_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, config.to_json_bytes())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_config(data_dir: Path) -> EffectiveConfig | None:
    path = data_dir / CONFIG_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("agent.config_unreadable", path=str(path), error=str(exc))
        return None
    try:
        return EffectiveConfig.from_json_bytes(data)
    except (ContractError, ValueError) as exc:
        log.warning("agent.config_damaged", path=str(path), error=str(exc))
        return None
