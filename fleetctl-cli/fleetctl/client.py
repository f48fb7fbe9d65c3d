"""How fleetctl reaches the controller: address, token and TLS files from flags, the environment
(``EDGEFLEET_CONTROLLER``, ``EDGEFLEET_TOKEN``, ``EDGEFLEET_CA``, ``EDGEFLEET_CLIENT_CERT``,
``EDGEFLEET_CLIENT_KEY``) or ``~/.config/edgefleet/config.yaml``, in that order of precedence.
fleetctl speaks gRPC only, never the database."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
import yaml

from edgefleet.contract.request_bounds import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES
from edgefleet.v1 import fleet_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:7443"
#: The controller's message limits (request_bounds): what it may answer, what it accepts.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
    ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
]

Request = TypeVar("Request")
Reply = TypeVar("Reply")
if TYPE_CHECKING:  # grpc's multicallables are generic in its stubs only
    #: Picks one unary RPC of the stub, e.g. ``lambda stub: stub.GetDevice``.
    UnaryRpc = Callable[[fleet_pb2_grpc.FleetServiceStub], grpc.UnaryUnaryMultiCallable[Request, Reply]]


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgefleet" / "config.yaml"


@dataclass(frozen=True)
class Connection:
    address: str
    token: str
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    @classmethod
    def resolve(
        cls,
        address: str | None,
        token: str | None,
        ca: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
    ) -> Connection:
        file_cfg: dict[str, str] = {}
        path = config_path()
        if path.exists():
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: expected a mapping with keys controller, token, ca")
            file_cfg = {str(k): str(v) for k, v in loaded.items()}
        address = address or os.environ.get("EDGEFLEET_CONTROLLER") or file_cfg.get("controller") or DEFAULT_ADDRESS
        token = token or os.environ.get("EDGEFLEET_TOKEN") or file_cfg.get("token") or ""
        token_file = os.environ.get("EDGEFLEET_TOKEN_FILE") or file_cfg.get("token_file")
        if not token and token_file:
            token = Path(token_file).read_text().strip()
        ca_text = os.environ.get("EDGEFLEET_CA") or file_cfg.get("ca")
        ca = ca or (Path(ca_text) if ca_text else None)
        cert_text = os.environ.get("EDGEFLEET_CLIENT_CERT") or file_cfg.get("client_cert")
        key_text = os.environ.get("EDGEFLEET_CLIENT_KEY") or file_cfg.get("client_key")
        client_cert = client_cert or (Path(cert_text) if cert_text else None)
        client_key = client_key or (Path(key_text) if key_text else None)
        return cls(address=address, token=token, ca=ca, client_cert=client_cert, client_key=client_key)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    @contextmanager
    def fleet(self) -> Iterator[fleet_pb2_grpc.FleetServiceStub]:
        if self.ca or self.client_cert:
            credentials = grpc.ssl_channel_credentials(
                self.ca.read_bytes() if self.ca else None,
                self.client_key.read_bytes() if self.client_key else None,
                self.client_cert.read_bytes() if self.client_cert else None,
            )
            channel = grpc.secure_channel(self.address, credentials, options=CHANNEL_OPTIONS)
        else:
            channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        with channel:
            yield fleet_pb2_grpc.FleetServiceStub(channel)

    def call(self, rpc: UnaryRpc[Request, Reply], request: Request, *, timeout: float = 30) -> Reply:
        """One unary FleetService call on its own channel, with this connection's token."""
        with self.fleet() as stub:
            return rpc(stub)(request, metadata=self.metadata, timeout=timeout)
