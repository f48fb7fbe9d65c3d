"""Errors of the controller's service layer, and how each maps to a gRPC status.

    ControllerError                 base; carries a grpc.StatusCode
    ├── InvalidArgument             INVALID_ARGUMENT: bad input, names the field and value
    ├── NotFoundError               NOT_FOUND
    ├── AlreadyExists               ALREADY_EXISTS
    ├── FailedPrecondition          FAILED_PRECONDITION: e.g. a referenced bundle, admission refused
    ├── OutOfRange                  OUT_OF_RANGE
    ├── Unimplemented               UNIMPLEMENTED: a capability this version does not serve
    ├── Unauthenticated             UNAUTHENTICATED: missing, unknown, expired or revoked credential
    └── PermissionDenied            PERMISSION_DENIED: authenticated, but not allowed

Store errors (``edgefleet_controller.store.errors``) and contract errors (``edgefleet.contract.errors``)
are mapped in ``status_for``; anything else is INTERNAL and logged with its traceback.
"""

from __future__ import annotations

import grpc


class ControllerError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(ControllerError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(ControllerError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ControllerError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ControllerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(ControllerError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(ControllerError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Unauthenticated(ControllerError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ControllerError):
    code = grpc.StatusCode.PERMISSION_DENIED
