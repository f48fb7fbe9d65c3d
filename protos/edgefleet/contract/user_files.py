"""Reading a text file a publisher names (a bundle spec, a TensorRT calibration table).

A missing or unreadable file is the caller's typed error, naming the path and what the file should have been,
so ``fleetctl bundle build`` reports it like any other contract error (one line, exit code 2).
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.contract.errors import ContractError


def read_user_text(path: Path, error: type[ContractError], *, what: str) -> str:
    """The UTF-8 text of ``path``; ``error`` (``{path}: {what} not found`` or ``cannot be read``) otherwise."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot be read as a UTF-8 {what}: {exc}") from None
