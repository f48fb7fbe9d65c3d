"""Device health: the pure judgement (``judge``) and the local gRPC health endpoint.

Health as reported on Sync (``edgefleet.v1.Health``):

- STARTING  no bundle serves yet (never committed one, or still loading it at start-up);
- FAILING   a bundle is loaded but the last ``FAILING_AFTER`` frames all failed;
- DEGRADED  serving, but: onnxruntime fell back from the preferred provider, some frames failed since the
            last report, the frame source has stopped delivering, or the agent says why not (``degraded_by``:
            a supervised background task is down, the bundle missed its latency SLA at first install);
- SERVING   serving a bundle with none of the above.

``judge`` returns the health with its reasons in words (``HealthJudgement``), which the device reports
(``ReportedState.details["health_reason"]``, ``status.json``): DEGRADED always says why.

The local endpoint (``grpc.health.v1``, plus reflection) on ``--health-listen`` says NOT_SERVING while
starting or failing and SERVING once a committed bundle serves frames, for a container HEALTHCHECK or
``grpc_health_probe``. DEGRADED still answers SERVING: the device is useful, the controller hears why not
perfect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health

from edge_runtime.agent.runner import RunnerSnapshot
from edgefleet.contract.shown import shown
from edgefleet.grpc_server import add_health_and_reflection, set_serving
from edgefleet.v1 import common_pb2

log = structlog.get_logger(__name__)

FAILING_AFTER = 10
RUNTIME_SERVICE = "edgefleet.runtime"


@dataclass(frozen=True)
class HealthJudgement:
    """A health value and why it is not SERVING (empty when it is)."""

    health: common_pb2.Health.ValueType
    reasons: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def judge(
    now: RunnerSnapshot,
    before: RunnerSnapshot | None,
    *,
    source_alive: bool,
    degraded_by: Sequence[str] = (),
) -> HealthJudgement:
    """The ``edgefleet.v1.Health`` value for the runner's state now vs. the last judgement, with its reasons.

    ``degraded_by``: what else the agent knows is wrong (a task down, an SLA missed); it degrades a device
    that would be SERVING and is kept as a reason whatever the health."""
    extra = tuple(degraded_by)
    if now.serving is None:
        return HealthJudgement(common_pb2.HEALTH_STARTING, ("no bundle serves yet", *extra))
    if now.consecutive_errors >= FAILING_AFTER:
        return HealthJudgement(
            common_pb2.HEALTH_FAILING, (f"the last {now.consecutive_errors} frames all failed", *extra)
        )
    reasons: list[str] = []
    if now.fell_back:
        reasons.append(f"onnxruntime fell back from the preferred provider to {now.provider}")
    if before is not None and now.errors > before.errors:
        reasons.append(f"{now.errors - before.errors} frame(s) failed since the last judgement")
    if not source_alive:
        reasons.append("the frame source delivers no frames")
    reasons.extend(extra)
    if reasons:
        return HealthJudgement(common_pb2.HEALTH_DEGRADED, tuple(reasons))
    return HealthJudgement(common_pb2.HEALTH_SERVING)


#: A health check is a service name; an answer a status (reflection's descriptors are a few KB): anything
#: bigger is refused before it is parsed.
MAX_RECEIVE_BYTES = 4 * 1024
MAX_SEND_BYTES = 64 * 1024


class HealthEndpoint:
    """The local ``grpc.health.v1`` server; ``port`` is the bound port after ``start``."""

    def __init__(self, listen: str) -> None:
        self._listen = listen
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ]
        )
        self._servicer: health.aio.HealthServicer = add_health_and_reflection(self._server, [RUNTIME_SERVICE])
        self.port = 0
        self._serving: bool | None = None

    async def start(self) -> int:
        self.port = self._server.add_insecure_port(self._listen)
        if self.port == 0:
            raise OSError(f"--health-listen {shown(self._listen)}: cannot bind; is the port in use?")
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
