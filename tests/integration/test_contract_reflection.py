"""The generated services are discoverable through server reflection by a client with no generated stubs."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from edgefleet.grpc_server import add_health_and_reflection, set_serving
from edgefleet.v1 import device_pb2, device_pb2_grpc, fleet_pb2, fleet_pb2_grpc

pytestmark = pytest.mark.integration

DEVICE = device_pb2.DESCRIPTOR.services_by_name["DeviceService"].full_name
FLEET = fleet_pb2.DESCRIPTOR.services_by_name["FleetService"].full_name


async def test_reflection_lists_every_service_and_method() -> None:
    server = grpc.aio.server()
    device_pb2_grpc.add_DeviceServiceServicer_to_server(device_pb2_grpc.DeviceServiceServicer(), server)  # type: ignore[abstract]
    fleet_pb2_grpc.add_FleetServiceServicer_to_server(fleet_pb2_grpc.FleetServiceServicer(), server)  # type: ignore[abstract]
    health_servicer = add_health_and_reflection(server, [DEVICE, FLEET])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        # The reflection client below is synchronous (as generic tools are); run it off the event loop.
        import asyncio

        def discover() -> tuple[list[str], list[str], list[str]]:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                db = ProtoReflectionDescriptorDatabase(channel)
                services = sorted(db.get_services())
                pool = descriptor_pool.DescriptorPool(db)
                fleet = pool.FindServiceByName(FLEET)
                device = pool.FindServiceByName(DEVICE)
                return services, [m.name for m in fleet.methods], [m.name for m in device.methods]

        services, fleet_methods, device_methods = await asyncio.to_thread(discover)
        assert DEVICE in services and FLEET in services
        assert "grpc.health.v1.Health" in services
        assert "grpc.reflection.v1alpha.ServerReflection" in services
        assert set(device_methods) == {"Enroll", "Sync", "FetchBlob", "ReportEvent", "UploadTelemetry"}
        for name in (
            "PushBundle ListBundles GetBundle ApplyConfig GetEffectiveConfig CreateRollout GetRollout "
            "ListRollouts WatchRollout PauseRollout ResumeRollout AbortRollout ListDevices GetDevice "
            "WatchFleet QueryTelemetry ListReviewSamples LabelReviewSample CreateEnrollmentToken"
        ).split():
            assert name in fleet_methods, name

        # Health is NOT_SERVING until the server says it is ready.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub.Check(health_pb2.HealthCheckRequest(service=FLEET))
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            await set_serving(health_servicer, [FLEET], False)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=FLEET))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await set_serving(health_servicer, [FLEET], True)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)


def test_generated_code_is_fresh() -> None:
    from tools.protogen import check

    assert check() == []
