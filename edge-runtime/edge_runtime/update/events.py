"""The events of the update machine: facts reported to it (by the agent, the driver's ports, a restart).

Each event is a frozen dataclass; ``UpdateEvent`` is their union and ``EVENT_TYPES`` lists them (the
``TRANSITIONS`` table must cover each). The events that hold the candidate back share ``CandidateSetback``
(their ``reason``, in words, becomes the record's failure text). ``format_bytes`` spells the byte counts a
``DiskInsufficient`` carries, for the machine's failure text and the slots' disk errors alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_runtime.update.record import ArtifactRef


def format_bytes(n: int) -> str:
    """``812.0 MiB`` style, binary units, one decimal."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


@dataclass(frozen=True)
class CandidateSetback:
    """Base of the events that hold the candidate back (a failure, an inconclusive canary, a cancel):
    ``reason`` says why, in words. Never sent itself: ``TRANSITIONS`` is keyed by the concrete type."""

    reason: str


@dataclass(frozen=True)
class DesiredBundleChanged:
    """The controller's desired state for this device, under its ``assignment_id`` (``""``: none minted).

    ``digest`` is the desired bundle (its bundle.json's digest, with its artifacts); ``""`` keeps the bundle
    the device runs or installs. ``config`` is the desired effective config digest (None: keep the config),
    ``config_inference`` its ``config_classes.inference_fingerprint`` (which says whether it changes
    inference); the agent holds the config's values, the machine only their identity."""

    digest: str
    artifacts: tuple[ArtifactRef, ...] = ()
    assignment_id: str = ""
    config: str | None = None
    config_inference: str | None = None


@dataclass(frozen=True)
class DownloadCompleted:
    """Every artifact of the candidate is on disk with its expected size."""


@dataclass(frozen=True)
class DownloadFailed(CandidateSetback):
    """An artifact could not be fetched (``reason``); the download is retried up to its limit."""


@dataclass(frozen=True)
class DiskInsufficient:
    """The download does not fit: ``needed`` bytes (margin included) against ``free``."""

    needed: int
    free: int


@dataclass(frozen=True)
class VerificationPassed:
    """Artifact digests and the bundle signature checked out."""


@dataclass(frozen=True)
class VerificationFailed(CandidateSetback):
    """A digest, the manifest or the signature did not check out (``reason``): the bundle is rejected."""


@dataclass(frozen=True)
class CanaryStarted:
    """The staged candidate is running in shadow on live frames."""


@dataclass(frozen=True)
class CanaryPassed:
    """The canary judged the candidate fit for a trial; ``summary`` is its verdict in one line."""

    summary: str = ""


@dataclass(frozen=True)
class CanaryFailed(CandidateSetback):
    """The canary rejected the candidate. ``latency_only``: only latency checks failed (the outputs were
    fine); ``inconclusive``: the policy rejects it for staying inconclusive; ``numbers``: what decided it
    (``candidate_p95_ms``, ``latency_budget_ms``, ...), for the first-install alert."""

    latency_only: bool = False
    inconclusive: bool = False
    numbers: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class CanaryInconclusive(CandidateSetback):
    """The canary saw too little before its deadline (``reason``); it runs again up to its limit."""


@dataclass(frozen=True)
class TrialPassed:
    """The watch window after the swap ended without a problem."""


@dataclass(frozen=True)
class TrialFailed(CandidateSetback):
    """The watch window failed the candidate serving in trial (``latency_only``, ``numbers``: as for
    ``CanaryFailed``)."""

    latency_only: bool = False
    numbers: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Recovered:
    """The process started; whatever the record says was in progress was interrupted.

    ``clean_shutdown``: the previous process stopped cleanly (its driver left the clean-stop marker for
    exactly this record); unknown counts as not clean. ``saved_config``: (digest, inference fingerprint) of
    the last applied config on disk, adopted as the committed config by a record that names none (written
    by a runtime before config candidates), so the first config after an upgrade is judged against it."""

    clean_shutdown: bool = False
    saved_config: tuple[str, str] | None = None


@dataclass(frozen=True)
class CandidateLoadFailed(CandidateSetback):
    """The verified candidate could not be loaded into an engine (staging)."""


@dataclass(frozen=True)
class Cancelled(CandidateSetback):
    """Stop the candidate in progress (``reason``); the committed bundle keeps serving."""

    reason: str = "cancelled"


UpdateEvent = (
    DesiredBundleChanged
    | DownloadCompleted
    | DownloadFailed
    | DiskInsufficient
    | VerificationPassed
    | VerificationFailed
    | CanaryStarted
    | CanaryPassed
    | CanaryFailed
    | CanaryInconclusive
    | TrialPassed
    | TrialFailed
    | Recovered
    | Cancelled
    | CandidateLoadFailed
)

EVENT_TYPES: tuple[type[UpdateEvent], ...] = (
    DesiredBundleChanged,
    DownloadCompleted,
    DownloadFailed,
    DiskInsufficient,
    VerificationPassed,
    VerificationFailed,
    CanaryStarted,
    CanaryPassed,
    CanaryFailed,
    CanaryInconclusive,
    TrialPassed,
    TrialFailed,
    Recovered,
    Cancelled,
    CandidateLoadFailed,
)
