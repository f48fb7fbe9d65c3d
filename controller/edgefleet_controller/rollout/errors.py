"""Errors of the controller's rollout core (spec validation, latency admission inputs).

The planner itself never raises for facts it does not like (a failed device is an abort decision, not an
exception); errors here are for specs and inputs that cannot be planned at all. Messages say what was
wrong, with the offending value, and what to do.

    RolloutError
    ├── RolloutSpecError      a rollout spec is invalid (waves, bake time, parallelism, gates, on_abort)
    └── AdmissionInputError   latency admission got an SLA, headroom or profile it cannot compute with
"""

from __future__ import annotations


class RolloutError(Exception):
    """Base of every error raised by ``edgefleet_controller.rollout``."""


class RolloutSpecError(RolloutError):
    """A rollout spec is invalid; the message names the field and the offending value."""


class AdmissionInputError(RolloutError):
    """Latency admission got an SLA, headroom, thermal buffer or profile that is out of range."""
