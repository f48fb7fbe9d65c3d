"""Errors that help and leak nothing, over real gRPC: a caller's value of 120 characters, 16 KB or 1 MB in any
string field that reaches an error message comes back as a refusal (INVALID_ARGUMENT, NOT_FOUND or
FAILED_PRECONDITION, never RESOURCE_EXHAUSTED for oversized metadata) whose message is under 1 KB and shows the
value's first characters and its length; the controller's log lines for the call stay as small. Whichever layer
refuses (the wire bounds or the service behind them), the shape is the same."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from edgefleet.contract.errors import LOCATION_CHARS
from edgefleet.contract.signing import generate_keypair
from edgefleet.v1 import common_pb2, device_pb2, fleet_pb2
from edgefleet_testing.controller import Fleet, connected, publish_bundle, running_controller

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

SIZES = {"120-chars": 120, "16KB": 16_500, "1MB": 1 << 20}
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
F = fleet_pb2
#: The bundle the module's controller publishes (``publish_bundle``'s default name and version).
PUBLISHED = "classifier@1.0.0"


@dataclass(frozen=True)
class Case:
    """``request(value, token)`` puts ``value`` into one field, ``wrap(value)`` is the whole text of that field:
    the wire bounds show the field, the service behind them the value."""

    service: str  # "fleet" (admin token) or "device" (no credential)
    method: str
    request: Callable[[str, str], Any]  # (value, enrollment token) -> request
    wrap: Callable[[str], str] = lambda v: v
    whole_up_to: int = 0  # a value this short is shown whole (a manifest file name: LOCATION_CHARS)


def manifest(kind: str) -> str:
    return f"apiVersion: edgefleet.io/v1\nkind: {kind}\nmetadata: {{name: default}}\nspec: {{}}\n"


CASES: dict[str, Case] = {
    "GetBundle.ref": Case("fleet", "GetBundle", lambda v, _: F.GetBundleRequest(ref=v)),
    "GetBundle.ref name@version": Case(
        "fleet", "GetBundle", lambda v, _: F.GetBundleRequest(ref=v + "@1.0.0"), lambda v: v + "@1.0.0"
    ),
    "DeleteBundle.ref": Case("fleet", "DeleteBundle", lambda v, _: F.DeleteBundleRequest(ref=v)),
    "GetDevice.device": Case("fleet", "GetDevice", lambda v, _: F.GetDeviceRequest(device=v)),
    "GetEffectiveConfig.device": Case(
        "fleet", "GetEffectiveConfig", lambda v, _: F.GetEffectiveConfigRequest(device=v)
    ),
    "ListDeviceEvents.device": Case("fleet", "ListDeviceEvents", lambda v, _: F.ListDeviceEventsRequest(device=v)),
    "CreateEnrollmentToken.site": Case(
        "fleet", "CreateEnrollmentToken", lambda v, _: F.CreateEnrollmentTokenRequest(site=v, ttl_s=60)
    ),
    "RevokeEnrollmentToken.token_id": Case(
        "fleet", "RevokeEnrollmentToken", lambda v, _: F.RevokeEnrollmentTokenRequest(token_id=v)
    ),
    "ListDevices.tags": Case("fleet", "ListDevices", lambda v, _: F.ListDevicesRequest(tags=[v])),
    "ListDevices.page_token": Case("fleet", "ListDevices", lambda v, _: F.ListDevicesRequest(page_token=v)),
    "ListDevices.bundle": Case("fleet", "ListDevices", lambda v, _: F.ListDevicesRequest(bundle=v)),
    "ListDevices.site": Case("fleet", "ListDevices", lambda v, _: F.ListDevicesRequest(site=v)),
    "ApplyConfig.files.name": Case(
        "fleet",
        "ApplyConfig",
        lambda v, _: F.ApplyConfigRequest(files=[F.ManifestFile(name=v, content="kind: SiteConfig\n")]),
        whole_up_to=LOCATION_CHARS,
    ),
    "ApplyConfig.files.content": Case(
        "fleet",
        "ApplyConfig",
        lambda v, _: F.ApplyConfigRequest(files=[F.ManifestFile(name="site.yaml", content=manifest(v))]),
        manifest,
    ),
    "SetDesiredBundle.device": Case(
        "fleet", "SetDesiredBundle", lambda v, _: F.SetDesiredBundleRequest(device=v, bundle=PUBLISHED)
    ),
    "SetDesiredBundle.site": Case(
        "fleet", "SetDesiredBundle", lambda v, _: F.SetDesiredBundleRequest(site=v, bundle=PUBLISHED)
    ),
    "SetDesiredBundle.bundle": Case(
        "fleet", "SetDesiredBundle", lambda v, _: F.SetDesiredBundleRequest(site="site-a", bundle=v)
    ),
    "LabelReviewSample.sample_id": Case(
        "fleet", "LabelReviewSample", lambda v, _: F.LabelReviewSampleRequest(sample_id=v, label="tp")
    ),
    "LabelReviewSample.label": Case(
        "fleet", "LabelReviewSample", lambda v, _: F.LabelReviewSampleRequest(sample_id="s-1", label=v)
    ),
    "ListReviewSamples.label": Case("fleet", "ListReviewSamples", lambda v, _: F.ListReviewSamplesRequest(label=v)),
    "GetRollout.id": Case("fleet", "GetRollout", lambda v, _: F.GetRolloutRequest(id=v)),
    "PauseRollout.id": Case("fleet", "PauseRollout", lambda v, _: F.RolloutActionRequest(id=v)),
    "CreateRollout.bundle": Case("fleet", "CreateRollout", lambda v, _: F.CreateRolloutRequest(name="r", bundle=v)),
    "CreateRollout.config": Case("fleet", "CreateRollout", lambda v, _: F.CreateRolloutRequest(name="r", config=v)),
    "QueryTelemetry.group_by": Case("fleet", "QueryTelemetry", lambda v, _: F.QueryTelemetryRequest(group_by=v)),
    "QueryTelemetry.device": Case("fleet", "QueryTelemetry", lambda v, _: F.QueryTelemetryRequest(device=v)),
    "QueryTelemetry.bundle": Case("fleet", "QueryTelemetry", lambda v, _: F.QueryTelemetryRequest(bundle=v)),
    "CreateOperatorToken.role": Case(
        "fleet", "CreateOperatorToken", lambda v, _: F.CreateOperatorTokenRequest(name="n", role=v)
    ),
    "AddTrustedKey.key_id": Case(
        "fleet", "AddTrustedKey", lambda v, _: F.AddTrustedKeyRequest(key_id=v, public_key_pem="x")
    ),
    "Enroll.name": Case(
        "device",
        "Enroll",
        lambda v, token: device_pb2.EnrollRequest(
            enrollment_token=token, name=v, hardware=common_pb2.HardwareProfile(hardware_class="x86-avx2")
        ),
    ),
}


@dataclass
class Controller:
    client: Fleet
    token: str


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def controller(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Controller]:
    """One controller for the module, with a published bundle (so SetDesiredBundle gets as far as the device)."""
    work: Path = tmp_path_factory.mktemp("error-values")
    key = generate_keypair("pub")
    async with running_controller(work / "data") as ctrl, connected(ctrl) as c:
        await c.trust(key)
        await c.push(publish_bundle(work / "bundle", key))
        yield Controller(c, await c.enrollment_token("site-a", max_uses=1000))


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_an_oversized_value_is_refused_with_a_short_message_showing_its_head_and_length(
    controller: Controller, case: Case, size: int
) -> None:
    c = controller.client
    value = "zq9-" + "x" * (size - 8) + "-end"
    stub = c.fleet if case.service == "fleet" else c.device
    metadata = c.admin if case.service == "fleet" else None
    with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(stub, case.method)(case.request(value, controller.token), metadata=metadata, timeout=30)
    code, details = info.value.code(), info.value.details() or ""
    assert code in REFUSED, (code, details[:300])
    assert "metadata size" not in details and len(details.encode()) < 1024, (len(details), details[:300])
    if len(value) <= case.whole_up_to:
        assert value in details, details
    else:
        assert value[:30] in details, details
        assert any(f"({len(text)} chars)" in details for text in (value, case.wrap(value))), details
        assert "-end" not in details  # never the whole value
    logged = sum(len(repr(entry)) for entry in logs)
    assert logged < 4096, [repr(entry)[:300] for entry in logs]
