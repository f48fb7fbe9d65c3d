"""Global options of one fleetctl invocation (set by the root callback in ``main``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleetctl.client import Connection


@dataclass
class GlobalOptions:
    controller: str | None = None
    token: str | None = None
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def connection(self) -> Connection:
        return Connection.resolve(self.controller, self.token, self.ca, self.client_cert, self.client_key)


OPTIONS = GlobalOptions()
