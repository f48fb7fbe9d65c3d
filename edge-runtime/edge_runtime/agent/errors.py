"""Errors of the device agent (enrollment, credentials, the controller link).

Update, slot and fetch errors are ``edge_runtime.update.errors``; inference errors are
``edge_runtime.inference.errors``. The agent raises these only for what stops it from starting or talking
to its controller:

    AgentError
    ├── CredentialError         DIR/credential.json is missing, unreadable or malformed
    ├── EnrollmentError         enrollment was refused or could not be attempted (no token, bad name)
    └── ControllerAuthError     the controller rejects the device credential (UNAUTHENTICATED after enrollment)
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error raised by ``edge_runtime.agent``."""


class CredentialError(AgentError):
    """The stored device credential cannot be used."""


class EnrollmentError(AgentError):
    """The device could not enroll with the controller."""


class ControllerAuthError(AgentError):
    """The controller refused the device credential; an operator must re-enroll or restore the device."""
