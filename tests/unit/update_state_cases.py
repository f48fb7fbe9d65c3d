"""Shared builders for the update machine's tests: the three bundles, records in a state, random event strategies."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from edge_runtime.update.effects import ReportState
from edge_runtime.update.events import (
    CanaryFailed,
    CanaryInconclusive,
    CanaryPassed,
    CanaryStarted,
    Cancelled,
    CandidateLoadFailed,
    DesiredBundleChanged,
    DiskInsufficient,
    DownloadCompleted,
    DownloadFailed,
    Recovered,
    TrialFailed,
    TrialPassed,
    UpdateEvent,
    VerificationFailed,
    VerificationPassed,
)
from edge_runtime.update.record import IN_PROGRESS, ArtifactRef, UpdateRecord, UpdateState

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
A = "sha256:" + "a" * 64  # committed
B = "sha256:" + "b" * 64  # candidate
C = "sha256:" + "c" * 64  # another bundle

S = UpdateState


def arts(digest: str) -> tuple[ArtifactRef, ...]:
    return (ArtifactRef("bundle.json", digest, 10), ArtifactRef("model.onnx", "sha256:" + "f" * 64, 100))


def desired(digest: str) -> DesiredBundleChanged:
    return DesiredBundleChanged(digest, arts(digest))


def record_in(state: UpdateState, **changes: object) -> UpdateRecord:
    base = UpdateRecord.initial(NOW - timedelta(minutes=5), committed=A)
    if state in IN_PROGRESS:
        base = replace(
            base,
            candidate=B,
            candidate_artifacts=arts(B),
            candidate_since=NOW - timedelta(minutes=5),
            download_attempts=1,
            canary_attempts=1 if state in (S.CANARY, S.TRIAL) else 0,
        )
    return replace(base, state=state, **changes)  # type: ignore[arg-type]


def kinds(effects: tuple[object, ...]) -> tuple[type, ...]:
    return tuple(type(e) for e in effects)


R = ReportState


DIGESTS = (A, B, C)
events_strategy: st.SearchStrategy[UpdateEvent] = st.one_of(
    st.sampled_from(DIGESTS).map(desired),
    st.sampled_from(
        [
            DownloadCompleted(),
            DownloadFailed("drop"),
            DiskInsufficient(100, 1),
            VerificationPassed(),
            VerificationFailed("bad"),
            CanaryStarted(),
            CanaryPassed("ok"),
            CanaryFailed("p95"),
            CanaryInconclusive("few"),
            TrialPassed(),
            TrialFailed("hot"),
            Recovered(),
            Recovered(clean_shutdown=True),
            CandidateLoadFailed("oom"),
            CanaryFailed("slow", latency_only=True),
            TrialFailed("slow", latency_only=True),
            Cancelled(),
        ]
    ),
)


HAPPY_NEXT: dict[UpdateState, UpdateEvent] = {
    S.DOWNLOADING: DownloadCompleted(),
    S.VERIFYING: VerificationPassed(),
    S.STAGED: CanaryStarted(),
    S.CANARY: CanaryPassed("ok"),
    S.TRIAL: TrialPassed(),
}
