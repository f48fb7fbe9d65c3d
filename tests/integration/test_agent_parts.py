"""Agent pieces on their own: hardware class, health judgement, download list, credential file, retry codes."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import grpc
import pytest

from edge_runtime.agent.agent import bundle_artifacts
from edge_runtime.agent.client import is_transient
from edge_runtime.agent.enroll import Credential, load_credential, save_credential
from edge_runtime.agent.errors import CredentialError
from edge_runtime.agent.hardware import HostFacts, classify, hardware_profile
from edge_runtime.agent.telemetry.reporter import AgentReporter
from edge_runtime.update.record import UpdateRecord, UpdateState
from edgefleet.v1 import common_pb2, telemetry_pb2

pytestmark = pytest.mark.integration


def facts(machine: str, flags: str = "", model: str = "") -> HostFacts:
    return HostFacts(machine, frozenset(flags.split()), "cpu", model)


def test_hardware_class_from_host_facts() -> None:
    assert classify(facts("x86_64", "sse4_2 avx avx2 fma")) == "x86-avx2"
    assert classify(facts("x86_64", "avx2 avx512f")) == "x86-avx512"
    assert classify(facts("x86_64", "sse2")) == "x86-64"
    assert classify(facts("aarch64", model="NVIDIA Jetson Orin Nano Developer Kit")) == "jetson-orin-nano"
    assert classify(facts("aarch64", model="Raspberry Pi 5 Model B Rev 1.0")) == "rpi5"
    assert classify(facts("aarch64")) == "arm64"


def test_hardware_profile_reports_this_host(tmp_path: Path) -> None:
    profile = hardware_profile(tmp_path)
    assert profile.cpu_cores >= 1 and profile.ram_bytes > 0 and profile.disk_free_bytes > 0
    assert "CPUExecutionProvider" in profile.execution_providers
    assert profile.hardware_class


def test_download_list_carries_manifest_and_signature_inline() -> None:
    manifest, sig = b'{"name": "x"}', b"signature"
    desired = common_pb2.DesiredState(
        bundle_digest="sha256:" + hashlib.sha256(manifest).hexdigest(),
        bundle_manifest=manifest,
        bundle_signature=sig,
        artifacts=[common_pb2.ArtifactRef(path="artifacts/model.onnx", digest="sha256:" + "b" * 64, size_bytes=7)],
    )
    refs = bundle_artifacts(desired)
    assert [r.name for r in refs] == ["bundle.json", "bundle.sig", "artifacts/model.onnx"]
    assert refs[0].digest == desired.bundle_digest and refs[0].size == len(manifest)
    assert refs[1].digest == "sha256:" + hashlib.sha256(sig).hexdigest()


def test_credential_is_written_0600_and_read_back(tmp_path: Path) -> None:
    cred = Credential("dev_1", "edc_dev_1.secret", "lab", "127.0.0.1:1", {"k": "PEM"})
    path = save_credential(tmp_path, cred)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_credential(tmp_path) == cred
    assert load_credential(tmp_path / "none") is None
    path.write_text("{not json")
    with pytest.raises(CredentialError, match=r"credential\.json"):
        load_credential(tmp_path)


class _Err(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_only_link_trouble_is_transient() -> None:
    assert is_transient(_Err(grpc.StatusCode.UNAVAILABLE))
    assert is_transient(_Err(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert is_transient(_Err(grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2"))
    assert not is_transient(_Err(grpc.StatusCode.INTERNAL, "bug in the server"))
    assert not is_transient(_Err(grpc.StatusCode.UNAUTHENTICATED))
    assert not is_transient(_Err(grpc.StatusCode.NOT_FOUND))
    assert not is_transient(ValueError("x"))


def test_reporter_stamps_verdicts_with_the_assignment_they_were_decided_under() -> None:
    from dataclasses import replace
    from datetime import UTC, datetime

    reporter = AgentReporter()
    now = datetime(2030, 1, 1, tzinfo=UTC)
    record = replace(
        UpdateRecord.initial(now, committed="sha256:" + "a" * 64),
        state=UpdateState.CANARY,
        candidate="sha256:" + "b" * 64,
        assignment_id="ro_1/w1/dev_1",
    )
    reporter.report(record)
    verdict = common_pb2.CanaryVerdict(outcome=common_pb2.CanaryVerdict.OUTCOME_FAIL, candidate_digest=record.candidate)
    reporter.report_verdict(verdict)
    assert verdict.assignment_id == "", "the caller's message is not modified"
    assert reporter.last_verdict is not None and reporter.last_verdict.assignment_id == "ro_1/w1/dev_1"
    sent = [e for e in reporter.pending() if e.kind == telemetry_pb2.DeviceEvent.KIND_CANARY_VERDICT]
    assert [e.verdict.assignment_id for e in sent] == ["ro_1/w1/dev_1"]


def test_update_events_name_the_bundle_of_their_own_transition_after_an_earlier_rollback() -> None:
    """X rolls back, then Y commits: the commit's event names Y, never the earlier rejection X."""
    from dataclasses import replace
    from datetime import UTC, datetime

    x, y, v1 = ("sha256:" + c * 64 for c in "bcd")
    now = datetime(2030, 1, 1, tzinfo=UTC)
    reporter = AgentReporter()
    serving = UpdateRecord.initial(now, committed=v1)
    trial_x = replace(serving, state=UpdateState.TRIAL, candidate=x, assignment_id="ro_1/dev/w1")
    rolled_back = replace(serving, state=UpdateState.ROLLED_BACK, rejected=x, failure="watch: drift")
    canary_y = replace(rolled_back, state=UpdateState.CANARY, candidate=y, assignment_id="ro_2/dev/w1")
    committed_y = replace(rolled_back, state=UpdateState.COMMITTED, committed=y, previous=v1)
    for record in (serving, trial_x, rolled_back, canary_y, committed_y):
        reporter.report(record)
    sent = [
        (telemetry_pb2.DeviceEvent.Kind.Name(e.kind), common_pb2.UpdateState.Name(e.to_state), e.bundle_digest)
        for e in reporter.pending(100)
        if e.kind in (telemetry_pb2.DeviceEvent.KIND_UPDATE_STATE, telemetry_pb2.DeviceEvent.KIND_ROLLBACK)
    ]
    by_state = {(kind, state): digest for kind, state, digest in sent}
    assert by_state[("KIND_UPDATE_STATE", "UPDATE_STATE_TRIAL")] == x
    assert by_state[("KIND_UPDATE_STATE", "UPDATE_STATE_ROLLED_BACK")] == x
    assert by_state[("KIND_ROLLBACK", "UPDATE_STATE_ROLLED_BACK")] == x
    assert by_state[("KIND_UPDATE_STATE", "UPDATE_STATE_CANARY")] == y
    assert by_state[("KIND_UPDATE_STATE", "UPDATE_STATE_COMMITTED")] == y
