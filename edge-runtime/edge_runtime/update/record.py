"""The update record: what the device must remember about its update, and where it stands (``UpdateState``).

Owns the persisted shape: ``UpdateState`` (stored values never change) and the state sets the handlers
test against, ``ArtifactRef``, ``RetryLimits`` (the loop caps whose counts live in the record) and
``UpdateRecord`` with its JSON form. A change of meaning bumps ``RECORD_VERSION``; version 1 records
(before assignments) still load, the fields added since taking their defaults. Parsing raises
``RecordFormatError`` naming the field and the value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from edge_runtime.update.errors import RecordFormatError
from edgefleet.contract.digests import is_digest
from edgefleet.contract.shown import shown

RECORD_VERSION = 2
MAX_REJECTIONS = 16
# Versions this runtime reads; older ones are migrated on load (see ``UpdateRecord.from_dict``).
READABLE_VERSIONS = (1, 2)


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
CANDIDATE_RAN: frozenset[UpdateState] = frozenset({UpdateState.CANARY, UpdateState.TRIAL})
# From staged on, a canary may already be starting, so abandoning must stop it.
EVALUATING: frozenset[UpdateState] = CANDIDATE_RAN | {UpdateState.STAGED}
# The candidate is being loaded, loaded in shadow, or serving: a crash now may be its crash.
LOADED: frozenset[UpdateState] = frozenset({UpdateState.STAGED, UpdateState.CANARY, UpdateState.TRIAL})


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
            raise RecordFormatError(f"artifact: field 'name' must be a non-empty string, got {shown(name)}")
        if not is_digest(digest):
            raise RecordFormatError(
                f"artifact {shown(name)}: field 'digest' must be sha256:<64 hex>, got {shown(digest)}"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RecordFormatError(f"artifact {shown(name)}: field 'size' must be an integer >= 0, got {shown(size)}")
        assert isinstance(digest, str)
        return cls(name=name, digest=digest, size=size)


@dataclass(frozen=True)
class RetryLimits:
    """Caps on transition loops; counts live in the record so they survive restarts."""

    max_download_attempts: int = 5
    max_canary_attempts: int = 3
    # Attributable crashes (see ``edge_runtime.update.state``) before the candidate is rejected.
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
                f"update record: field 'record_version' must be {readable}, got {shown(version)}; "
                "this runtime cannot read records written by a newer version"
            )
        state = data.get("state")
        try:
            parsed_state = UpdateState(str(state))
        except ValueError:
            known = ", ".join(s.value for s in UpdateState)
            raise RecordFormatError(
                f"update record: field 'state' must be one of {known}, got {shown(state)}"
            ) from None
        artifacts_raw = data.get("candidate_artifacts", [])
        if not isinstance(artifacts_raw, list) or not all(isinstance(a, dict) for a in artifacts_raw):
            raise RecordFormatError(
                f"update record: field 'candidate_artifacts' must be a list of objects, got {shown(artifacts_raw)}"
            )
        fields = {name: read(data, name) for name, read in _FIELD_READERS}
        return cls(record_version=RECORD_VERSION, state=parsed_state, **fields)


def _optional_digest(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not is_digest(value):
        raise RecordFormatError(
            f"update record: field {shown(key)} must be sha256:<64 hex> or null, got {shown(value)}"
        )
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


def _rejections(data: Mapping[str, Any], key: str) -> tuple[tuple[str, str, str], ...]:
    rejected = _optional_digest(data, "rejected")
    raw = data.get(key)
    if raw is None:
        # A version 1 record: its rejection was made before assignments existed.
        return ((rejected, "", ""),) if rejected is not None else ()
    entries = [_rejection_entry(e) for e in raw] if isinstance(raw, list) else [None]
    if any(e is None for e in entries):
        raise RecordFormatError(
            "update record: field 'rejections' must be a list of [bundle digest, config digest or '', "
            f"assignment id] entries, got {shown(str(raw))}"
        )
    return tuple(e for e in entries if e is not None)


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise RecordFormatError(f"update record: field {shown(key)} must be a string or null, got {shown(value)}")
    return value


def _count(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RecordFormatError(f"update record: field {shown(key)} must be an integer >= 0, got {shown(value)}")
    return value


def _optional_state(data: Mapping[str, Any], key: str) -> UpdateState | None:
    value = data.get(key)
    if value is None:
        return None
    try:
        return UpdateState(str(value))
    except ValueError:
        known = ", ".join(s.value for s in UpdateState)
        raise RecordFormatError(
            f"update record: field {shown(key)} must be one of {known} or null, got {shown(value)}"
        ) from None


def _artifacts(data: Mapping[str, Any], key: str) -> tuple[ArtifactRef, ...]:
    return tuple(ArtifactRef.from_dict(a) for a in data.get(key, []))


def _optional_time(data: Mapping[str, Any], key: str) -> datetime | None:
    return None if data.get(key) is None else _time(data, key)


def _time(data: Mapping[str, Any], key: str) -> datetime:
    value = data.get(key)
    try:
        if not isinstance(value, str):
            raise ValueError
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RecordFormatError(
            f"update record: field {shown(key)} must be an ISO-8601 timestamp, got {shown(value)}"
        ) from None
    if parsed.tzinfo is None:
        raise RecordFormatError(f"update record: field {shown(key)} must carry a UTC offset, got {shown(value)}")
    return parsed


# How ``UpdateRecord.from_dict`` reads each field (after the version, the state and the artifact list's
# shape), in field order, so the first bad field is the one reported.
_FIELD_READERS: tuple[tuple[str, Callable[[Mapping[str, Any], str], Any]], ...] = (
    ("entered_at", _time),
    ("updated_at", _time),
    ("committed", _optional_digest),
    ("previous", _optional_digest),
    ("candidate", _optional_digest),
    ("candidate_artifacts", _artifacts),
    ("candidate_since", _optional_time),
    ("download_attempts", _count),
    ("canary_attempts", _count),
    ("interruptions", _count),
    ("crashes", _count),
    ("candidate_loaded_at", _optional_time),
    ("resuming", _optional_state),
    ("degraded", _optional_str),
    ("rejected", _optional_digest),
    ("failure", _optional_str),
    ("canary_summary", _optional_str),
    ("assignment_id", _optional_str),
    ("rejections", _rejections),
    ("committed_config", _optional_digest),
    ("committed_config_inference", _optional_digest),
    ("candidate_config", _optional_digest),
    ("candidate_config_inference", _optional_digest),
)
