"""Device health: the pure judgement (``judge_health``) and the local gRPC health endpoint.

Health as reported on Sync (``edgefleet.v1.Health``):

- STARTING  no bundle serves yet (never committed one, or still loading it at start-up);
- FAILING   a bundle is loaded but the last ``FAILING_AFTER`` frames all failed;
- DEGRADED  serving, but: onnxruntime fell back from the preferred provider, some frames failed since the
            last report, or the frame source has stopped delivering;
- SERVING   serving a bundle with none of the above.

The local endpoint (``grpc.health.v1``, plus reflection) on ``--health-listen`` says NOT_SERVING while
starting or failing and SERVING once a committed bundle serves frames, for a container HEALTHCHECK or
``grpc_health_probe``. DEGRADED still answers SERVING: the device is useful, the controller hears why not
perfect.
"""

from __future__ import annotations

import grpc
import structlog
from grpc_health.v1 import health

from edge_runtime.agent.runner import RunnerSnapshot
from edgefleet.grpc_server import add_health_and_reflection, set_serving
from edgefleet.v1 import common_pb2

log = structlog.get_logger(__name__)

FAILING_AFTER = 10
RUNTIME_SERVICE = "edgefleet.runtime"


def judge_health(
    now: RunnerSnapshot, before: RunnerSnapshot | None, *, source_alive: bool
) -> common_pb2.Health.ValueType:
    """The ``edgefleet.v1.Health`` value for the runner's state now vs. the last judgement."""
    if now.serving is None:
        return common_pb2.HEALTH_STARTING
    if now.consecutive_errors >= FAILING_AFTER:
        return common_pb2.HEALTH_FAILING
    new_errors = before is not None and now.errors > before.errors
    if now.fell_back or new_errors or not source_alive:
        return common_pb2.HEALTH_DEGRADED
    return common_pb2.HEALTH_SERVING


class HealthEndpoint:
    """The local ``grpc.health.v1`` server; ``port`` is the bound port after ``start``."""

    def __init__(self, listen: str) -> None:
        self._listen = listen
        self._server = grpc.aio.server()
        self._servicer: health.aio.HealthServicer = add_health_and_reflection(self._server, [RUNTIME_SERVICE])
        self.port = 0
        self._serving: bool | None = None

    async def start(self) -> int:
        self.port = self._server.add_insecure_port(self._listen)
        if self.port == 0:
            raise OSError(f"--health-listen {self._listen!r}: cannot bind; is the port in use?")
        await self._server.start()
        await self.set(False)
        return self.port

    async def set(self, serving: bool) -> None:
        if serving == self._serving:
            return
        self._serving = serving
        await set_serving(self._servicer, [RUNTIME_SERVICE], serving)
        log.info("agent.health_changed", serving=serving)

    async def stop(self, grace_s: float = 1.0) -> None:
        await self._servicer.enter_graceful_shutdown()
        await self._server.stop(grace_s)
