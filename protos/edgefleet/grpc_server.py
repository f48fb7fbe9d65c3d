"""Pieces every edgefleet gRPC server shares: standard health and server reflection.

Both the controller and the edge runtime's local health endpoint use these, so a generic client
(grpcurl, grpc_health_probe, a container HEALTHCHECK) can discover and probe every server.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def add_health_and_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> health.aio.HealthServicer:
    """Register ``grpc.health.v1.Health`` (every service NOT_SERVING until the caller says otherwise) and
    reflection listing ``service_names`` plus health and reflection themselves."""
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, HEALTH_SERVICE, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    return health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, service_names: Iterable[str], serving: bool) -> None:
    """Set the status of every named service and of the overall server ("")."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *service_names]:
        await health_servicer.set(name, status)
