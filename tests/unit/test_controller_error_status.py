"""Which errors reach a client with their message, and as what status (``interceptor.client_status``).

Only typed errors are bad input; anything else is the controller's own bug (None here: the interceptor then
answers INTERNAL with a request id and logs the traceback).
"""

from __future__ import annotations

import grpc
import pytest

from edgefleet.contract.errors import ContractError
from edgefleet_controller import errors as cerr
from edgefleet_controller.fleet_feed import WatcherTooSlow
from edgefleet_controller.interceptor import client_status
from edgefleet_controller.store import errors as serr
from edgefleet_controller.telemetry.ingest import BatchError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (cerr.InvalidArgument("field 'x' must be > 0, got -5"), grpc.StatusCode.INVALID_ARGUMENT),
        (cerr.FailedPrecondition("staged for a rollout"), grpc.StatusCode.FAILED_PRECONDITION),
        (cerr.PermissionDenied("needs admin"), grpc.StatusCode.PERMISSION_DENIED),
        (WatcherTooSlow("watch again"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (serr.NotFound("bundle", "x@1"), grpc.StatusCode.NOT_FOUND),
        (serr.StillReferenced("sha256:" + "a" * 64, ["dev_1"]), grpc.StatusCode.FAILED_PRECONDITION),
        (serr.TokenRejected("expired"), grpc.StatusCode.UNAUTHENTICATED),
        (serr.InvalidArgument("page_size must be 1..1000"), grpc.StatusCode.INVALID_ARGUMENT),
        (ContractError("bundle.json: bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (BatchError("window out of order"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_typed_errors_keep_their_message_under_their_status(error: Exception, code: grpc.StatusCode) -> None:
    assert client_status(error) == (code, str(error))


@pytest.mark.parametrize("error", [ValueError("SELECT * FROM secrets"), KeyError("x"), RuntimeError("bug")])
def test_anything_untyped_is_not_a_client_error(error: Exception) -> None:
    assert client_status(error) is None
