"""``fleetctl describe bundle``'s quarantine line, as printed (markup rendered): when, which artifact, what its
bytes hashed to, who found it, and whether it is served again or the operator must push the bundle again."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from edgefleet.v1 import fleet_pb2
from fleetctl.fleet_cmds import quarantine_line

DIGEST = "sha256:" + "a" * 64


def printed(q: fleet_pb2.QuarantinedBlob) -> str:
    console = Console(record=True, width=400, color_system=None)
    console.print(quarantine_line(q), highlight=False)
    return console.export_text().rstrip("\n")


def blob(detected_by: str, restored: bool = False) -> fleet_pb2.QuarantinedBlob:
    q = fleet_pb2.QuarantinedBlob(
        digest=DIGEST, actual_digest="sha256:" + "e" * 64, role="model", detected_by=detected_by, restored=restored
    )
    q.at.FromDatetime(datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC))
    return q


def test_a_quarantined_blob_not_yet_restored_tells_the_operator_to_push_again() -> None:
    assert printed(blob(detected_by="serve")) == (
        f"quarantined: 2026-12-02 03:04:05  model {DIGEST} hashed to eeeeeeeeeeee (found by serve); "
        "not served: push the bundle again"
    )


def test_a_restored_blob_says_so_and_device_text_is_printed_literally() -> None:
    # detected_by names a device; square brackets in it are text, not rich markup
    assert printed(blob(detected_by="device [dev-1] reporting a digest mismatch", restored=True)) == (
        f"quarantined: 2026-12-02 03:04:05  model {DIGEST} hashed to eeeeeeeeeeee "
        "(found by device [dev-1] reporting a digest mismatch); restored (pushed again)"
    )
