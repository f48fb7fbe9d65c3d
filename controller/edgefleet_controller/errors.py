"""Errors of the controller's service layer, and how each maps to a gRPC status.

    ControllerError                 base; carries a grpc.StatusCode
    ├── InvalidArgument             INVALID_ARGUMENT: bad input, names the field and value
    ├── NotFoundError               NOT_FOUND
    ├── AlreadyExists               ALREADY_EXISTS
    ├── FailedPrecondition          FAILED_PRECONDITION: e.g. a referenced bundle, admission refused
    ├── OutOfRange                  OUT_OF_RANGE
    ├── Unimplemented               UNIMPLEMENTED: a capability this version does not serve
    ├── Unauthenticated             UNAUTHENTICATED: missing, unknown, expired or revoked credential
    ├── PermissionDenied            PERMISSION_DENIED: authenticated, but not allowed
    ├── Unavailable                 UNAVAILABLE: transient; retry
    ├── DataLoss                    DATA_LOSS: a stored blob is corrupt (quarantined); re-push its bundle
    └── fleet_feed.WatcherTooSlow   RESOURCE_EXHAUSTED: a WatchFleet watcher fell behind; watch again

Store errors (``edgefleet_controller.store.errors``), contract errors (``edgefleet.contract.errors``) and
telemetry's typed input errors are mapped by ``edgefleet_controller.interceptor.client_status``. Anything else (a bare
``ValueError``, a ``KeyError``, a SQL error) is a controller bug, not bad input: the interceptor answers
INTERNAL with a request id and none of the exception's text, and logs the traceback under that id. Code that
checks client input raises one of these typed errors (``timestamp_arg`` for client timestamps).
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp


class ControllerError(Exception):
    """Base of the errors a client may see; a subclass names its status: ``class X(ControllerError, code=...)``."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init_subclass__(cls, *, code: grpc.StatusCode | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code


class InvalidArgument(ControllerError, code=grpc.StatusCode.INVALID_ARGUMENT):
    """Bad input; the message names the field and the value."""


class NotFoundError(ControllerError, code=grpc.StatusCode.NOT_FOUND):
    """What the request names does not exist."""


class AlreadyExists(ControllerError, code=grpc.StatusCode.ALREADY_EXISTS):
    """It exists already."""


class FailedPrecondition(ControllerError, code=grpc.StatusCode.FAILED_PRECONDITION):
    """Refused in the current state: a referenced bundle, admission refused."""


class OutOfRange(ControllerError, code=grpc.StatusCode.OUT_OF_RANGE):
    """An offset or position past the end."""


class Unimplemented(ControllerError, code=grpc.StatusCode.UNIMPLEMENTED):
    """A capability this version does not serve."""


class Unauthenticated(ControllerError, code=grpc.StatusCode.UNAUTHENTICATED):
    """A missing, unknown, expired or revoked credential."""


class PermissionDenied(ControllerError, code=grpc.StatusCode.PERMISSION_DENIED):
    """Authenticated, but not allowed."""


class Unavailable(ControllerError, code=grpc.StatusCode.UNAVAILABLE):
    """Transient: the same request may succeed when retried."""


class DataLoss(ControllerError, code=grpc.StatusCode.DATA_LOSS):
    """Stored bytes are corrupt: a blob that does not hash to its digest (quarantined, never served)."""


def timestamp_arg(ts: Timestamp, field: str) -> datetime:
    """A client's timestamp as an aware UTC datetime; ``InvalidArgument`` naming ``field`` when out of range."""
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except ValueError:
        raise InvalidArgument(
            f"{field} must be a timestamp between years 1 and 9999, got seconds={ts.seconds}, nanos={ts.nanos}"
        ) from None
