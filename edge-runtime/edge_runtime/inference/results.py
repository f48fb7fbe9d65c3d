"""What the engine answers for one frame: ``FrameResult`` (the bundle's outputs, with provider and
digest) and its per-stage ``Timings``. The outputs themselves are the contract's ``Classification`` /
``Detection`` (``edgefleet.contract.processing.postprocess``)."""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.contract.processing.postprocess import Classification, Detection


@dataclass(frozen=True, slots=True)
class Timings:
    pre_ms: float
    model_ms: float
    post_ms: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class FrameResult:
    """One frame's answer. ``top_confidence``: highest output confidence, 0.0 when nothing was found; for a
    classifier, the best class's score even when it is below the threshold (see
    ``edgefleet.contract.processing.postprocess``)."""

    frame_id: int
    outputs: tuple[Classification, ...] | tuple[Detection, ...]
    top_confidence: float
    timings: Timings
    provider: str
    bundle_digest: str
