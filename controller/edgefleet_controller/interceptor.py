"""One server interceptor for every controller RPC: authentication and authorisation by a declarative
method table, error → status mapping, request logs bound into structlog, and RPC metrics.

Servicers stay thin: they read the caller from ``current_principal()`` and raise domain errors; this module
turns those into gRPC statuses with the error's message.

Authenticate first, then validate, then store: a call's credential is checked before any payload field is
looked at (Enroll's enrollment token, which travels in the request, by a read-only check of the token:
``ENROLLMENT``); then every request message is checked against its entry in
``edgefleet.contract.request_bounds`` (unary requests before the handler runs, each message of a client
stream as it arrives), a breach refused whole with INVALID_ARGUMENT before any write. A message over
``LARGE_CHECK_BYTES`` is checked in a worker thread, at most ``LARGE_CHECKS_AT_ONCE`` at a time per server,
so a flood of refused multi-MB requests cannot stall the event loop (health checks, other calls); smaller
ones inline. ``rpc.refused`` lines are rate-limited per peer (``refusal_log``).

Only typed errors reach the client with their message (``client_status``): ``ControllerError`` (it carries
its code), store errors, contract errors and telemetry's typed input errors. Anything else is the controller's
own bug, not bad input: the call ends INTERNAL with a fresh request id (``req_`` + 16 hex) and nothing of the
exception, whose text can hold SQL, parameters or paths; the same id is in the ``rpc.internal_error`` log line
with the traceback. A database ``OperationalError`` (connection lost, locked, failing over) is the one untyped
exception with its own status: UNAVAILABLE, which callers retry, with a request id and none of its text
(``rpc.database_unavailable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import grpc
import structlog
from sqlalchemy import exc as sa_exc

from edgefleet.contract.errors import ContractError
from edgefleet.contract.request_bounds import MAX_TOKEN_CHARS
from edgefleet.contract.request_bounds import check as check_bounds
from edgefleet_controller.auth.principals import Principal, Role, bearer_token
from edgefleet_controller.errors import ControllerError, Unauthenticated
from edgefleet_controller.metrics import ControllerMetrics
from edgefleet_controller.refusal_log import RefusalLimiter, peer_host
from edgefleet_controller.store import errors as serr
from edgefleet_controller.telemetry.ingest import BatchError
from edgefleet_controller.telemetry.query import QueryError
from edgefleet_controller.telemetry.review import ReviewQueryError

log = structlog.get_logger("edgefleet.controller.rpc")

PUBLIC = "public"
DEVICE = "device"
#: Enroll: the caller proves itself by the enrollment token in the request, checked before anything else.
ENROLLMENT = "enrollment"
Requirement = str | Role

_DS = "/edgefleet.v1.DeviceService/"
_FS = "/edgefleet.v1.FleetService/"

#: What each method needs. A method missing from this table is refused: new RPCs must be placed here.
METHOD_POLICY: dict[str, Requirement] = {
    _DS + "Enroll": ENROLLMENT,
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
AdmitEnrollment = Callable[[str], Awaitable[None]]

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


#: Serialized size above which a request's bounds check runs off the event loop (a check of a refused
#: multi-MB message takes milliseconds).
LARGE_CHECK_BYTES: Final = 64 * 1024
#: Large-message checks running at once (each holds its message; more only contend for the GIL).
LARGE_CHECKS_AT_ONCE: Final = 2


async def checked_bounds(message: Any, large: asyncio.Semaphore) -> None:
    """``check_bounds(message)``: inline when small, in a worker thread under ``large`` otherwise."""
    if message.ByteSize() <= LARGE_CHECK_BYTES:
        check_bounds(message)
        return
    async with large:
        await asyncio.to_thread(check_bounds, message)


class ControllerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        authenticate: Authenticate,
        metrics: ControllerMetrics,
        *,
        admit_enrollment: AdmitEnrollment | None = None,
        refusals: RefusalLimiter | None = None,
    ) -> None:
        self._authenticate = authenticate
        self._metrics = metrics
        self._admit_enrollment = admit_enrollment
        self._refusals = refusals or RefusalLimiter()
        self._large_checks = asyncio.Semaphore(LARGE_CHECKS_AT_ONCE)

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

    async def enter(self, request: Any) -> None:
        """Authenticate and authorise; then check a unary ``request`` (None for a client stream) against its
        bounds."""
        self.started = time.perf_counter()
        structlog.contextvars.bind_contextvars(rpc=self.short)
        await self.admit(request)
        if request is not None:
            await self.check(request)

    async def check(self, message: Any) -> None:
        """Check one request message against its bounds (``checked_bounds``)."""
        await checked_bounds(message, self.owner._large_checks)

    async def admit(self, request: Any) -> None:
        if self.requirement is None:
            raise Unauthenticated(f"method {self.method} has no access policy; refusing")
        if self.requirement == PUBLIC:
            return
        if self.requirement == ENROLLMENT:
            await self.admit_enrollment(request)
            return
        principal = await self.owner._authenticate(bearer_token(self.metadata))
        if self.requirement == DEVICE:
            _ = principal.device_id  # raises PermissionDenied for operators
        else:
            assert isinstance(self.requirement, Role)
            principal.require_role(self.requirement)
        _principal.set(principal)
        structlog.contextvars.bind_contextvars(caller=principal.subject)

    async def admit_enrollment(self, request: Any) -> None:
        """The enrollment token, and only it, before any other field: cheap for a caller without one."""
        token = getattr(request, "enrollment_token", "")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated(
                "enrollment refused: the enrollment token is malformed; expected 'eft_<id>.<secret>' exactly as "
                "it was printed when the token was created"
            )
        if self.owner._admit_enrollment is None:
            raise Unauthenticated(f"method {self.method} cannot check enrollment tokens here; refusing")
        await self.owner._admit_enrollment(token)

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
        self.log_refusal(context, code, message)
        await context.abort(code, message)

    def log_refusal(self, context: Any, code: grpc.StatusCode, message: str) -> None:
        """``rpc.refused``, at most ``refusal_log.PER_WINDOW`` per peer and window; the rest counted."""
        peer = peer_host(context.peer())
        admission = self.owner._refusals.admit(peer)
        for quiet_peer, count in admission.suppressed:
            log.info("rpc.refused_suppressed", peer=quiet_peer, count=count, window_s=self.owner._refusals.window_s)
        if admission.log:
            log.info("rpc.refused", method=self.short, code=code.name, error=message, peer=peer)

    @contextlib.asynccontextmanager
    async def around(self, context: Any, request: Any) -> AsyncIterator[None]:
        """Authenticate, authorise and check a unary ``request`` before the call; time, log and map its errors
        after."""
        try:
            await self.enter(request)
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


async def _checked(requests: AsyncIterator[Any], guard: _Guard) -> AsyncIterator[Any]:
    """A client stream whose every message is checked against its bounds as it arrives."""
    async for message in requests:
        await guard.check(message)
        yield message


def _answering(inner: Any, guard: _Guard, *, streamed: bool) -> Callable[[Any, Any], Awaitable[Any]]:
    """A unary-response behaviour (unary-unary, stream-unary when ``streamed``) with ``guard`` around it."""

    async def answer(request: Any, context: Any) -> Any:
        async with guard.around(context, None if streamed else request):
            return await inner(_checked(request, guard) if streamed else request, context)

    return answer


def _streaming(inner: Any, guard: _Guard, *, streamed: bool) -> Callable[[Any, Any], AsyncIterator[Any]]:
    """A streaming-response behaviour (unary-stream, stream-stream when ``streamed``) with ``guard`` around it."""

    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        async with guard.around(context, None if streamed else request):
            async for item in inner(_checked(request, guard) if streamed else request, context):
                yield item

    return stream


def _wrap(handler: Any, guard: _Guard) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler with ``guard`` around each call."""
    wire = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_answering(handler.unary_unary, guard, streamed=False), *wire)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_answering(handler.stream_unary, guard, streamed=True), *wire)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, guard, streamed=False), *wire)
    return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, guard, streamed=True), *wire)
