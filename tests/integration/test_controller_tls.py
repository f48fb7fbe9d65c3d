"""TLS by flags: a server certificate, and mutual TLS when a client CA is given.

Certificates are made here with ``cryptography`` (a throwaway CA, a server certificate for 127.0.0.1 and a
client certificate); the controller is the real one, on a real socket.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from edgefleet.grpc_server import set_serving
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc
from edgefleet_controller.bootstrap import build_controller, build_server
from edgefleet_controller.server import SERVICE_NAMES, TlsConfig
from fleetctl.main import app as fleetctl_app

pytestmark = pytest.mark.integration


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey, ca: bool
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate | None = None, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("edgefleet test CA", ca_key, _name("edgefleet test CA"), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "ca": _write(root / "ca.pem", ca),
        "server_cert": _write(root / "server.pem", _cert("controller", server_key, ca.subject, ca_key, ca=False)),
        "server_key": _write(root / "server.key", key=server_key),
        "client_cert": _write(root / "client.pem", _cert("fleetctl", client_key, ca.subject, ca_key, ca=False)),
        "client_key": _write(root / "client.key", key=client_key),
    }


async def _list_bundles(port: int, token: str, credentials: grpc.ChannelCredentials) -> int:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = fleet_pb2_grpc.FleetServiceStub(channel)
        reply = await stub.ListBundles(
            fleet_pb2.ListBundlesRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=5
        )
        return len(reply.bundles)


@pytest.mark.parametrize("mutual", [False, True], ids=["server-tls", "mutual-tls"])
async def test_tls_and_mutual_tls(tmp_path: Path, pki: dict[str, Path], mutual: bool) -> None:
    app = build_controller(tmp_path / "data")
    tls = TlsConfig(pki["server_cert"], pki["server_key"], pki["ca"] if mutual else None)
    server, port, health = build_server(app, "127.0.0.1:0", tls=tls)
    await app.start()
    await server.start()
    await set_serving(health, SERVICE_NAMES, True)
    token = (tmp_path / "data" / "admin.token").read_text().strip()
    try:
        with_client_cert = grpc.ssl_channel_credentials(
            pki["ca"].read_bytes(), pki["client_key"].read_bytes(), pki["client_cert"].read_bytes()
        )
        server_only = grpc.ssl_channel_credentials(pki["ca"].read_bytes())
        assert await _list_bundles(port, token, with_client_cert) == 0
        if mutual:
            # Without a client certificate the handshake itself fails: no RPC reaches the controller.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _list_bundles(port, token, server_only)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        else:
            assert await _list_bundles(port, token, server_only) == 0
        # fleetctl takes the same files from its flags.
        args = ["--controller", f"127.0.0.1:{port}", "--token", token, "--ca", str(pki["ca"])]
        if mutual:
            args += ["--client-cert", str(pki["client_cert"]), "--client-key", str(pki["client_key"])]
        result = await asyncio.to_thread(CliRunner().invoke, fleetctl_app, [*args, "get", "bundles", "-o", "json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == []
        # A plaintext client cannot talk to a TLS port.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as plaintext:
                await fleet_pb2_grpc.FleetServiceStub(plain).ListBundles(fleet_pb2.ListBundlesRequest(), timeout=3)
            assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        app.begin_shutdown()
        await server.stop(1)
        await app.stop()
