"""A blob corrupted on the controller's disk, end to end with a real controller process and a real
``edge-runtime`` process: the controller finds it when it is about to serve it, quarantines it (moved aside,
logged, listed by GetBundle) and refuses it with DATA_LOSS, which the device reports; the operator pushes the
bundle again and the device downloads and commits it. Then the runtime is SIGKILLed and ``edge-runtime
status`` says it is not running instead of repeating its last status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from edge_runtime.status_report import NOT_RUNNING_EXIT
from edgefleet.v1 import fleet_pb2
from edgefleet_testing.bundles import make_bundle
from edgefleet_testing.fleet import EDGE_RUNTIME, running_edge, start_controller
from edgefleet_testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def runtime_status(data_dir: Path) -> tuple[int, dict[str, object]]:
    out = subprocess.run(
        [str(EDGE_RUNTIME), "status", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=30
    )
    return out.returncode, json.loads(out.stdout)


def test_corrupt_blob_is_quarantined_refused_and_restored_by_a_push(tmp_path: Path) -> None:
    with start_controller(tmp_path / "ctl") as ctl:
        key = ctl.trust_new_key(tmp_path / "keys")
        v1 = make_bundle(tmp_path / "b1", key, version="1.0.0", seed=1)
        ctl.push(v1)
        ctl.apply_config()  # a short canary and watch window
        model = v1.artifact_digests["model"]
        blob = ctl.data_dir / "blobs" / "sha256" / model[7:9] / model[7:]
        os.chmod(blob, 0o644)
        with blob.open("r+b") as f:  # one byte flipped in place: same size, same name
            f.seek(200)
            byte = f.read(1)
            f.seek(200)
            f.write(bytes([byte[0] ^ 0xFF]))

        def bundle() -> fleet_pb2.GetBundleResponse:
            reply: fleet_pb2.GetBundleResponse = ctl.fleet.GetBundle(
                fleet_pb2.GetBundleRequest(ref=v1.digest), metadata=ctl.md, timeout=10
            )
            return reply

        data_dir = tmp_path / "dev"
        token = ctl.enrollment_token()
        with running_edge(ctl.address, data_dir, token, name="dev", extra_args=["--failed-retry-s", "600"]) as dev:
            ctl.set_desired("dev", v1.digest)
            [q] = wait_until(lambda: bundle().quarantined_blobs, 60, "the controller quarantines the blob")
            assert (q.digest, q.role, q.detected_by, q.restored) == (model, "model", "serve", False)
            assert not blob.exists() and Path(q.quarantine_path).is_file()
            quarantined = [
                json.loads(line) for line in ctl.log.read_text().splitlines() if '"blob.quarantined"' in line
            ]
            assert [e["digest"] for e in quarantined] == [model]

            # The device was refused, with the reason: it reports a failed download naming DATA_LOSS.
            def refused() -> str | None:
                events = ctl.fleet.ListDeviceEvents(
                    fleet_pb2.ListDeviceEventsRequest(device="dev", limit=100), metadata=ctl.md, timeout=10
                ).events
                return next((e.reason for e in events if "DATA_LOSS" in e.reason), None)

            reason = wait_until(refused, 60, "the device reports the refusal")
            assert model in reason and "Push the bundle again" in reason, reason
            assert dev.status()["update"]["committed"] is None  # nothing corrupt was ever installed

            code, doc = runtime_status(data_dir)
            assert (code, doc["running"]) == (0, True), doc

            # The download failed for good; a retry would wait --failed-retry-s (600 s here).
            dev.wait_for(lambda s: s["update"]["state"] == "failed", 60, "the download failed")
            # The operator pushes the bundle again: the blob is back (the reply says so), and the device is
            # handed its desired state again, so it downloads and commits at once, not after 600 s.
            revision = ctl.device("dev").desired.revision
            again = ctl.push(v1)
            assert (again.created, list(again.restored_artifacts)) == (False, [model])
            assert ctl.device("dev").desired.revision == revision + 1, "a new revision wakes the device"
            dev.committed(v1.digest, timeout=30)
            assert [(b.digest, b.restored) for b in bundle().quarantined_blobs] == [(model, True)]

            dev.proc.send_signal(signal.SIGKILL)
            assert dev.proc.wait(10) == -signal.SIGKILL
            code, doc = runtime_status(data_dir)
            assert code == NOT_RUNNING_EXIT and doc["running"] is False, doc
            runtime = doc["runtime"]
            assert isinstance(runtime, dict)
            assert runtime["health"] == f"UNKNOWN (not running; last status at {doc['last_status_at']})"
            assert runtime["online"] is False and runtime["last_serving"] == v1.digest
            assert doc["not_running_reason"] == f"process {dev.proc.pid} is not alive"
