"""The update machine's assignments: a candidate carries its assignment, a rejection holds only under it."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.update.effects import DiscardCandidate, ReportState, StartDownload, SwapToCommitted
from edge_runtime.update.events import CanaryFailed, DesiredBundleChanged
from edge_runtime.update.record import UpdateRecord
from edge_runtime.update.state import decide
from edgefleet.contract.digests import is_digest
from tests.unit.update_state_cases import DIGESTS, HAPPY_NEXT, NOW, A, B, S, arts, events_strategy, record_in


def desired_under(digest: str, assignment: str) -> DesiredBundleChanged:
    return DesiredBundleChanged(digest, arts(digest), assignment)


def test_candidate_carries_its_assignment_and_rejection_remembers_it() -> None:
    started = decide(record_in(S.IDLE), desired_under(B, "as-1"), NOW).record
    assert started.assignment_id == "as-1"
    rejected = decide(replace(started, state=S.CANARY), CanaryFailed("p95 41 ms"), NOW).record
    assert (rejected.rejected, rejected.rejected_assignment, rejected.assignment_id) == (B, "as-1", "as-1")
    # The same bundle under the same assignment: not retried.
    again = decide(rejected, desired_under(B, "as-1"), NOW)
    assert again.ignored is not None and "rejected under assignment as-1" in again.ignored
    # Under a new assignment (the operator forced a re-rollout): retried from scratch.
    retried = decide(rejected, desired_under(B, "as-2"), NOW)
    assert retried.record.state == S.DOWNLOADING and retried.record.assignment_id == "as-2"
    assert retried.record.interruptions == 0
    assert retried.record.rejected_under(B, "as-1") and not retried.record.rejected_under(B, "as-2")
    assert StartDownload(B, arts(B)) in retried.effects


def test_new_assignment_of_the_committed_bundle_reports_committed_under_it() -> None:
    rolled_back = record_in(S.ROLLED_BACK, assignment_id="as-1", rejected=B, rejections=((B, "as-1"),))
    decision = decide(rolled_back, desired_under(A, "as-2"), NOW)
    assert decision.record.state == S.COMMITTED and decision.record.assignment_id == "as-2"
    assert decision.record.failure is None and decision.effects == (ReportState(),)
    assert decision.record.rejected == B  # still remembered for its own assignment
    assert decide(decision.record, desired_under(A, "as-2"), NOW).ignored is not None


def test_new_assignment_of_the_candidate_in_progress_keeps_going_under_it() -> None:
    canary = record_in(S.CANARY, assignment_id="as-1")
    decision = decide(canary, desired_under(B, "as-2"), NOW)
    assert decision.record.state == S.CANARY and decision.record.assignment_id == "as-2"
    assert decision.record.entered_at == canary.entered_at
    assert decision.effects == (ReportState(),)


def test_revert_to_the_committed_bundle_under_a_new_assignment_is_reached_at_once() -> None:
    decision = decide(record_in(S.TRIAL, assignment_id="as-1"), desired_under(A, "revert-1"), NOW)
    assert decision.record.state == S.COMMITTED and decision.record.assignment_id == "revert-1"
    assert decision.effects[0] == SwapToCommitted(A)
    assert DiscardCandidate(B, keep_partial=False) in decision.effects
    assert decision.record.committed == A and decision.record.candidate == B


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_bundle_rejected_under_an_assignment_is_never_downloaded_again_under_it(data: st.DataObject) -> None:
    record = UpdateRecord.initial(NOW, committed=A)
    rejected_under: set[tuple[str, str, str]] = set()
    assignment_events = st.builds(desired_under, st.sampled_from(DIGESTS), st.sampled_from(["", "as-1", "as-2"]))
    for i in range(data.draw(st.integers(0, 60), label="length")):
        happy = HAPPY_NEXT.get(record.state)
        choices = [events_strategy, assignment_events] + ([st.just(happy)] if happy else [])
        event = data.draw(st.one_of(*choices))
        decision = decide(record, event, NOW + timedelta(seconds=i))
        for effect in decision.effects:
            if isinstance(effect, StartDownload) and isinstance(event, DesiredBundleChanged):
                assert (effect.digest, "", event.assignment_id) not in rejected_under
        nxt = decision.record
        if decision.ignored is None and isinstance(event, DesiredBundleChanged) and is_digest(event.digest):
            assert nxt.assignment_id == event.assignment_id, "the record acts on the newest assignment"
        rejected_under.update(nxt.rejections)
        record = nxt
