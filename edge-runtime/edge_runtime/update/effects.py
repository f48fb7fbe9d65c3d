"""The effects of the update machine: what the driver must do, in order, after the record is journaled.

Each effect is a frozen dataclass naming its bundle (and config) by digest; ``UpdateEffect`` is their union,
which the driver's executor matches exhaustively (``assert_never``). The effects on the candidate share
``CandidateEffect`` (its bundle ``digest``).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_runtime.update.record import ArtifactRef


@dataclass(frozen=True)
class CandidateEffect:
    """Base of the effects on the candidate bundle, named by its ``digest``. Never emitted itself: the
    executor matches the concrete types."""

    digest: str


@dataclass(frozen=True)
class StartDownload(CandidateEffect):
    """Fetch every artifact of ``digest`` into ``incoming/`` (resuming partial files)."""

    artifacts: tuple[ArtifactRef, ...]


@dataclass(frozen=True)
class Verify(CandidateEffect):
    """Check every artifact's sha256 and the bundle signature."""

    artifacts: tuple[ArtifactRef, ...]


@dataclass(frozen=True)
class Stage(CandidateEffect):
    """Promote the verified download to a read-only slot and load it off the frame path, with ``config``
    (a config digest; None: the config in force)."""

    config: str | None = None


@dataclass(frozen=True)
class StartCanary(CandidateEffect):
    """Start the canary: the staged candidate runs in shadow beside the engine serving."""


@dataclass(frozen=True)
class StartWatch(CandidateEffect):
    """Start the trial watch window for the candidate now serving. ``paired``: run the engine it replaced
    beside it; False for a config change that kept the engine (nothing else to pair it with)."""

    paired: bool = True


@dataclass(frozen=True)
class StopEvaluation(CandidateEffect):
    """Stop any canary or watch window running for ``digest``."""


@dataclass(frozen=True)
class SwapToCandidate(CandidateEffect):
    """Serve the candidate: its staged engine (or the engine serving, when its config did not change
    inference), and put its config in force."""

    config: str | None = None


@dataclass(frozen=True)
class SwapToCommitted:
    """Serve the committed bundle (``None``: nothing was ever committed, serve nothing) and put the
    committed config in force (``None``: the last config the device applied, if any)."""

    digest: str | None
    config: str | None = None


@dataclass(frozen=True)
class Commit(CandidateEffect):
    """The candidate is now committed, with ``config`` as the durable last applied config (None: keep it);
    slots outside ``keep`` may be reclaimed."""

    keep: tuple[str, ...]
    config: str | None = None


@dataclass(frozen=True)
class CommitConfig:
    """Put ``config`` in force and make it the durable last applied config at once: nothing serves, so
    there is nothing to judge it on."""

    config: str


@dataclass(frozen=True)
class DiscardCandidate(CandidateEffect):
    """Remove the candidate's slot; its partial download too unless ``keep_partial``."""

    keep_partial: bool


@dataclass(frozen=True)
class CollectGarbage:
    """Remove every slot and partial download outside ``keep``."""

    keep: tuple[str, ...]


@dataclass(frozen=True)
class RaiseAlert:
    """Tell the operator something that rolled nothing back (a ``KIND_ALERT`` event): ``code`` is the
    dotted name (``first_install.latency_miss``), ``numbers`` the figures behind it."""

    code: str
    digest: str
    message: str
    numbers: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ReportState:
    """Tell the controller (on the next sync) what the record now says."""


UpdateEffect = (
    StartDownload
    | Verify
    | Stage
    | StartCanary
    | StartWatch
    | StopEvaluation
    | SwapToCandidate
    | SwapToCommitted
    | Commit
    | CommitConfig
    | DiscardCandidate
    | CollectGarbage
    | RaiseAlert
    | ReportState
)
