"""``fleetctl describe device``'s download line reads what the agent reports (``ProgressSnapshot.to_dict`` in
``ReportedState.details``), through the controller's JSON round trip."""

from __future__ import annotations

from google.protobuf.json_format import MessageToDict, ParseDict

from edge_runtime.agent.download.progress import ProgressSnapshot
from edgefleet.v1 import common_pb2
from fleetctl.fleet_cmds import download_line


def test_download_line_shows_progress_rate_resets_and_chunk() -> None:
    snap = ProgressSnapshot("sha256:" + "a" * 64, 12_300_000, 30_000_000, 210_000.0, 37, 2, 64 << 10, "receiving")
    reported = common_pb2.ReportedState()
    reported.details.update({"frames_inferred": 5, "download": snap.to_dict()})
    stored = MessageToDict(reported, preserving_proto_field_name=True)  # what the controller keeps
    shown = ParseDict(stored, common_pb2.ReportedState())
    assert download_line(shown) == ("download:    12.3 of 30.0 MB (41%), 210 KB/s, 37 resets, 2 stalls, chunk 64 KiB")


def test_no_download_line_without_a_download_in_flight() -> None:
    reported = common_pb2.ReportedState()
    reported.details.update({"frames_inferred": 5})
    assert download_line(reported) is None
    assert download_line(common_pb2.ReportedState()) is None
