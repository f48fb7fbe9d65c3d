"""Errors of the device's canary verdict (samples and policy).

The verdict functions never raise for a bad candidate: a slow or drifting bundle is a ``fail`` verdict with
reasons. Errors here are for malformed inputs: samples whose arrays disagree, a policy value out of range,
or a verdict that cannot be put on the wire yet. Messages say what was wrong, with the offending value, and
what to do.

    CanaryError
    ├── SamplesError          canary samples are malformed (lengths, shapes, negative latency, frame counts)
    ├── PolicyError           a canary policy value is missing or out of range (names the config key)
    └── PendingVerdictError   a ``pending`` verdict was asked to become a wire CanaryVerdict
"""

from __future__ import annotations


class CanaryError(Exception):
    """Base of every error raised by ``edge_runtime.canary``."""


class SamplesError(CanaryError):
    """Canary samples are malformed: arrays of different lengths, wrong shapes, negative latencies."""


class PolicyError(CanaryError):
    """A canary policy value is missing or out of range."""


class PendingVerdictError(CanaryError):
    """A ``pending`` verdict (keep collecting) has no wire form; only decided verdicts are reported."""
