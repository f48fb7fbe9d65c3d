"""What a device report records against a bundle (``rollout.failures``): only outcomes tied to an assignment,
never a config-only candidate, the FAIL verdict preferred over the bare rollback for its reasons."""

from __future__ import annotations

from datetime import UTC, datetime

from edgefleet_controller.rollout.failures import failure_from_report, failure_from_rollback

X, V1 = "sha256:" + "a" * 64, "sha256:" + "b" * 64
AT = datetime(2030, 1, 1, tzinfo=UTC)
WHO = {"device_id": "dev_1", "device_name": "lab-1", "at": AT}


def rolled_back(**extra: object) -> dict[str, object]:
    return {
        "update_state": "UPDATE_STATE_ROLLED_BACK",
        "assignment_id": "ro_1/dev_1/w1",
        "candidate_bundle_digest": X,
        "running_bundle_digest": V1,
        "update_reason": "trial failed: crash 3 of 3",
        **extra,
    }


def test_a_reported_rollback_records_the_candidate_like_a_rollback_event() -> None:
    found = failure_from_report(rolled_back(), **WHO)
    assert found is not None
    assert (found.bundle_digest, found.kind, found.rollout_id, found.summary) == (
        X,
        "rolled_back",
        "ro_1",
        "trial failed: crash 3 of 3",
    )
    event = failure_from_rollback(X, "trial failed: crash 3 of 3", "ro_1/dev_1/w1", running_bundle=V1, **WHO)
    assert event == found


def test_what_records_nothing() -> None:
    assert failure_from_report(rolled_back(assignment_id=""), **WHO) is None  # no decision of ours
    assert failure_from_report(rolled_back(running_bundle_digest=X), **WHO) is None  # config-only candidate
    assert failure_from_report(rolled_back(candidate_bundle_digest="sha256:nope"), **WHO) is None
    assert failure_from_report(rolled_back(update_state="UPDATE_STATE_COMMITTED"), **WHO) is None


def test_a_fail_verdict_of_the_same_report_is_preferred_for_its_reasons() -> None:
    verdict = {
        "outcome": "OUTCOME_FAIL",
        "assignment_id": "ro_1/dev_1/w1",
        "candidate_digest": X,
        "baseline_digest": V1,
        "reasons": ["agreement 0.000 < 0.90"],
    }
    found = failure_from_report(rolled_back(last_verdict=verdict), **WHO)
    assert found is not None and (found.kind, found.summary) == ("canary_fail", "agreement 0.000 < 0.90")
