"""How fleetctl fails: one red line on stderr and an exit code, never a traceback.

fleetctl defines no exceptions of its own; it turns the ones it meets into exits::

    grpc.RpcError (the controller answered with a status)   ``grpc_errors``
    ├── INVALID_ARGUMENT                                     exit 2: the input was wrong
    └── anything else (UNAVAILABLE, UNAUTHENTICATED, ...)    exit 1, with a hint for the first two
    edgefleet.contract.errors.ContractError (a local file)   ``fail``: exit 2
    typer.BadParameter (a flag)                              typer's usage error: exit 2
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import grpc
import typer

from edgefleet.contract.errors import ContractError
from fleetctl.output import err_console

F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(fn: F) -> F:
    """Turn an RPC failure into one red line and exit code 1 (2 for bad input), no traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            name = code.name if code is not None else "ERROR"
            hint = ""
            if code == grpc.StatusCode.UNAVAILABLE:
                hint = " (is the controller running? set --controller or EDGEFLEET_CONTROLLER)"
            elif code == grpc.StatusCode.UNAUTHENTICATED:
                hint = " (set --token, EDGEFLEET_TOKEN or token in ~/.config/edgefleet/config.yaml)"
            err_console.print(f"[red]error:[/red] {name}: {details}{hint}", highlight=False)
            raise typer.Exit(2 if code == grpc.StatusCode.INVALID_ARGUMENT else 1) from None

    return wrapper  # type: ignore[return-value]


def fail(error: ContractError) -> typer.Exit:
    """One red line with the contract error's message, exit code 2."""
    err_console.print(f"[red]error:[/red] {error}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(code=2)
