"""Hardware class comes from the enrolment record, never from what the device claims later. Pure.

``DeviceRecord.hardware_class`` (sent once, with an enrollment token) is the class every decision uses:
latency profiles are recorded under it, rollouts target and admit by it (``rollout.facts.hardware_class_of``).
A later claim that differs — the class in the device's Sync report, or in a latency profile it reports —
flags the device (``mismatch_note``: ``Device.hardware_mismatch`` in GetDevice/ListDevices, shown by
``fleetctl describe device``); such a profile is not recorded at all (``telemetry.device_events``). A
device whose hardware really changed re-enrolls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgefleet.contract.shown import shown


def claims_other_class(enrolled: str, claimed: str) -> bool:
    """Whether a claim names a class other than the enrolled one (an empty claim claims nothing)."""
    return bool(claimed) and claimed != enrolled


def reported_class(reported: Mapping[str, Any]) -> str:
    """The hardware class in a device's stored reported-state document (``state.hardware``), or ''."""
    state = reported.get("state") if isinstance(reported, Mapping) else None
    hardware = state.get("hardware") if isinstance(state, Mapping) else None
    claimed = hardware.get("hardware_class") if isinstance(hardware, Mapping) else None
    return claimed if isinstance(claimed, str) else ""


def profiled_class(payload: Mapping[str, Any]) -> str:
    """The hardware class a stored ``profile`` event's payload (``MessageToDict`` of a DeviceEvent) claims."""
    profile = payload.get("profile") if isinstance(payload, Mapping) else None
    claimed = profile.get("hardware_class") if isinstance(profile, Mapping) else None
    return claimed if isinstance(claimed, str) else ""


def mismatch_note(enrolled: str, *, reported: str = "", profiled: str = "") -> str:
    """What an operator reads when the device's claims differ from its enrolment ('' when they agree)."""
    claims = []
    if claims_other_class(enrolled, reported):
        claims.append(f"its Sync reports {shown(reported)}")
    if claims_other_class(enrolled, profiled):
        claims.append(f"its newest latency profile claims {shown(profiled)} (not recorded)")
    if not claims:
        return ""
    return (
        f"hardware class mismatch: enrolled as {shown(enrolled)} but {' and '.join(claims)}; its profiles "
        "count for the enrolled class only — re-enroll the device if its hardware changed"
    )
