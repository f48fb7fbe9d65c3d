"""One server interceptor for every controller RPC: authentication and authorisation by a declarative
method table, error → status mapping, request logs bound into structlog, and RPC metrics.

Servicers stay thin: they read the caller from ``current_principal()`` and raise domain errors; this module
turns those into gRPC statuses with the error's message.

Only typed errors reach the client with their message (``client_status``): ``ControllerError`` (it carries
its code), store errors, contract errors and telemetry's typed input errors. Anything else is the controller's
own bug, not bad input: the call ends INTERNAL with a fresh request id (``req_`` + 16 hex) and nothing of the
exception, whose text can hold SQL, parameters or paths; the same id is in the ``rpc.internal_error`` log line
with the traceback. A database ``OperationalError`` (connection lost, locked, failing over) is the one untyped
exception with its own status: UNAVAILABLE, which callers retry, with a request id and none of its text
(``rpc.database_unavailable``).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from sqlalchemy import exc as sa_exc

from edgefleet.contract.errors import ContractError
from edgefleet_controller.auth.principals import Principal, Role, bearer_token
from edgefleet_controller.errors import ControllerError, Unauthenticated
from edgefleet_controller.metrics import ControllerMetrics
from edgefleet_controller.store import errors as serr
from edgefleet_controller.telemetry.ingest import BatchError
from edgefleet_controller.telemetry.query import QueryError
from edgefleet_controller.telemetry.review import ReviewQueryError

log = structlog.get_logger("edgefleet.controller.rpc")

PUBLIC = "public"
DEVICE = "device"
Requirement = str | Role

_DS = "/edgefleet.v1.DeviceService/"
_FS = "/edgefleet.v1.FleetService/"

#: What each method needs. A method missing from this table is refused: new RPCs must be placed here.
METHOD_POLICY: dict[str, Requirement] = {
    _DS + "Enroll": PUBLIC,
    _DS + "Sync": DEVICE,
    _DS + "FetchBlob": DEVICE,
    _DS + "ReportEvent": DEVICE,
    _DS + "UploadTelemetry": DEVICE,
    **{
        _FS + m: Role.VIEWER
        for m in (
            "ListBundles GetBundle GetEffectiveConfig GetRollout ListRollouts WatchRollout ListDevices "
            "GetDevice ListSites WatchFleet ListDeviceEvents QueryTelemetry ListReviewSamples ListTrustedKeys "
            "ListProfiles"
        ).split()
    },
    **{
        _FS + m: Role.OPERATOR
        for m in (
            "PushBundle DeleteBundle ApplyConfig SetDesiredBundle CreateRollout PauseRollout ResumeRollout "
            "ApproveRollout AbortRollout LabelReviewSample"
        ).split()
    },
    **{
        _FS + m: Role.ADMIN
        for m in "CreateEnrollmentToken RevokeEnrollmentToken CreateOperatorToken AddTrustedKey".split()
    },
    **{
        _FS + m: Role.ADMIN
        for m in (
            "ListOperatorTokens RevokeOperatorToken DisableDevice EnableDevice DeleteDevice RotateDeviceCredential"
        ).split()
    },
    _FS + "DeleteTelemetry": Role.ADMIN,
}

_principal: ContextVar[Principal | None] = ContextVar("edgefleet_principal", default=None)


def current_principal() -> Principal:
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("this call needs a credential")
    return principal


def new_request_id() -> str:
    """The id an INTERNAL status and its log line share: ``req_`` + 16 hex."""
    return f"req_{secrets.token_hex(8)}"


Authenticate = Callable[[str], Awaitable[Principal]]

#: Typed refusals of bad input besides ``ControllerError`` (which carries its own code): INVALID_ARGUMENT with
#: their message (telemetry's: a batch, a query, a review-sample filter).
_INPUT_ERRORS = (
    serr.InvalidArgument,
    serr.BlobIntegrityError,
    ContractError,
    BatchError,
    QueryError,
    ReviewQueryError,
)
#: Store errors with a status of their own, checked in this order (``StillReferenced`` before ``Conflict``).
_STORE_STATUSES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (serr.TokenRejected, grpc.StatusCode.UNAUTHENTICATED),
    (serr.NotFound, grpc.StatusCode.NOT_FOUND),
    (serr.StillReferenced, grpc.StatusCode.FAILED_PRECONDITION),
    (serr.Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (serr.OffsetOutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    *((error, grpc.StatusCode.INVALID_ARGUMENT) for error in _INPUT_ERRORS),
)


def client_status(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status and message a typed error reaches the client with; None for anything unexpected.

    Only typed errors are bad input: a bare ``ValueError`` (or ``KeyError``, a SQL error...) is the
    controller's own bug, which the interceptor reports as INTERNAL with a request id, never its text.
    """
    if isinstance(exc, ControllerError):
        return exc.code, str(exc)
    for error, code in _STORE_STATUSES:
        if isinstance(exc, error):
            return code, str(exc)
    return None


class ControllerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticate: Authenticate, metrics: ControllerMetrics) -> None:
        self._authenticate = authenticate
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(("/edgefleet.", "/edgefleet.v1.")):
            return handler  # health, reflection: public by design
        requirement = METHOD_POLICY.get(method)
        metadata = tuple(handler_call_details.invocation_metadata or ())
        short = method.rsplit("/", 1)[-1]
        return _wrap(handler, self._guard(method, short, requirement, metadata))

    def _guard(self, method: str, short: str, requirement: Requirement | None, metadata: tuple[Any, ...]) -> _Guard:
        return _Guard(self, method, short, requirement, metadata)


@dataclass(eq=False)
class _Guard:
    """Runs around one call: authenticate, authorise, time, log, map errors."""

    owner: ControllerInterceptor
    method: str
    short: str
    requirement: Requirement | None
    metadata: tuple[Any, ...]
    started: float = 0.0

    async def enter(self) -> None:
        self.started = time.perf_counter()
        structlog.contextvars.bind_contextvars(rpc=self.short)
        if self.requirement is None:
            raise Unauthenticated(f"method {self.method} has no access policy; refusing")
        if self.requirement == PUBLIC:
            return
        principal = await self.owner._authenticate(bearer_token(self.metadata))
        if self.requirement == DEVICE:
            _ = principal.device_id  # raises PermissionDenied for operators
        else:
            assert isinstance(self.requirement, Role)
            principal.require_role(self.requirement)
        _principal.set(principal)
        structlog.contextvars.bind_contextvars(caller=principal.subject)

    async def fail(self, exc: BaseException, context: Any) -> None:
        mapped = client_status(exc)
        if mapped is not None:
            code, message = mapped
        elif isinstance(exc, sa_exc.OperationalError):
            # the database is unreachable, locked or failing over: transient for the caller, who retries
            request_id = new_request_id()
            log.error("rpc.database_unavailable", method=self.method, request_id=request_id, exc_info=exc)
            code = grpc.StatusCode.UNAVAILABLE
            message = f"database unavailable; request id {request_id}; retry later (see the controller log)"
        else:
            request_id = new_request_id()
            log.error("rpc.internal_error", method=self.method, request_id=request_id, exc_info=exc)
            code = grpc.StatusCode.INTERNAL
            message = f"internal error; request id {request_id}; see the controller log"
        self.exit(code)
        log.info("rpc.refused", method=self.short, code=code.name, error=message)
        await context.abort(code, message)

    @contextlib.asynccontextmanager
    async def around(self, context: Any) -> AsyncIterator[None]:
        """Authenticate and authorise before the call; time, log and map its errors after."""
        try:
            await self.enter()
            yield
        except grpc.aio.AbortError:
            self.exit(context.code() or grpc.StatusCode.UNKNOWN)
            raise
        except Exception as exc:
            await self.fail(exc, context)
            raise  # unreachable: abort raises
        self.exit(grpc.StatusCode.OK)

    def exit(self, code: grpc.StatusCode) -> None:
        elapsed = time.perf_counter() - self.started
        self.owner._metrics.rpc_seconds.labels(self.short, code.name).observe(elapsed)
        structlog.contextvars.unbind_contextvars("rpc", "caller")


def _answering(inner: Any, guard: _Guard) -> Callable[[Any, Any], Awaitable[Any]]:
    """A unary-response behaviour (unary-unary, stream-unary) with ``guard`` around it."""

    async def answer(request: Any, context: Any) -> Any:
        async with guard.around(context):
            return await inner(request, context)

    return answer


def _streaming(inner: Any, guard: _Guard) -> Callable[[Any, Any], AsyncIterator[Any]]:
    """A streaming-response behaviour (unary-stream, stream-stream) with ``guard`` around it."""

    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        async with guard.around(context):
            async for item in inner(request, context):
                yield item

    return stream


def _wrap(handler: Any, guard: _Guard) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler with ``guard`` around each call."""
    wire = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_answering(handler.unary_unary, guard), *wire)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_answering(handler.stream_unary, guard), *wire)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, guard), *wire)
    return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, guard), *wire)
