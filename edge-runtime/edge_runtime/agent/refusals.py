"""How the agent's loops treat a controller that refuses this device, one judgement for Sync, ReportEvent and
telemetry upload: UNAUTHENTICATED (its credential was rotated, or the device deleted) is logged as
``agent.credential_rejected`` and retried every ``unauth_backoff_s``; PERMISSION_DENIED (an operator disabled
it) as ``agent.device_disabled``, retried every ``refused_backoff_s``. The line carries the call, the
controller's message (``shown``, never a raw exception repr) and the hint saying what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import structlog

from edge_runtime.agent.client import rpc_code
from edgefleet.contract.shown import shown

log = structlog.get_logger(__name__)

#: How much of the controller's message a refusal line shows (its refusals are a few hundred characters).
DETAILS_CHARS = 300

CREDENTIAL_HINT = (
    "the controller no longer accepts this device's credential: if an operator rotated this device's credential, "
    "install the new one in DATA_DIR/credential.json (see `fleetctl device rotate-credential`) and restart; if the "
    "device was deleted, delete DATA_DIR/credential.json and restart with --enroll-token (the old name is free again)"
)
DISABLED_HINT = (
    "the controller refuses this device (disabled by an operator); it keeps serving its committed bundle and "
    "comes back by itself once re-enabled (fleetctl device enable)"
)


@dataclass(frozen=True)
class Refusal:
    """The controller refused this device (UNAUTHENTICATED or PERMISSION_DENIED), with its message."""

    code: grpc.StatusCode
    details: str

    @property
    def disabled(self) -> bool:
        return self.code == grpc.StatusCode.PERMISSION_DENIED


def refusal(code: grpc.StatusCode | None, details: str | None) -> Refusal | None:
    """A call's final status as a ``Refusal``; None for any other status."""
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return Refusal(code, details or "")
    return None


def refusal_of(exc: BaseException) -> Refusal | None:
    """``exc`` as a ``Refusal`` when it is a gRPC error refusing this device."""
    return refusal(rpc_code(exc), exc.details() if isinstance(exc, grpc.aio.AioRpcError) else "")


@dataclass(eq=False)
class RefusalLog:
    """Logs a loop's refusals and says how long to wait before the next try. ``every_time`` False: one line
    per kind of refusal until ``clear()`` (the loop's call succeeded again), not one per retry."""

    call: str
    unauth_backoff_s: float = 300.0
    refused_backoff_s: float = 60.0
    every_time: bool = False
    _last: grpc.StatusCode | None = field(default=None, init=False)

    def note(self, refused: Refusal) -> float:
        """Log ``refused`` (unless already logged) and return the wait before the next try."""
        wait = self.refused_backoff_s if refused.disabled else self.unauth_backoff_s
        if self.every_time or refused.code != self._last:
            emit = log.warning if refused.disabled else log.error
            emit(
                "agent.device_disabled" if refused.disabled else "agent.credential_rejected",
                call=self.call,
                details=shown(refused.details, DETAILS_CHARS),
                retry_in_s=wait,
                hint=DISABLED_HINT if refused.disabled else CREDENTIAL_HINT,
            )
        self._last = refused.code
        return wait

    def clear(self) -> None:
        self._last = None
