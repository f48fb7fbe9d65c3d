"""The device's local health endpoint has explicit, small message limits: a request over 4 KiB is refused with
RESOURCE_EXHAUSTED before it is parsed, and the endpoint keeps answering health checks after it."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge_runtime.agent.health.endpoint import MAX_RECEIVE_BYTES, HealthEndpoint

pytestmark = pytest.mark.integration


async def test_an_oversized_health_request_is_refused_and_checks_keep_working() -> None:
    endpoint = HealthEndpoint("127.0.0.1:0")
    port = await endpoint.start()
    try:
        await endpoint.set(True)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Check(health_pb2.HealthCheckRequest(service="x" * (MAX_RECEIVE_BYTES + 1)), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await endpoint.stop(0)
