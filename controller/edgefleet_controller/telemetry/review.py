"""The review queue: stored review samples → ``ReviewSampleInfo``, and the false-positive rate rule.

FP rate (``ListReviewSamplesResponse.fp_rate``) is per ``"site/bundle"``: labelled ``fp`` over all labelled
samples of that site and bundle, under the request's site, bundle and device filters (the label and sample
id filters and the limit only shape the listed page, not the rates). A sample is identified by its device and
its id (ids are scoped per device: ``store.review_samples``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from edgefleet.contract.request_bounds import MAX_REVIEW_SAMPLES_WITH_JPEG
from edgefleet.contract.shown import shown
from edgefleet.v1.fleet_pb2 import ListReviewSamplesRequest, ListReviewSamplesResponse, ReviewSampleInfo
from edgefleet_controller.store.review_samples import ReviewRow

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
LABEL_FILTERS = ("", "unlabeled", "tp", "fp")


class ReviewQueryError(ValueError):
    """A review request with a value the queue does not understand."""


def check_request(request: ListReviewSamplesRequest) -> int:
    """The effective limit (with ``include_jpeg`` at most ``MAX_REVIEW_SAMPLES_WITH_JPEG``, so the answer fits
    the controller's message limit); raises ``ReviewQueryError`` for an unknown label filter."""
    if request.label not in LABEL_FILTERS:
        raise ReviewQueryError(
            f"ListReviewSamples: 'label' must be one of 'unlabeled', 'tp', 'fp' or empty, got {shown(request.label)}"
        )
    limit = min(request.limit or DEFAULT_LIMIT, MAX_LIMIT)
    return min(limit, MAX_REVIEW_SAMPLES_WITH_JPEG) if request.include_jpeg else limit


def sample_info(row: ReviewRow) -> ReviewSampleInfo:
    return ReviewSampleInfo(
        sample_id=row.sample.sample_id,
        device_id=row.device_id,
        site=row.site,
        sample=row.sample,
        label=row.label,
        labeled_by=row.labeled_by,
    )


def listing(rows: Sequence[ReviewRow], fp_rate: Mapping[str, float]) -> ListReviewSamplesResponse:
    return ListReviewSamplesResponse(samples=[sample_info(r) for r in rows], fp_rate=dict(fp_rate))
