"""The device's update state machine: states, events, effects, the record, ``TRANSITIONS`` and ``decide``.

Pure core: no I/O, no clock reads (``now`` comes in), no exceptions for unexpected events. The shape follows
Mender's client: one explicit state per step, one versioned record persisted before any effect runs, one
table of transitions, loops capped by counters kept in the record.

Happy path::

    idle/committed/rolled_back/failed --DesiredBundleChanged--> downloading
      --DownloadCompleted--> verifying --VerificationPassed--> staged --CanaryStarted--> canary
      --CanaryPassed--> trial --TrialPassed--> committed

A config-only candidate (the committed bundle under a new config) starts at ``staged`` (a second engine
of the committed slot under the new config, canaried in shadow) or, when the change keeps every inference
key, at ``trial`` (the config is put in force for an unpaired watch window).

Decisions written down here (the rest of the runtime relies on them):

- A candidate is (bundle, config). The desired state names a bundle (``""``: keep the one running or being
  installed) and a config digest with its inference fingerprint (``config_classes.inference_fingerprint``;
  None: keep the config). The record keeps the committed pair (``committed``, ``committed_config``) and the
  candidate's (``candidate``, ``candidate_config``), each config with its fingerprint. A new bundle, with or
  without a new config, is downloaded, verified, staged under the candidate config, canaried, trialled and
  committed with it. A new config for the committed bundle is a candidate of its own: if its fingerprint
  differs from the committed one (an ``INFERENCE`` key changed: thresholds, pre/post-processing overrides,
  provider or precision; unknown fingerprints count as changed) it is staged as a new engine and canaried
  in shadow against the current engine and config, then trial, then commit; otherwise (telemetry, sampling,
  policy keys) it goes straight to ``trial`` (``SwapToCandidate`` changes only the config in force) and a
  watch window with no shadow (``StartWatch(paired=False)``), then commit. Failing → ``rolled_back``: the
  committed engine and config are put back (``SwapToCommitted`` names both), the rejection is remembered for
  (bundle, config, assignment). A config change while a bundle is being installed joins that candidate (a
  candidate already loaded is staged again under the new config and its canary starts over). A config with
  no bundle to judge it on (nothing installed or assigned) is committed at once (``CommitConfig``). The
  config in force is the committed one, except during a trial: the candidate's. ``Commit`` carries the
  config that becomes the durable last applied config.

- ``failed`` means the candidate was abandoned before it ever ran (download, disk, verification);
  ``rolled_back`` means it ran (canary shadow or trial) and was abandoned. In both the device serves the
  last committed bundle; ``failure`` says why.
- Cancelling (``Cancelled``, or a desired state equal to the committed one) before the candidate ran goes
  to ``idle``; during canary or trial it goes to ``rolled_back`` (``committed`` when the desired state came
  under a new assignment: that assignment's outcome is reached).
- Restarts resume (``Recovered``, see ``recover``). A record in ``downloading`` .. ``trial`` was interrupted
  by a restart (SIGTERM, SIGKILL, a container or power restart). The committed bundle serves at once and the
  same candidate picks up where it stood: a download resumes from its partial files, verification runs
  again, and a candidate that was staged, in canary or in trial is verified again from its slot on disk
  (sha256 of every artifact and the signature: seconds, and it proves the slot survived the power cut),
  then loaded again and its canary (``staged``/``canary``) or its trial (``trial``: swap, watch window)
  starts over. A config-only candidate skips the verification (its slot is the committed one). Nothing is
  discarded, so a first-install device keeps the verified bundle it was trialling.
- Crashes count, restarts do not. Only a crash attributable to the candidate counts towards rejecting it:
  the previous process died WITHOUT a clean-stop marker (the driver writes one on a clean SIGTERM stop, see
  ``UpdateDriver.stop``; ``Recovered.clean_shutdown``) while the record was in ``staged``, ``canary`` or
  ``trial`` (the candidate being loaded, loaded in shadow, or serving), and the restart comes within
  ``RetryLimits.crash_window_s`` of the candidate's last load (``candidate_loaded_at``). A clean stop never
  counts; a death while downloading or verifying never counts (no candidate code ran); a power cut inside
  the window is indistinguishable from a crash and counts, which is why one count never rejects. At
  ``max_interruptions`` attributable crashes (``crashes``) the candidate is rejected (rolled back), so a
  bundle that kills the process cannot cause an update loop. ``interruptions`` counts every restart during
  the candidate, for the record.
- First install (nothing committed, so nothing to fall back to): the device never ends with no bundle when
  one passed its golden checks. A canary that fails on latency alone (``CanaryFailed.latency_only``: budget
  or regression, no errors, NaNs, drift or disagreement) or stays inconclusive does not refuse the bundle:
  it goes on to its trial and serves, ``degraded`` set (the agent reports ``HEALTH_DEGRADED``) and an alert
  raised (``RaiseAlert``: ``first_install.latency_miss`` / ``first_install.inconclusive`` with the numbers).
  A trial that fails on latency alone commits it, degraded (one alert per candidate); one that passes after
  a canary miss commits it still degraded. Errors, NaNs, a golden
  mismatch, a load or verification failure and a crash loop refuse it as for any device: the device serves
  nothing rather than a bundle that computes wrongly. ``degraded`` is cleared when a bundle commits normally.
- Outcomes belong to an assignment. Every desired state carries the controller's ``assignment_id``
  (opaque to the device); the record keeps the assignment of the desired state the device is acting on
  (``assignment_id``), the reporter echoes it in ``ReportedState.assignment_id`` next to the state,
  candidate, reason and last verdict, and stamps it on every ``CanaryVerdict`` it sends. A new assignment
  naming what the device already runs is adopted at once: a settled device reports ``committed`` under it
  (its outcome for that assignment), a device in progress keeps going under the new id.
- A rejected bundle (verification failed, canary failed, trial failed, too many crashes) is remembered with
  the assignment it was rejected under (``rejections``: the last ``MAX_REJECTIONS`` (digest, assignment)
  pairs; ``rejected`` is the latest digest): desired again under the SAME assignment it is not retried;
  under a NEW assignment it is retried from scratch (the controller refuses to re-roll a bundle that failed
  its canary unless the operator forces it, so a new assignment is a decision).
  Download failures, disk shortage and inconclusive canaries are not rejections: the same digest may be
  retried.
- Only a verified bundle can be staged, swapped to or committed: ``staged`` is only reachable through
  ``VerificationPassed`` from ``verifying``.

The stored values of ``UpdateState`` and the JSON field names of ``UpdateRecord`` never change; a change of
meaning bumps ``RECORD_VERSION``. Version 1 records (before assignments) still load: the fields added since
take their defaults (no assignment, the rejection not tied to one), so the committed bundle is kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from edge_runtime.update.errors import RecordFormatError
from edgefleet.contract.digests import is_digest

RECORD_VERSION = 2
MAX_REJECTIONS = 16
# Versions this runtime reads; older ones are migrated on load (see ``UpdateRecord.from_dict``).
READABLE_VERSIONS = (1, 2)


def format_bytes(n: int) -> str:
    """``812.0 MiB`` style, binary units, one decimal."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


class UpdateState(StrEnum):
    """Where the device is in an update. The stored values are persisted and never change."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    CANARY = "canary"
    TRIAL = "trial"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


IN_PROGRESS: frozenset[UpdateState] = frozenset(
    {
        UpdateState.DOWNLOADING,
        UpdateState.VERIFYING,
        UpdateState.STAGED,
        UpdateState.CANARY,
        UpdateState.TRIAL,
    }
)
SETTLED: frozenset[UpdateState] = frozenset(UpdateState) - IN_PROGRESS
_CANDIDATE_RAN: frozenset[UpdateState] = frozenset({UpdateState.CANARY, UpdateState.TRIAL})
# From staged on, a canary may already be starting, so abandoning must stop it.
_EVALUATING: frozenset[UpdateState] = _CANDIDATE_RAN | {UpdateState.STAGED}


@dataclass(frozen=True)
class ArtifactRef:
    """One file of a bundle: its relative name in the slot, its content address and its size in bytes."""

    name: str
    digest: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest, "size": self.size}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactRef:
        name, digest, size = data.get("name"), data.get("digest"), data.get("size")
        if not isinstance(name, str) or not name:
            raise RecordFormatError(f"artifact: field 'name' must be a non-empty string, got {name!r}")
        if not is_digest(digest):
            raise RecordFormatError(f"artifact {name!r}: field 'digest' must be sha256:<64 hex>, got {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RecordFormatError(f"artifact {name!r}: field 'size' must be an integer >= 0, got {size!r}")
        assert isinstance(digest, str)
        return cls(name=name, digest=digest, size=size)


# --- events: facts reported to the machine ---------------------------------------------------------------


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
class DownloadFailed:
    reason: str


@dataclass(frozen=True)
class DiskInsufficient:
    needed: int
    free: int


@dataclass(frozen=True)
class VerificationPassed:
    """Artifact digests and the bundle signature checked out."""


@dataclass(frozen=True)
class VerificationFailed:
    reason: str


@dataclass(frozen=True)
class CanaryStarted:
    """The staged candidate is running in shadow on live frames."""


@dataclass(frozen=True)
class CanaryPassed:
    summary: str = ""


@dataclass(frozen=True)
class CanaryFailed:
    """The canary rejected the candidate. ``latency_only``: only latency checks failed (the outputs were
    fine); ``inconclusive``: the policy rejects it for staying inconclusive; ``numbers``: what decided it
    (``candidate_p95_ms``, ``latency_budget_ms``, ...), for the first-install alert."""

    reason: str
    latency_only: bool = False
    inconclusive: bool = False
    numbers: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class CanaryInconclusive:
    reason: str


@dataclass(frozen=True)
class TrialPassed:
    """The watch window after the swap ended without a problem."""


@dataclass(frozen=True)
class TrialFailed:
    """The watch window failed the candidate serving in trial (``latency_only``, ``numbers``: as for
    ``CanaryFailed``)."""

    reason: str
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
class CandidateLoadFailed:
    """The verified candidate could not be loaded into an engine (staging)."""

    reason: str


@dataclass(frozen=True)
class Cancelled:
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


# --- effects: what the driver must do, in order, after the record is journaled -------------------------


@dataclass(frozen=True)
class StartDownload:
    """Fetch every artifact of ``digest`` into ``incoming/`` (resuming partial files)."""

    digest: str
    artifacts: tuple[ArtifactRef, ...]


@dataclass(frozen=True)
class Verify:
    """Check every artifact's sha256 and the bundle signature."""

    digest: str
    artifacts: tuple[ArtifactRef, ...]


@dataclass(frozen=True)
class Stage:
    """Promote the verified download to a read-only slot and load it off the frame path, with ``config``
    (a config digest; None: the config in force)."""

    digest: str
    config: str | None = None


@dataclass(frozen=True)
class StartCanary:
    digest: str


@dataclass(frozen=True)
class StartWatch:
    """Start the trial watch window for the candidate now serving. ``paired``: run the engine it replaced
    beside it; False for a config change that kept the engine (nothing else to pair it with)."""

    digest: str
    paired: bool = True


@dataclass(frozen=True)
class StopEvaluation:
    """Stop any canary or watch window running for ``digest``."""

    digest: str


@dataclass(frozen=True)
class SwapToCandidate:
    """Serve the candidate: its staged engine (or the engine serving, when its config did not change
    inference), and put its config in force."""

    digest: str
    config: str | None = None


@dataclass(frozen=True)
class SwapToCommitted:
    """Serve the committed bundle (``None``: nothing was ever committed, serve nothing) and put the
    committed config in force (``None``: the last config the device applied, if any)."""

    digest: str | None
    config: str | None = None


@dataclass(frozen=True)
class Commit:
    """The candidate is now committed, with ``config`` as the durable last applied config (None: keep it);
    slots outside ``keep`` may be reclaimed."""

    digest: str
    keep: tuple[str, ...]
    config: str | None = None


@dataclass(frozen=True)
class CommitConfig:
    """Put ``config`` in force and make it the durable last applied config at once: nothing serves, so
    there is nothing to judge it on."""

    config: str


@dataclass(frozen=True)
class DiscardCandidate:
    """Remove the candidate's slot; its partial download too unless ``keep_partial``."""

    digest: str
    keep_partial: bool


@dataclass(frozen=True)
class CollectGarbage:
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


# --- the record ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryLimits:
    """Caps on transition loops; counts live in the record so they survive restarts."""

    max_download_attempts: int = 5
    max_canary_attempts: int = 3
    # Attributable crashes (see the module docstring) before the candidate is rejected.
    max_interruptions: int = 3
    # A restart this soon after the candidate's last load, with no clean-stop marker, is its crash. Covers
    # the default canary deadline (900 s) and watch window (600 s) of a candidate loaded once.
    crash_window_s: float = 1800.0


DEFAULT_LIMITS = RetryLimits()


@dataclass(frozen=True)
class UpdateRecord:
    """Everything the device must remember about its update, persisted by the journal before any effect."""

    state: UpdateState
    entered_at: datetime
    updated_at: datetime
    committed: str | None = None
    previous: str | None = None
    candidate: str | None = None
    candidate_artifacts: tuple[ArtifactRef, ...] = ()
    candidate_since: datetime | None = None
    download_attempts: int = 0
    canary_attempts: int = 0
    interruptions: int = 0
    crashes: int = 0
    # When the candidate was last loaded (staging); a restart resuming ``canary``/``trial`` is ``resuming``.
    candidate_loaded_at: datetime | None = None
    resuming: UpdateState | None = None
    # First-install policy: why the candidate (in trial) or the committed bundle serves with degraded health.
    degraded: str | None = None
    rejected: str | None = None
    failure: str | None = None
    canary_summary: str | None = None
    # The assignment of the desired state the device acts on; (bundle, config part, assignment) of recent
    # rejections (the config part is "" when the candidate kept the committed config).
    assignment_id: str | None = None
    rejections: tuple[tuple[str, str, str], ...] = ()
    # A candidate is (bundle, config): config digests and their inference fingerprints (config_classes).
    committed_config: str | None = None
    committed_config_inference: str | None = None
    candidate_config: str | None = None
    candidate_config_inference: str | None = None
    record_version: int = field(default=RECORD_VERSION)

    def config_part(self, config: str | None) -> str:
        """How a rejection names a candidate's config: ``""`` when it is the committed one (or none)."""
        return "" if config is None or config == self.committed_config else config

    def rejected_under(self, digest: str, assignment_id: str, config: str | None = None) -> bool:
        """Whether (``digest``, ``config``) was rejected under ``assignment_id`` (then it is not retried
        under it)."""
        return (digest, self.config_part(config), assignment_id) in self.rejections

    @property
    def rejected_assignment(self) -> str | None:
        """The assignment the latest rejection (``rejected``) happened under."""
        return self.rejections[-1][2] if self.rejections else None

    @property
    def config_candidate(self) -> bool:
        """Whether the candidate in progress brings a config other than the committed one."""
        return self.candidate is not None and self.config_part(self.candidate_config) != ""

    @property
    def config_only(self) -> bool:
        """Whether the candidate is the committed bundle under another config."""
        return self.candidate is not None and self.candidate == self.committed and self.config_candidate

    @property
    def keeps_engine(self) -> bool:
        """Whether the candidate is a config change that does not change inference (no new engine)."""
        return (
            self.config_only
            and self.candidate_config_inference is not None
            and self.candidate_config_inference == self.committed_config_inference
        )

    @classmethod
    def initial(cls, now: datetime, committed: str | None = None) -> UpdateRecord:
        """A fresh ``idle`` record, optionally already serving ``committed``."""
        return cls(state=UpdateState.IDLE, entered_at=now, updated_at=now, committed=committed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_version": self.record_version,
            "state": self.state.value,
            "entered_at": self.entered_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "committed": self.committed,
            "previous": self.previous,
            "candidate": self.candidate,
            "candidate_artifacts": [a.to_dict() for a in self.candidate_artifacts],
            "candidate_since": self.candidate_since.isoformat() if self.candidate_since else None,
            "download_attempts": self.download_attempts,
            "canary_attempts": self.canary_attempts,
            "interruptions": self.interruptions,
            "crashes": self.crashes,
            "candidate_loaded_at": self.candidate_loaded_at.isoformat() if self.candidate_loaded_at else None,
            "resuming": self.resuming.value if self.resuming else None,
            "degraded": self.degraded,
            "rejected": self.rejected,
            "failure": self.failure,
            "canary_summary": self.canary_summary,
            "assignment_id": self.assignment_id,
            "rejections": [list(r) for r in self.rejections],
            "committed_config": self.committed_config,
            "committed_config_inference": self.committed_config_inference,
            "candidate_config": self.candidate_config,
            "candidate_config_inference": self.candidate_config_inference,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> UpdateRecord:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RecordFormatError(f"update record: not valid JSON ({exc}); the copy is damaged") from exc
        if not isinstance(data, dict):
            raise RecordFormatError(f"update record: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpdateRecord:
        version = data.get("record_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            readable = " or ".join(str(v) for v in READABLE_VERSIONS)
            raise RecordFormatError(
                f"update record: field 'record_version' must be {readable}, got {version!r}; "
                "this runtime cannot read records written by a newer version"
            )
        state = data.get("state")
        try:
            parsed_state = UpdateState(str(state))
        except ValueError:
            known = ", ".join(s.value for s in UpdateState)
            raise RecordFormatError(f"update record: field 'state' must be one of {known}, got {state!r}") from None
        artifacts_raw = data.get("candidate_artifacts", [])
        if not isinstance(artifacts_raw, list) or not all(isinstance(a, dict) for a in artifacts_raw):
            raise RecordFormatError(
                f"update record: field 'candidate_artifacts' must be a list of objects, got {artifacts_raw!r}"
            )
        return cls(
            record_version=RECORD_VERSION,
            state=parsed_state,
            entered_at=_time(data, "entered_at"),
            updated_at=_time(data, "updated_at"),
            committed=_optional_digest(data, "committed"),
            previous=_optional_digest(data, "previous"),
            candidate=_optional_digest(data, "candidate"),
            candidate_artifacts=tuple(ArtifactRef.from_dict(a) for a in artifacts_raw),
            candidate_since=_optional_time(data, "candidate_since"),
            download_attempts=_count(data, "download_attempts"),
            canary_attempts=_count(data, "canary_attempts"),
            interruptions=_count(data, "interruptions"),
            crashes=_count(data, "crashes"),
            candidate_loaded_at=_optional_time(data, "candidate_loaded_at"),
            resuming=_optional_state(data, "resuming"),
            degraded=_optional_str(data, "degraded"),
            rejected=_optional_digest(data, "rejected"),
            failure=_optional_str(data, "failure"),
            canary_summary=_optional_str(data, "canary_summary"),
            assignment_id=_optional_str(data, "assignment_id"),
            rejections=_rejections(data, _optional_digest(data, "rejected")),
            committed_config=_optional_digest(data, "committed_config"),
            committed_config_inference=_optional_digest(data, "committed_config_inference"),
            candidate_config=_optional_digest(data, "candidate_config"),
            candidate_config_inference=_optional_digest(data, "candidate_config_inference"),
        )


def _optional_digest(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not is_digest(value):
        raise RecordFormatError(f"update record: field {key!r} must be sha256:<64 hex> or null, got {value!r}")
    assert isinstance(value, str)
    return value


def _rejection_entry(entry: Any) -> tuple[str, str, str] | None:
    if (
        not isinstance(entry, list)
        or not all(isinstance(p, str) for p in entry)
        or not entry
        or not is_digest(entry[0])
    ):
        return None
    if len(entry) == 2:  # written before config candidates: [bundle, assignment]
        return (entry[0], "", entry[1])
    if len(entry) == 3 and (entry[1] == "" or is_digest(entry[1])):
        return (entry[0], entry[1], entry[2])
    return None


def _rejections(data: Mapping[str, Any], rejected: str | None) -> tuple[tuple[str, str, str], ...]:
    raw = data.get("rejections")
    if raw is None:
        # A version 1 record: its rejection was made before assignments existed.
        return ((rejected, "", ""),) if rejected is not None else ()
    entries = [_rejection_entry(e) for e in raw] if isinstance(raw, list) else [None]
    if any(e is None for e in entries):
        raise RecordFormatError(
            "update record: field 'rejections' must be a list of [bundle digest, config digest or '', "
            f"assignment id] entries, got {str(raw)[:200]!r}"
        )
    return tuple(e for e in entries if e is not None)


def _rejected(record: UpdateRecord) -> dict[str, Any]:
    """The record changes that reject the candidate (bundle and config) under the current assignment."""
    assert record.candidate is not None
    entry = (record.candidate, record.config_part(record.candidate_config), record.assignment_id or "")
    kept = tuple(r for r in record.rejections if r != entry)
    return {"rejected": record.candidate, "rejections": (*kept, entry)[-MAX_REJECTIONS:]}


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise RecordFormatError(f"update record: field {key!r} must be a string or null, got {value!r}")
    return value


def _count(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RecordFormatError(f"update record: field {key!r} must be an integer >= 0, got {value!r}")
    return value


def _optional_state(data: Mapping[str, Any], key: str) -> UpdateState | None:
    value = data.get(key)
    if value is None:
        return None
    try:
        return UpdateState(str(value))
    except ValueError:
        known = ", ".join(s.value for s in UpdateState)
        raise RecordFormatError(f"update record: field {key!r} must be one of {known} or null, got {value!r}") from None


def _optional_time(data: Mapping[str, Any], key: str) -> datetime | None:
    return None if data.get(key) is None else _time(data, key)


def _time(data: Mapping[str, Any], key: str) -> datetime:
    value = data.get(key)
    try:
        if not isinstance(value, str):
            raise ValueError
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RecordFormatError(f"update record: field {key!r} must be an ISO-8601 timestamp, got {value!r}") from None
    if parsed.tzinfo is None:
        raise RecordFormatError(f"update record: field {key!r} must carry a UTC offset, got {value!r}")
    return parsed


@dataclass(frozen=True)
class Decision:
    """The next record and the effects to run after journaling it; ``ignored`` says why nothing happened."""

    record: UpdateRecord
    effects: tuple[UpdateEffect, ...] = ()
    ignored: str | None = None


# --- handlers --------------------------------------------------------------------------------------------


def _go(record: UpdateRecord, state: UpdateState, now: datetime, *effects: UpdateEffect, **changes: Any) -> Decision:
    """Move to ``state`` (re-entering the same state keeps ``entered_at``) and report it."""
    entered_at = record.entered_at if state == record.state else now
    next_record = replace(record, state=state, entered_at=entered_at, updated_at=now, **changes)
    if next_record.committed is None and state != UpdateState.TRIAL and next_record.degraded is not None:
        # A first-install candidate served degraded was abandoned: nothing serves, nothing is degraded.
        next_record = replace(next_record, degraded=None)
    return Decision(record=next_record, effects=(*effects, ReportState()))


def _ignore(record: UpdateRecord, reason: str) -> Decision:
    return Decision(record=record, effects=(), ignored=reason)


def _serve_committed(record: UpdateRecord) -> SwapToCommitted:
    return SwapToCommitted(record.committed, record.committed_config)


def _stage(record: UpdateRecord) -> Stage:
    assert record.candidate is not None
    return Stage(record.candidate, record.candidate_config)


def _serve_candidate(record: UpdateRecord) -> SwapToCandidate:
    assert record.candidate is not None
    return SwapToCandidate(record.candidate, record.candidate_config)


def _watch(record: UpdateRecord) -> StartWatch:
    assert record.candidate is not None
    return StartWatch(record.candidate, paired=not record.keeps_engine)


def _keep(record: UpdateRecord, *extra: str | None) -> tuple[str, ...]:
    kept = [d for d in (record.committed, record.previous, *extra) if d is not None]
    return tuple(dict.fromkeys(kept))


def _abandon_effects(record: UpdateRecord, *, keep_partial: bool) -> tuple[UpdateEffect, ...]:
    """Effects that put the committed bundle back in charge and drop the candidate, for a live process."""
    assert record.candidate is not None
    effects: list[UpdateEffect] = []
    if record.state == UpdateState.TRIAL:
        effects.append(_serve_committed(record))
    if record.state in _EVALUATING:
        effects.append(StopEvaluation(record.candidate))
    effects.append(DiscardCandidate(record.candidate, keep_partial=keep_partial))
    return tuple(effects)


def _cancel(record: UpdateRecord, now: datetime, why: str) -> Decision:
    target = UpdateState.ROLLED_BACK if record.state in _CANDIDATE_RAN else UpdateState.IDLE
    return _go(
        record,
        target,
        now,
        *_abandon_effects(record, keep_partial=False),
        failure=f"cancelled at {record.state.value}: {why}",
    )


def _fresh_candidate(record: UpdateRecord, now: datetime, *, same: bool) -> dict[str, Any]:
    """Bookkeeping of a candidate that starts now (``same``: the candidate tried before, counts kept)."""
    return {
        "candidate_since": now,
        "download_attempts": 0,
        "canary_attempts": 0,
        "interruptions": record.interruptions if same else 0,
        "crashes": record.crashes if same else 0,
        "candidate_loaded_at": None,
        "resuming": None,
        "degraded": record.degraded if record.committed is not None else None,
        "failure": None,
        "canary_summary": None,
    }


def _start_candidate(
    record: UpdateRecord, event: DesiredBundleChanged, config: str | None, inference: str | None, now: datetime
) -> Decision:
    cleanup = _abandon_effects(record, keep_partial=False) if record.state in IN_PROGRESS else ()
    same = event.digest == record.candidate and record.state in SETTLED and event.digest != record.rejected
    return _go(
        record,
        UpdateState.DOWNLOADING,
        now,
        *cleanup,
        StartDownload(event.digest, event.artifacts),
        **{
            **_fresh_candidate(record, now, same=same),
            "candidate": event.digest,
            "candidate_artifacts": event.artifacts,
            "candidate_config": config,
            "candidate_config_inference": inference,
            "download_attempts": 1,
            "assignment_id": event.assignment_id,
        },
    )


def _start_config_candidate(
    record: UpdateRecord, config: str | None, inference: str | None, assignment_id: str, now: datetime
) -> Decision:
    """The committed bundle under a new config: canaried in shadow when the change changes inference (a
    new engine from the same slot), else put in force for a watch window (the engine is kept)."""
    bundle = record.committed
    assert bundle is not None
    cleanup = _abandon_effects(record, keep_partial=False) if record.state in IN_PROGRESS else ()
    changes: dict[str, Any] = {
        **_fresh_candidate(record, now, same=False),
        "candidate": bundle,
        "candidate_artifacts": (),
        "candidate_config": config,
        "candidate_config_inference": inference,
        "assignment_id": assignment_id,
    }
    candidate = replace(record, **changes)
    if candidate.keeps_engine:
        return _go(record, UpdateState.TRIAL, now, *cleanup, _serve_candidate(candidate), _watch(candidate), **changes)
    # The committed bundle's digest names this candidate too: the evaluator forgets the runs it had for it.
    fresh = () if StopEvaluation(bundle) in cleanup else (StopEvaluation(bundle),)
    return _go(
        record,
        UpdateState.STAGED,
        now,
        *cleanup,
        *fresh,
        _stage(candidate),
        StartCanary(bundle),
        **{**changes, "candidate_loaded_at": now},
    )


def _retarget_config(
    record: UpdateRecord, config: str | None, inference: str | None, assignment_id: str, now: datetime
) -> Decision:
    """The bundle being installed is now wanted with another config."""
    candidate = record.candidate
    assert candidate is not None
    changes: dict[str, Any] = {
        "candidate_config": config,
        "candidate_config_inference": inference,
        "assignment_id": assignment_id,
    }
    if record.state in (UpdateState.DOWNLOADING, UpdateState.VERIFYING):
        return _go(record, record.state, now, **changes)  # nothing was loaded yet: staging will use it
    # Loaded (and maybe serving) with the old config: load it again with the new one and canary that.
    retargeted = replace(record, **changes)
    back = (_serve_committed(record),) if record.state == UpdateState.TRIAL else ()
    return _go(
        record,
        UpdateState.STAGED,
        now,
        *back,
        StopEvaluation(candidate),
        _stage(retargeted),
        StartCanary(candidate),
        **changes,
        canary_attempts=0,
        candidate_loaded_at=now,
        failure=None,
    )


def _settled_state(record: UpdateRecord) -> UpdateState:
    return UpdateState.COMMITTED if record.committed is not None else UpdateState.IDLE


def _adopt_assignment(record: UpdateRecord, assignment_id: str, now: datetime) -> Decision:
    """A new assignment that names what the device already runs or installs: only the id changes.

    Settled: the outcome for this assignment is reached (``committed``; ``idle`` with nothing to run)."""
    if record.state in SETTLED:
        state = _settled_state(record)
        return _go(record, state, now, assignment_id=assignment_id, failure=record.degraded)
    return _go(record, record.state, now, assignment_id=assignment_id)


def _describe(bundle: str | None, config: str | None) -> str:
    return f"bundle {bundle or '(none)'} with config {config or '(none)'}"


def _on_desired(record: UpdateRecord, event: DesiredBundleChanged, now: datetime, limits: RetryLimits) -> Decision:
    if event.digest and not is_digest(event.digest):
        return _ignore(record, f"desired bundle digest must be sha256:<64 hex>, got {event.digest!r}")
    if event.config is not None and not is_digest(event.config):
        return _ignore(record, f"desired config digest must be sha256:<64 hex>, got {event.config!r}")
    in_progress = record.state in IN_PROGRESS
    # An empty desired bundle keeps the bundle the device runs or installs; no config keeps the config.
    bundle = event.digest or (record.candidate if in_progress else record.committed)
    config: str | None
    inference: str | None
    if event.config is not None:
        config, inference = event.config, event.config_inference
    elif in_progress and bundle == record.candidate and record.candidate_config is not None:
        config, inference = record.candidate_config, record.candidate_config_inference
    else:
        config, inference = record.committed_config, record.committed_config_inference
    new_assignment = event.assignment_id != (record.assignment_id or "")
    wanted = _describe(bundle, config)

    if bundle is None:
        # Nothing installed and no bundle assigned: a config has nothing to be judged on; it applies at once.
        if config is not None and config != record.committed_config:
            return _go(
                record,
                _settled_state(record) if new_assignment else record.state,
                now,
                CommitConfig(config),
                committed_config=config,
                committed_config_inference=inference,
                assignment_id=event.assignment_id,
            )
        if new_assignment:
            return _adopt_assignment(record, event.assignment_id, now)
        return _ignore(record, f"desired state names no bundle and no new config ({wanted})")
    if bundle == record.committed and config == record.committed_config:
        if in_progress:
            cancelled = _cancel(record, now, f"desired state is the committed {wanted} again")
            if not new_assignment:
                return cancelled
            # The new assignment asks for what serves: its outcome is reached, the old candidate's was not.
            return _go(
                cancelled.record,
                UpdateState.COMMITTED,
                now,
                *cancelled.effects[:-1],
                assignment_id=event.assignment_id,
            )
        if new_assignment:
            return _adopt_assignment(record, event.assignment_id, now)
        return _ignore(record, f"desired {wanted} is already committed")
    if in_progress and bundle == record.candidate and config == record.candidate_config:
        if new_assignment:
            return _adopt_assignment(record, event.assignment_id, now)
        return _ignore(record, f"desired {wanted} is already being installed ({record.state})")
    if record.rejected_under(bundle, event.assignment_id, config):
        return _ignore(
            record,
            f"desired {wanted} was rejected under assignment "
            f"{event.assignment_id or '(none)'} ({record.failure}); a new assignment is needed to retry it",
        )
    if bundle == record.committed:
        return _start_config_candidate(record, config, inference, event.assignment_id, now)
    if in_progress and bundle == record.candidate:
        return _retarget_config(record, config, inference, event.assignment_id, now)
    if not event.artifacts:
        return _ignore(record, f"desired bundle {bundle} lists no artifacts; cannot download it")
    bad = [a for a in event.artifacts if not is_digest(a.digest) or a.size < 0]
    if bad:
        return _ignore(record, f"desired bundle {bundle} has malformed artifacts: {bad!r}")
    return _start_candidate(record, event, config, inference, now)


def _on_cancelled(record: UpdateRecord, event: Cancelled, now: datetime, limits: RetryLimits) -> Decision:
    return _cancel(record, now, event.reason)


_LOADED: frozenset[UpdateState] = frozenset({UpdateState.STAGED, UpdateState.CANARY, UpdateState.TRIAL})


def crash_attributable(record: UpdateRecord, event: Recovered, now: datetime, limits: RetryLimits) -> bool:
    """Whether the restart ``event`` at ``now`` counts as a crash of the candidate (module docstring)."""
    if event.clean_shutdown or record.state not in _LOADED or record.candidate is None:
        return False
    loaded_at = record.candidate_loaded_at or record.entered_at
    return (now - loaded_at).total_seconds() <= limits.crash_window_s


def _on_recovered(record: UpdateRecord, event: Recovered, now: datetime, limits: RetryLimits) -> Decision:
    if record.committed_config is None and event.saved_config is not None:
        saved, inference = event.saved_config
        record = replace(record, committed_config=saved, committed_config_inference=inference)
    if record.state in SETTLED:
        keep = _keep(record, record.candidate if record.candidate != record.rejected else None)
        return _go(record, record.state, now, _serve_committed(record), CollectGarbage(keep))
    candidate = record.candidate
    assert candidate is not None
    crashed = crash_attributable(record, event, now, limits)
    crashes = record.crashes + (1 if crashed else 0)
    interruptions = record.interruptions + 1
    how = "stopped cleanly" if event.clean_shutdown else ("crashed" if crashed else "died")
    if crashes >= limits.max_interruptions:
        # Nothing is running at start-up, so there is no evaluation to stop and no candidate being served.
        return _go(
            record,
            UpdateState.ROLLED_BACK,
            now,
            _serve_committed(record),
            DiscardCandidate(candidate, keep_partial=False),
            CollectGarbage(_keep(record)),
            interruptions=interruptions,
            crashes=crashes,
            resuming=None,
            failure=(
                f"interrupted at {record.state.value}: the process crashed {crashes} times while {candidate} "
                f"was loaded or serving (max_interruptions {limits.max_interruptions}); giving up on it"
            ),
            **_rejected(record),
        )
    counted = f"; crash {crashes} of {limits.max_interruptions} counted against it" if crashed else ""
    note = f"resumed at {record.state.value} after the process {how}{counted}"
    changes: dict[str, Any] = {"interruptions": interruptions, "crashes": crashes, "failure": note}
    collect = CollectGarbage(_keep(record, candidate))
    serve = _serve_committed(record)
    if record.config_only:
        # The committed bundle under another config: its slot is the committed one, nothing to verify.
        if record.state != UpdateState.TRIAL:
            return _go(
                record,
                UpdateState.STAGED,
                now,
                serve,
                collect,
                _stage(record),
                StartCanary(candidate),
                candidate_loaded_at=now,
                **changes,
            )
        load = () if record.keeps_engine else (_stage(record),)
        return _go(
            record,
            UpdateState.TRIAL,
            now,
            serve,
            collect,
            *load,
            _serve_candidate(record),
            _watch(record),
            candidate_loaded_at=now,
            **changes,
        )
    match record.state:
        case UpdateState.DOWNLOADING:
            artifacts = record.candidate_artifacts
            return _go(record, record.state, now, serve, collect, StartDownload(candidate, artifacts), **changes)
        case UpdateState.VERIFYING:
            return _go(
                record, record.state, now, serve, collect, Verify(candidate, record.candidate_artifacts), **changes
            )
        case _:
            # staged / canary / trial: verify the slot again, then load it and resume the canary or the trial.
            resuming = UpdateState.TRIAL if record.state == UpdateState.TRIAL else UpdateState.CANARY
            return _go(
                record,
                UpdateState.VERIFYING,
                now,
                serve,
                collect,
                Verify(candidate, record.candidate_artifacts),
                resuming=resuming,
                **changes,
            )


def _on_download_completed(
    record: UpdateRecord, event: DownloadCompleted, now: datetime, limits: RetryLimits
) -> Decision:
    assert record.candidate is not None
    return _go(record, UpdateState.VERIFYING, now, Verify(record.candidate, record.candidate_artifacts))


def _on_download_failed(record: UpdateRecord, event: DownloadFailed, now: datetime, limits: RetryLimits) -> Decision:
    assert record.candidate is not None
    if record.download_attempts < limits.max_download_attempts:
        return _go(
            record,
            UpdateState.DOWNLOADING,
            now,
            StartDownload(record.candidate, record.candidate_artifacts),
            download_attempts=record.download_attempts + 1,
            failure=f"download attempt {record.download_attempts} failed: {event.reason}",
        )
    return _go(
        record,
        UpdateState.FAILED,
        now,
        DiscardCandidate(record.candidate, keep_partial=True),
        failure=f"download failed after {record.download_attempts} attempts: {event.reason}",
    )


def _on_disk_insufficient(
    record: UpdateRecord, event: DiskInsufficient, now: datetime, limits: RetryLimits
) -> Decision:
    assert record.candidate is not None
    return _go(
        record,
        UpdateState.FAILED,
        now,
        DiscardCandidate(record.candidate, keep_partial=False),
        failure=(
            f"not enough disk for {record.candidate}: needs {format_bytes(event.needed)}, "
            f"{format_bytes(event.free)} free"
        ),
    )


def _on_verification_passed(
    record: UpdateRecord, event: VerificationPassed, now: datetime, limits: RetryLimits
) -> Decision:
    candidate = record.candidate
    assert candidate is not None
    if record.resuming == UpdateState.TRIAL:
        # The canary passed before the restart (the record was in trial): serve it again and watch anew.
        return _go(
            record,
            UpdateState.TRIAL,
            now,
            _stage(record),
            _serve_candidate(record),
            _watch(record),
            candidate_loaded_at=now,
            resuming=None,
        )
    return _go(
        record,
        UpdateState.STAGED,
        now,
        _stage(record),
        StartCanary(candidate),
        candidate_loaded_at=now,
        resuming=None,
    )


def _on_verification_failed(
    record: UpdateRecord, event: VerificationFailed, now: datetime, limits: RetryLimits
) -> Decision:
    assert record.candidate is not None
    return _go(
        record,
        UpdateState.FAILED,
        now,
        DiscardCandidate(record.candidate, keep_partial=False),
        **_rejected(record),
        failure=f"verification failed: {event.reason}",
    )


def _on_canary_started(record: UpdateRecord, event: CanaryStarted, now: datetime, limits: RetryLimits) -> Decision:
    return _go(record, UpdateState.CANARY, now, canary_attempts=1)


def _first_install_trial(
    record: UpdateRecord, now: datetime, *, code: str, why: str, numbers: tuple[tuple[str, float], ...]
) -> Decision:
    """First install: serve the candidate that missed only on latency (or stayed inconclusive) in trial."""
    candidate = record.candidate
    assert candidate is not None and record.committed is None
    message = f"first install: serving {candidate} with degraded health although {why}"
    return _go(
        record,
        UpdateState.TRIAL,
        now,
        _serve_candidate(record),
        _watch(record),
        RaiseAlert(code, candidate, message, numbers),
        degraded=message,
        failure=message,
    )


def _first_install_commit(
    record: UpdateRecord, now: datetime, *, code: str, why: str, numbers: tuple[tuple[str, float], ...]
) -> Decision:
    """First install: commit the candidate serving in trial that missed only on latency, degraded."""
    candidate = record.candidate
    assert candidate is not None and record.committed is None
    message = f"first install: committed {candidate} with degraded health although {why}"
    alert = () if record.degraded else (RaiseAlert(code, candidate, message, numbers),)
    return _go(
        record,
        UpdateState.COMMITTED,
        now,
        StopEvaluation(candidate),
        Commit(candidate, keep=(candidate,), config=_target_config(record)),
        *alert,
        **_committed_changes(record, candidate, None),
        degraded=message,
        failure=message,
    )


def _on_canary_failed(record: UpdateRecord, event: CanaryFailed, now: datetime, limits: RetryLimits) -> Decision:
    assert record.candidate is not None
    if record.committed is None and (event.latency_only or event.inconclusive):
        code = "first_install.latency_miss" if event.latency_only else "first_install.inconclusive"
        return _first_install_trial(
            record, now, code=code, why=f"its canary failed: {event.reason}", numbers=event.numbers
        )
    return _go(
        record,
        UpdateState.ROLLED_BACK,
        now,
        StopEvaluation(record.candidate),
        DiscardCandidate(record.candidate, keep_partial=False),
        **_rejected(record),
        failure=f"canary failed: {event.reason}",
    )


def _on_load_failed(record: UpdateRecord, event: CandidateLoadFailed, now: datetime, limits: RetryLimits) -> Decision:
    assert record.candidate is not None
    return _go(
        record,
        UpdateState.ROLLED_BACK,
        now,
        *_abandon_effects(record, keep_partial=False),
        **_rejected(record),
        failure=f"candidate could not be loaded: {event.reason}",
    )


def _on_canary_inconclusive(
    record: UpdateRecord, event: CanaryInconclusive, now: datetime, limits: RetryLimits
) -> Decision:
    assert record.candidate is not None
    if record.canary_attempts < limits.max_canary_attempts:
        return _go(
            record,
            UpdateState.CANARY,
            now,
            StartCanary(record.candidate),
            canary_attempts=record.canary_attempts + 1,
            failure=f"canary run {record.canary_attempts} inconclusive: {event.reason}",
        )
    why = f"its canary stayed inconclusive after {record.canary_attempts} runs: {event.reason}"
    if record.committed is None:
        return _first_install_trial(record, now, code="first_install.inconclusive", why=why, numbers=())
    return _go(
        record,
        UpdateState.ROLLED_BACK,
        now,
        StopEvaluation(record.candidate),
        DiscardCandidate(record.candidate, keep_partial=False),
        failure=f"canary inconclusive after {record.canary_attempts} runs: {event.reason}",
    )


def _on_canary_passed(record: UpdateRecord, event: CanaryPassed, now: datetime, limits: RetryLimits) -> Decision:
    assert record.candidate is not None
    return _go(
        record,
        UpdateState.TRIAL,
        now,
        _serve_candidate(record),
        _watch(record),
        canary_summary=event.summary,
        failure=None,
    )


def _target_config(record: UpdateRecord) -> str | None:
    """The config the candidate brings (the committed one when it brings none)."""
    return record.candidate_config if record.candidate_config is not None else record.committed_config


def _committed_changes(record: UpdateRecord, new: str, previous: str | None) -> dict[str, Any]:
    """The record changes of committing ``new`` (with the candidate's config) over ``previous``: the
    candidate's bookkeeping is cleared."""
    brings_config = record.candidate_config is not None
    return {
        "committed": new,
        "previous": previous,
        "committed_config": _target_config(record),
        "committed_config_inference": (
            record.candidate_config_inference if brings_config else record.committed_config_inference
        ),
        "candidate_config": None,
        "candidate_config_inference": None,
        "candidate": None,
        "candidate_artifacts": (),
        "candidate_since": None,
        "download_attempts": 0,
        "canary_attempts": 0,
        "interruptions": 0,
        "crashes": 0,
        "candidate_loaded_at": None,
        "resuming": None,
    }


def _on_trial_passed(record: UpdateRecord, event: TrialPassed, now: datetime, limits: RetryLimits) -> Decision:
    assert record.candidate is not None
    new = record.candidate
    previous = record.committed if record.committed != new else record.previous
    # A first-install candidate served despite a canary miss stays degraded: its window was short.
    degraded = record.degraded if record.committed is None else None
    return _go(
        record,
        UpdateState.COMMITTED,
        now,
        Commit(new, keep=tuple(d for d in (new, previous) if d is not None), config=_target_config(record)),
        **_committed_changes(record, new, previous),
        degraded=degraded,
        failure=degraded,
    )


def _on_trial_failed(record: UpdateRecord, event: TrialFailed, now: datetime, limits: RetryLimits) -> Decision:
    assert record.candidate is not None
    if record.committed is None and event.latency_only:
        return _first_install_commit(
            record,
            now,
            code="first_install.latency_miss",
            why=f"its trial failed: {event.reason}",
            numbers=event.numbers,
        )
    return _go(
        record,
        UpdateState.ROLLED_BACK,
        now,
        *_abandon_effects(record, keep_partial=False),
        **_rejected(record),
        failure=f"trial failed: {event.reason}",
    )


Handler = Callable[[UpdateRecord, Any, datetime, RetryLimits], Decision]

_S = UpdateState

TRANSITIONS: dict[tuple[UpdateState, type[UpdateEvent]], Handler] = {
    **{(s, DesiredBundleChanged): _on_desired for s in UpdateState},
    **{(s, Recovered): _on_recovered for s in UpdateState},
    **{(s, Cancelled): _on_cancelled for s in IN_PROGRESS},
    (_S.DOWNLOADING, DownloadCompleted): _on_download_completed,
    (_S.DOWNLOADING, DownloadFailed): _on_download_failed,
    (_S.DOWNLOADING, DiskInsufficient): _on_disk_insufficient,
    (_S.VERIFYING, VerificationPassed): _on_verification_passed,
    (_S.VERIFYING, VerificationFailed): _on_verification_failed,
    (_S.STAGED, CanaryStarted): _on_canary_started,
    # Loading the candidate off the frame path can fail before the canary starts: same outcome.
    (_S.STAGED, CanaryFailed): _on_canary_failed,
    (_S.STAGED, CandidateLoadFailed): _on_load_failed,
    # A resumed trial loads its candidate in trial.
    (_S.TRIAL, CandidateLoadFailed): _on_load_failed,
    (_S.CANARY, CanaryFailed): _on_canary_failed,
    (_S.CANARY, CanaryInconclusive): _on_canary_inconclusive,
    (_S.CANARY, CanaryPassed): _on_canary_passed,
    (_S.TRIAL, TrialPassed): _on_trial_passed,
    (_S.TRIAL, TrialFailed): _on_trial_failed,
}


def decide(record: UpdateRecord, event: UpdateEvent, now: datetime, limits: RetryLimits = DEFAULT_LIMITS) -> Decision:
    """The next record and effects for ``event``; pairs outside ``TRANSITIONS`` are ignored with a reason."""
    handler = TRANSITIONS.get((record.state, type(event)))
    if handler is None:
        return _ignore(record, f"{type(event).__name__} is not expected in state {record.state.value}")
    return handler(record, event, now, limits)


def recover(
    record: UpdateRecord,
    now: datetime,
    limits: RetryLimits = DEFAULT_LIMITS,
    *,
    clean_shutdown: bool = False,
    saved_config: tuple[str, str] | None = None,
) -> Decision:
    """The start-up decision: serve the last committed bundle, resume whatever was in progress."""
    return decide(record, Recovered(clean_shutdown=clean_shutdown, saved_config=saved_config), now, limits)
