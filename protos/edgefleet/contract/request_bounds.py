"""The bound of every field a caller sends: one declarative entry per request message of DeviceService and
FleetService (and per nested message that carries caller data), and ``check(message)`` that walks a message
with it.

The controller's interceptor checks every request (each message of a client stream as it arrives) after
authentication and before the handler runs, so a request is refused whole, before any write; devices and
fleetctl may call ``check`` to refuse locally what the controller would refuse. A message type without an
entry is refused, as is a field without a spec (a new field must be given a bound here).

The kinds of spec (``Text``, ``Blob``, ``Number``, ``Enum``, ``Flag``, ``Count``, ``Nested``, ``Json``) and
the walk are in ``request_specs``, its compiled fast path in ``request_plans``; each entry also caps the
message's serialized size. Deeper semantic checks (a sketch's bins against the fleet's mapping, a token's
validity, a bundle's signature) stay with the code that owns them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from google.protobuf.message import Message

from edgefleet.contract.bundle_layout import ROLE_RE
from edgefleet.contract.digests import DIGEST_PATTERN
from edgefleet.contract.request_plans import accepts
from edgefleet.contract.request_specs import (
    MAX_REQUEST_BYTES,
    Blob,
    Bounds,
    Count,
    Enum,
    Flag,
    Json,
    Nested,
    Number,
    RequestBoundsError,
    Text,
    check_with,
)
from edgefleet.contract.sketch import BIN_KEY_MAX, BIN_KEY_MIN
from edgefleet.contract.telemetry_bounds import MAX_REVIEW_JPEG_BYTES, MAX_WINDOW_DROPPED, MAX_WINDOW_FRAMES
from edgefleet.v1 import common_pb2

KiB: Final = 1024
MiB: Final = 1024 * KiB

#: The largest answer the controller sends (gRPC ``max_send_message_length``; clients receive up to it): a
#: page of ListDevices of bounded devices, a 4 MiB blob chunk with its framing.
MAX_RESPONSE_BYTES: Final = 16 * MiB
#: The most review samples one ListReviewSamples answer with ``include_jpeg`` holds: each is at most its
#: entry's size (a JPEG of ``MAX_REVIEW_JPEG_BYTES`` + 128 KiB of fields), the answer at most
#: ``MAX_RESPONSE_BYTES`` with 1 MiB to spare (the rates, framing).
MAX_REVIEW_SAMPLES_WITH_JPEG: Final = (MAX_RESPONSE_BYTES - 1 * MiB) // (MAX_REVIEW_JPEG_BYTES + 128 * KiB)
#: FetchBlob ``chunk_bytes``: 0 asks for the controller's default, anything else must lie in this range.
FETCH_CHUNK_MIN_BYTES: Final = 4 * KiB
FETCH_CHUNK_MAX_BYTES: Final = 4 * MiB
#: Events one ReportEvent call may carry; a device with more sends several calls.
MAX_EVENTS_PER_CALL: Final = 500
#: A device's free-form ``reported.details`` (a Struct), serialized.
MAX_DETAILS_BYTES: Final = 64 * KiB
#: Reasons, summaries and other human text a caller sends.
MAX_REASON_CHARS: Final = 1 * KiB
#: Names, hardware facts and other short text (the store's column width).
MAX_SHORT_CHARS: Final = 255
#: Ids and references (device id or name, rollout id, sample id, token id).
MAX_ID_CHARS: Final = 128
#: A bearer secret (``eft_<id>.<secret>``: about 65 characters).
MAX_TOKEN_CHARS: Final = 256
#: Tags on one device or in one selector.
MAX_TAGS: Final = 64
#: Telemetry records in one batch (the device sends ``batch_max_records``, 500 by default; the manifest
#: schema's maximum for it is this).
MAX_BATCH_RECORDS: Final = 10_000
#: The most record bytes a device puts in one telemetry batch (the manifest schema's maximum for
#: ``telemetry.batch_max_bytes``; the uploader clamps to it): the request limit less 512 KiB for the batch's
#: framing (about 4 bytes a record) and its dropped ranges, at most ``MAX_BATCH_RECORDS`` of each.
MAX_TELEMETRY_BATCH_BYTES: Final = MAX_REQUEST_BYTES - 512 * KiB
#: One artifact chunk of a PushBundle stream (fleetctl sends chunks of this size): with its framing, well
#: inside one request.
MAX_PUSH_CHUNK_BYTES: Final = 1 * MiB
#: bundle.json and its signature in a PushBundle header.
MAX_MANIFEST_BYTES: Final = 1 * MiB
MAX_SIGNATURE_BYTES: Final = 16 * KiB
#: One config manifest file (ApplyConfig) and how many one call may carry.
MAX_MANIFEST_FILE_CHARS: Final = 1 * MiB
MAX_MANIFEST_FILES: Final = 1000
#: Latest time a timestamp may carry: 9999-12-31T23:59:59Z.
MAX_TIMESTAMP_S: Final = 253_402_300_799
#: Integers the store keeps (SQLite and PostgreSQL BIGINT).
MAX_STORED_INT: Final = 2**63 - 1
MAX_UINT32: Final = 2**32 - 1
#: Histogram bins of a confidence histogram; the controller checks the configured shape.
MAX_HISTOGRAM_BINS: Final = 1000
#: Bins a latency sketch can have at all (the fleet's mapping over 1 ns .. 24 h).
MAX_SKETCH_BINS: Final = BIN_KEY_MAX - BIN_KEY_MIN + 1

#: A device name (device.proto): a DNS label of at most 63 characters, lower case.
DEVICE_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: A site name, as config manifests define sites (manifest-v1 schema ``site``).
SITE_RE: Final = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")
#: A free-text name an operator gives (operator token, rollout, trusted key id): printable, so a listing
#: never renders control or bidi characters.
OPERATOR_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,127}")
#: A precision variant's name as a bundle declares it (``precision_variants`` keys: ``fp32``, ``int8-u8s8``).
PRECISION_RE: Final = ROLE_RE
#: An artifact or bundle digest.
DIGEST_RE: Final = DIGEST_PATTERN
#: A bundle reference: a digest or ``name@version`` (a DNS-label name, a SemVer-like version).
BUNDLE_REF_RE: Final = re.compile(r"sha256:[0-9a-f]{64}|[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?@[0-9A-Za-z.+-]{1,128}")


# ---------------------------------------------------------------------------------------------- table

_ID = Text(MAX_ID_CHARS)
_ID_REQUIRED = Text(MAX_ID_CHARS, allow_empty=False)
_SHORT = Text(MAX_SHORT_CHARS)
_REASON = Text(MAX_REASON_CHARS)
_DIGEST = Text(71, DIGEST_RE, hint="'sha256:' + 64 lowercase hex")
_BUNDLE_REF = Text(MAX_SHORT_CHARS, BUNDLE_REF_RE, hint="'sha256:<64 hex>' or 'name@version'")
_OPERATOR_NAME_HINT = "[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,127} (letters, digits, space and ._@:-)"
_OPERATOR_NAME = Text(128, OPERATOR_NAME_RE, hint=_OPERATOR_NAME_HINT)
_PRECISION = Text(100, PRECISION_RE, hint="[a-z0-9][a-z0-9._-]* (a precision variant's name, e.g. int8-u8s8)")
_SITE = Text(63, SITE_RE, hint="a site name (a-z, 0-9, '.', '_', '-'; 1-63, letter or digit at both ends)")
_U32 = Number(0, MAX_UINT32)
_U64 = Number(0, MAX_STORED_INT)
_REAL = Number(-1e300, 1e300)
_NONNEG = Number(0, 1e300)
#: A per-window count (frames, errors, confidence bins): what one device can produce in one window.
_WINDOW_COUNT = Number(0, MAX_WINDOW_FRAMES)
_ENUM = Enum()
#: A device's own health: HEALTH_DISABLED is the controller's word for a device an operator disabled.
_DEVICE_HEALTH = Enum(excluded=frozenset({common_pb2.HEALTH_DISABLED}))
_FLAG = Flag()
_NESTED = Nested()
_TAGS = Count(MAX_TAGS, _SHORT, key=Text(MAX_SHORT_CHARS, allow_empty=False))
_DIGESTS = Count(64, _DIGEST)
_TEXTS = Count(64, _SHORT)
_REASONS = Count(64, _REASON)

_PERCENTILES = Bounds({"p50_ms": _NONNEG, "p95_ms": _NONNEG, "p99_ms": _NONNEG, "count": _U64})
_READING = Bounds({"name": _SHORT, "kind": _SHORT, "value": _REAL, "missing": _FLAG, "max_value": _REAL})

#: Every message type a caller may send, by full name. Missing → refused.
BOUNDS: Final[Mapping[str, Bounds]] = {
    # ------------------------------------------------------------------ well-known types
    "google.protobuf.Timestamp": Bounds({"seconds": Number(0, MAX_TIMESTAMP_S), "nanos": Number(0, 999_999_999)}),
    # ------------------------------------------------------------------ common
    "edgefleet.v1.HardwareProfile": Bounds(
        {
            "hardware_class": _SHORT,
            "execution_providers": _TEXTS,
            "gpu_arch": _SHORT,
            "tensorrt_version": _SHORT,
            "cpu_model": _SHORT,
            "cpu_cores": Number(0, 65_536),
            "ram_bytes": _U64,
            "disk_free_bytes": _U64,
            "runtime_version": _SHORT,
            "platform": _SHORT,
        },
        max_bytes=16 * KiB,
    ),
    "edgefleet.v1.Percentiles": _PERCENTILES,
    "edgefleet.v1.CanaryVerdict": Bounds(
        {
            "outcome": _ENUM,
            "candidate_digest": _SHORT,
            "baseline_digest": _SHORT,
            "phase": _SHORT,
            "frames": _U64,
            "seconds": _NONNEG,
            "candidate_latency": _NESTED,
            "baseline_latency": _NESTED,
            "latency_budget_ms": _NONNEG,
            "p95_ratio": _NONNEG,
            "latency_p_value": Number(0, 1),
            "psi": _NONNEG,
            "ks_statistic": _NONNEG,
            "ks_p_value": Number(0, 1),
            "agreement": Number(0, 1),
            "errors": _U64,
            "reasons": _REASONS,
            "decided_at": _NESTED,
            "assignment_id": _ID,
            "candidate_config_digest": _SHORT,
            "baseline_config_digest": _SHORT,
            "throttling": _FLAG,
            "notes": _REASONS,
        },
        max_bytes=256 * KiB,
    ),
    "edgefleet.v1.ReportedState": Bounds(
        {
            "running_bundle_digest": _SHORT,
            "running_config_digest": _SHORT,
            "update_state": _ENUM,
            "candidate_bundle_digest": _SHORT,
            "update_reason": _REASON,
            "slot_digests": _TEXTS,
            "health": _DEVICE_HEALTH,
            "active_providers": _TEXTS,
            "last_verdict": _NESTED,
            "hardware": _NESTED,
            "details": Json(MAX_DETAILS_BYTES),
            "applied_revision": _U64,
            "assignment_id": _ID,
            "candidate_config_digest": _SHORT,
        },
        max_bytes=512 * KiB,
    ),
    # ------------------------------------------------------------------ DeviceService
    "edgefleet.v1.EnrollRequest": Bounds(
        {
            "enrollment_token": Text(MAX_TOKEN_CHARS),
            "name": Text(63, DEVICE_NAME_RE, allow_empty=False, hint="[a-z0-9][a-z0-9-]{0,62}"),
            "hardware": _NESTED,
            "tags": _TAGS,
        },
        max_bytes=64 * KiB,
        field_todo={"name": "enroll with a name of lowercase letters, digits and '-'"},
    ),
    "edgefleet.v1.SyncRequest": Bounds(
        {"known_revision": _U64, "reported": _NESTED, "wait_s": Number(0, 3600)}, max_bytes=512 * KiB
    ),
    "edgefleet.v1.FetchBlobRequest": Bounds(
        {
            "digest": _DIGEST,
            "offset": _U64,
            "chunk_bytes": Number(FETCH_CHUNK_MIN_BYTES, FETCH_CHUNK_MAX_BYTES, or_zero=True),
        },
        max_bytes=1 * KiB,
    ),
    "edgefleet.v1.ReportEventRequest": Bounds(
        {"events": Count(MAX_EVENTS_PER_CALL, _NESTED)},
        todo=f"send at most {MAX_EVENTS_PER_CALL} events per call, each within its bounds",
    ),
    # ------------------------------------------------------------------ telemetry
    "edgefleet.v1.DeviceEvent": Bounds(
        {
            "event_id": _ID,
            "kind": _ENUM,
            "bundle_digest": _SHORT,
            "from_state": _ENUM,
            "to_state": _ENUM,
            "reason": _REASON,
            "verdict": _NESTED,
            "rollout_id": _ID,
            "revision": _U64,
            "at": _NESTED,
            "numbers": Count(64, _REAL, key=_SHORT),
            "profile": _NESTED,
            "frame_gap": _NESTED,
        },
        max_bytes=256 * KiB,
    ),
    "edgefleet.v1.FrameGap": Bounds(
        {"start": _NESTED, "end": _NESTED, "frames": _U64, "frames_known": _FLAG, "cause": _REASON}
    ),
    "edgefleet.v1.LatencyProfile": Bounds(
        {
            "bundle_digest": _SHORT,
            "hardware_class": _SHORT,
            "provider": _SHORT,
            "precision": _SHORT,
            "seconds": _NONNEG,
            "frames": _U64,
            "fps": _NONNEG,
            "pre": _NESTED,
            "model": _NESTED,
            "post": _NESTED,
            "total": _NESTED,
            "sensors_before": Count(64, _NESTED),
            "sensors_after": Count(64, _NESTED),
            "source": _SHORT,
        }
    ),
    "edgefleet.v1.SensorReading": _READING,
    "edgefleet.v1.LatencySketch": Bounds(
        {
            "gamma": _REAL,
            "index_offset": _REAL,
            "contiguous_bin_counts": Count(MAX_SKETCH_BINS, _NONNEG),
            "contiguous_bin_index_offset": Number(BIN_KEY_MIN, BIN_KEY_MAX),
            "zero_count": _NONNEG,
            "count": _NONNEG,
            "sum": _REAL,
            "min": _REAL,
            "max": _REAL,
        }
    ),
    "edgefleet.v1.ConfidenceHistogram": Bounds({"counts": Count(MAX_HISTOGRAM_BINS, _WINDOW_COUNT)}),
    "edgefleet.v1.MetricWindow": Bounds(
        {
            "window_start": _NESTED,
            "window_s": _NONNEG,
            "bundle_digest": _SHORT,
            "frames": _WINDOW_COUNT,
            "errors": _WINDOW_COUNT,
            "latency_e2e": _NESTED,
            "latency_model": _NESTED,
            "confidence": _NESTED,
            "detections_per_frame": _NONNEG,
            "sensors": Count(64, _NESTED),
            "memory_free_bytes": _U64,
            "disk_free_bytes": _U64,
            "dropped": Count(64, Number(0, MAX_WINDOW_DROPPED), key=_SHORT),
            "provider": _SHORT,
            "precision": _PRECISION,
        }
    ),
    "edgefleet.v1.ReviewSample": Bounds(
        {
            "sample_id": _ID,
            "bundle_digest": _SHORT,
            "captured_at": _NESTED,
            "reason": _REASON,
            "top_confidence": Number(0, 1),
            "jpeg": Blob(MAX_REVIEW_JPEG_BYTES),
            "results_json": Text(64 * KiB),
        },
        max_bytes=MAX_REVIEW_JPEG_BYTES + 128 * KiB,  # MAX_REVIEW_SAMPLES_WITH_JPEG counts on this
    ),
    "edgefleet.v1.TelemetryRecord": Bounds({"seq": _U64, "metrics": _NESTED, "event": _NESTED, "review": _NESTED}),
    "edgefleet.v1.SeqRange": Bounds({"first": _U64, "last": _U64}),
    "edgefleet.v1.TelemetryBatch": Bounds(
        {
            "epoch": _ID,
            "first_seq": _U64,
            "last_seq": _U64,
            "records": Count(MAX_BATCH_RECORDS, _NESTED),
            "dropped": Count(MAX_BATCH_RECORDS, _NESTED),
        }
    ),
    # ------------------------------------------------------------------ FleetService: bundles
    "edgefleet.v1.PushBundleRequest": Bounds({"header": _NESTED, "chunk": _NESTED}),
    "edgefleet.v1.BundleHeader": Bounds({"manifest": Blob(MAX_MANIFEST_BYTES), "signature": Blob(MAX_SIGNATURE_BYTES)}),
    "edgefleet.v1.ArtifactChunk": Bounds({"digest": _DIGEST, "data": Blob(MAX_PUSH_CHUNK_BYTES)}),
    "edgefleet.v1.ListBundlesRequest": Bounds({"name": Text(63)}),
    "edgefleet.v1.GetBundleRequest": Bounds({"ref": _BUNDLE_REF}),
    "edgefleet.v1.DeleteBundleRequest": Bounds({"ref": _BUNDLE_REF}),
    # ------------------------------------------------------------------ configs
    "edgefleet.v1.ApplyConfigRequest": Bounds(
        {"files": Count(MAX_MANIFEST_FILES, _NESTED), "dry_run": _FLAG, "stage": _FLAG}
    ),
    "edgefleet.v1.ManifestFile": Bounds({"name": Text(1 * KiB), "content": Text(MAX_MANIFEST_FILE_CHARS)}),
    "edgefleet.v1.GetEffectiveConfigRequest": Bounds({"device": _ID}),
    "edgefleet.v1.SetDesiredBundleRequest": Bounds({"device": _ID, "site": _SITE, "bundle": _BUNDLE_REF}),
    # ------------------------------------------------------------------ rollouts
    "edgefleet.v1.RolloutSelector": Bounds({"sites": Count(1000, _SITE), "tags": _TAGS}),
    "edgefleet.v1.RolloutStrategy": Bounds({"waves": Count(100, _SHORT), "bake_s": _U32, "max_parallel": _U32}),
    "edgefleet.v1.RolloutGates": Bounds(
        {"max_failed_ratio": Number(0, 1), "inconclusive_limit": _U32, "manual_approval": _FLAG}
    ),
    "edgefleet.v1.CreateRolloutRequest": Bounds(
        {
            "name": _OPERATOR_NAME,
            "bundle": _BUNDLE_REF,
            "config": _SHORT,
            "selector": _NESTED,
            "strategy": _NESTED,
            "gates": _NESTED,
            "on_abort": _SHORT,
            "force": _FLAG,
        },
        max_bytes=256 * KiB,
    ),
    "edgefleet.v1.GetRolloutRequest": Bounds({"id": _ID}),
    "edgefleet.v1.ListRolloutsRequest": Bounds({"phases": Count(16, _ENUM)}),
    "edgefleet.v1.RolloutActionRequest": Bounds({"id": _ID, "reason": _REASON}),
    # ------------------------------------------------------------------ devices
    "edgefleet.v1.ListDevicesRequest": Bounds(
        {
            "site": _SITE,
            "tags": Count(MAX_TAGS, Text(2 * MAX_SHORT_CHARS + 1)),
            "bundle": _SHORT,
            "health": _ENUM,
            "seen_since": _NESTED,
            "page_size": _U32,
            "page_token": Text(1 * KiB),
        }
    ),
    "edgefleet.v1.GetDeviceRequest": Bounds({"device": _ID}),
    "edgefleet.v1.ListSitesRequest": Bounds({}),
    "edgefleet.v1.WatchFleetRequest": Bounds({"site": _SITE, "snapshot": _FLAG}),
    "edgefleet.v1.ListDeviceEventsRequest": Bounds({"device": _ID, "limit": _U32}),
    # ------------------------------------------------------------------ telemetry queries, review, profiles
    "edgefleet.v1.QueryTelemetryRequest": Bounds(
        {
            "group_by": Text(16),
            "site": _SITE,
            "device": _ID,
            "bundle": _DIGEST,
            "since": _NESTED,
            "until": _NESTED,
            "by_precision": _FLAG,
        }
    ),
    "edgefleet.v1.ListReviewSamplesRequest": Bounds(
        {
            "site": _SITE,
            "bundle": _DIGEST,
            "label": Text(63),
            "limit": _U32,
            "include_jpeg": _FLAG,
            "device": _ID,
            "sample_id": _ID,
        }
    ),
    "edgefleet.v1.LabelReviewSampleRequest": Bounds({"sample_id": _ID_REQUIRED, "label": Text(63), "device": _ID}),
    "edgefleet.v1.ListProfilesRequest": Bounds({"bundles": Count(100, _BUNDLE_REF), "hardware_class": _SHORT}),
    # ------------------------------------------------------------------ tokens and keys
    "edgefleet.v1.CreateEnrollmentTokenRequest": Bounds(
        {"site": Text(63, SITE_RE, allow_empty=False, hint=_SITE.hint), "ttl_s": _U32, "max_uses": _U32},
        field_todo={"site": "name the site the token enrolls into, e.g. --site warehouse-a"},
    ),
    "edgefleet.v1.RevokeEnrollmentTokenRequest": Bounds({"token_id": _ID}),
    "edgefleet.v1.CreateOperatorTokenRequest": Bounds(
        {
            "name": Text(128, OPERATOR_NAME_RE, allow_empty=False, hint=_OPERATOR_NAME_HINT),
            "role": Text(16),
            "ttl_s": _U32,
            "no_expiry": _FLAG,
        },
        field_todo={"name": "name who or what uses the token, e.g. --name ci-deploy"},
    ),
    "edgefleet.v1.AddTrustedKeyRequest": Bounds({"key_id": _OPERATOR_NAME, "public_key_pem": Text(16 * KiB)}),
    "edgefleet.v1.ListTrustedKeysRequest": Bounds({}),
    "edgefleet.v1.ListOperatorTokensRequest": Bounds({}),
    "edgefleet.v1.RevokeOperatorTokenRequest": Bounds({"token_id": _ID, "allow_last_admin": _FLAG}),
    # ------------------------------------------------------------------ device lifecycle, telemetry admin
    "edgefleet.v1.DeviceActionRequest": Bounds({"device": _ID}),
    "edgefleet.v1.DeleteTelemetryRequest": Bounds({"device": _ID, "since": _NESTED, "until": _NESTED}),
}


def check(message: Message) -> None:
    """Raise ``RequestBoundsError`` for the first field of ``message`` that breaks its bound (or when its
    type has no entry in ``BOUNDS``); return None when every field is within bounds. The compiled plans of
    ``request_plans`` accept a request in bounds; anything else goes through the walk, which names the field."""
    if not accepts(BOUNDS, message):
        check_with(BOUNDS, message)


__all__ = [
    "BOUNDS",
    "MAX_REQUEST_BYTES",
    "Blob",
    "Bounds",
    "Count",
    "Enum",
    "Flag",
    "Json",
    "Nested",
    "Number",
    "RequestBoundsError",
    "Text",
    "check",
]
