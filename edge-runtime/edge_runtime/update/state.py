"""The device's update state machine: the one ``TRANSITIONS`` table and the one pure ``decide``.

Pure core: no I/O, no clock reads (``now`` comes in), no exceptions for unexpected events. The shape follows
Mender's client: one explicit state per step, one versioned record persisted before any effect runs, one
table of transitions, loops capped by counters kept in the record. The pieces live beside this module:
``record`` (``UpdateState``, ``UpdateRecord``, ``RetryLimits``), ``events``, ``effects``, ``decision`` (the
``Decision`` and what handlers build it from) and the handlers by concern: ``desired`` (a new desired
state, a cancel), ``progress`` (download, verification, canary, trial) and ``recovery`` (a restart).

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
  What serves keeps serving until something better is proven: a new desired state (another bundle, or any
  config change, even telemetry-only) that arrives while the first-install candidate serves its trial first
  commits that candidate (its watch window cut short, ``first_install.committed_early`` alert, a degraded
  mark kept), then becomes a candidate against it as on any device, in the same decision (one journal
  write). It serves while the new candidate downloads and canaries; if that one fails the device still
  serves it (committed: there is nothing else to fall back to); a restart serves it at once.
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

from collections.abc import Callable
from datetime import datetime
from typing import Any

from edge_runtime.update.decision import Decision, ignore
from edge_runtime.update.desired import on_cancelled, on_desired
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
from edge_runtime.update.progress import (
    on_canary_failed,
    on_canary_inconclusive,
    on_canary_passed,
    on_canary_started,
    on_disk_insufficient,
    on_download_completed,
    on_download_failed,
    on_load_failed,
    on_trial_failed,
    on_trial_passed,
    on_verification_failed,
    on_verification_passed,
)
from edge_runtime.update.record import DEFAULT_LIMITS, IN_PROGRESS, RetryLimits, UpdateRecord, UpdateState
from edge_runtime.update.recovery import on_recovered

Handler = Callable[[UpdateRecord, Any, datetime, RetryLimits], Decision]

_S = UpdateState

TRANSITIONS: dict[tuple[UpdateState, type[UpdateEvent]], Handler] = {
    **{(s, DesiredBundleChanged): on_desired for s in UpdateState},
    **{(s, Recovered): on_recovered for s in UpdateState},
    **{(s, Cancelled): on_cancelled for s in IN_PROGRESS},
    (_S.DOWNLOADING, DownloadCompleted): on_download_completed,
    (_S.DOWNLOADING, DownloadFailed): on_download_failed,
    (_S.DOWNLOADING, DiskInsufficient): on_disk_insufficient,
    (_S.VERIFYING, VerificationPassed): on_verification_passed,
    (_S.VERIFYING, VerificationFailed): on_verification_failed,
    (_S.STAGED, CanaryStarted): on_canary_started,
    # Loading the candidate off the frame path can fail before the canary starts: same outcome.
    (_S.STAGED, CanaryFailed): on_canary_failed,
    (_S.STAGED, CandidateLoadFailed): on_load_failed,
    # A resumed trial loads its candidate in trial.
    (_S.TRIAL, CandidateLoadFailed): on_load_failed,
    (_S.CANARY, CanaryFailed): on_canary_failed,
    (_S.CANARY, CanaryInconclusive): on_canary_inconclusive,
    (_S.CANARY, CanaryPassed): on_canary_passed,
    (_S.TRIAL, TrialPassed): on_trial_passed,
    (_S.TRIAL, TrialFailed): on_trial_failed,
}


def decide(record: UpdateRecord, event: UpdateEvent, now: datetime, limits: RetryLimits = DEFAULT_LIMITS) -> Decision:
    """The next record and effects for ``event``; pairs outside ``TRANSITIONS`` are ignored with a reason."""
    handler = TRANSITIONS.get((record.state, type(event)))
    if handler is None:
        return ignore(record, f"{type(event).__name__} is not expected in state {record.state.value}")
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
