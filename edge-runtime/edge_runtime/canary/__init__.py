"""The device's canary verdict: shadow-run samples in, pass / fail / inconclusive with numbers out.

Pure core only (``verdict`` the rules, ``policy`` their thresholds, ``report`` the verdict they build,
``samples``, ``agreement``, ``stats``); the shell that records frames, runs
the shadow session and reports verdicts lives elsewhere.
"""

from edge_runtime.canary.errors import CanaryError, PendingVerdictError, PolicyError, SamplesError
from edge_runtime.canary.policy import CanaryPolicy, InconclusiveAction, InconclusivePolicy, after_inconclusive
from edge_runtime.canary.report import (
    CHECK_AGREEMENT,
    CHECK_BUDGET,
    CHECK_DRIFT,
    CHECK_ERRORS,
    CHECK_NANS,
    CHECK_REGRESSION,
    CanaryVerdict,
    LatencySummary,
    Outcome,
    VerdictPhase,
    verdict_to_proto,
)
from edge_runtime.canary.samples import CanarySamples, Detection
from edge_runtime.canary.verdict import WATCH_MIN_PAIRED_FRAMES, decide_verdict, decide_watch

__all__ = [
    "CHECK_AGREEMENT",
    "CHECK_BUDGET",
    "CHECK_DRIFT",
    "CHECK_ERRORS",
    "CHECK_NANS",
    "CHECK_REGRESSION",
    "WATCH_MIN_PAIRED_FRAMES",
    "CanaryError",
    "CanaryPolicy",
    "CanarySamples",
    "CanaryVerdict",
    "Detection",
    "InconclusiveAction",
    "InconclusivePolicy",
    "LatencySummary",
    "Outcome",
    "PendingVerdictError",
    "PolicyError",
    "SamplesError",
    "VerdictPhase",
    "after_inconclusive",
    "decide_verdict",
    "decide_watch",
    "verdict_to_proto",
]
