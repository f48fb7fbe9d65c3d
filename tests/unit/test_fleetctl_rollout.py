"""``fleetctl rollout status`` rendering: the target (bundle and/or staged config), the overrides a forced
rollout keeps, and the per-device target config of a config rollout."""

from __future__ import annotations

from rich.console import Console

from edgefleet.v1 import fleet_pb2
from fleetctl.rollout_cmds import render, target_text

CFG = "sha256:" + "c" * 64
BUNDLE = "sha256:" + "b" * 64


def text_of(rollout: fleet_pb2.Rollout) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(render(rollout))
    return console.export_text()


def test_a_config_rollout_shows_its_staged_document_and_each_devices_target() -> None:
    rollout = fleet_pb2.Rollout(
        id="ro_1",
        name="lab-threshold",
        config="SiteConfig/lab",
        config_content_digest=CFG,
        phase=fleet_pb2.ROLLOUT_PHASE_RUNNING,
        wave=1,
        waves_total=2,
        strategy=fleet_pb2.RolloutStrategy(waves=["1", "100%"]),
        admission=["config SiteConfig/lab (staged sha256:cc…): changes the effective config of 3 selected device(s)"],
        devices=[
            fleet_pb2.DeviceRolloutStatus(
                device_id="d1", device_name="lab-1", site="lab", wave=1, status="canary", target_config_digest=CFG
            )
        ],
    )
    out = text_of(rollout)
    assert f"config SiteConfig/lab (staged {CFG[7:19]})" in out and "bundle" not in out.splitlines()[0]
    assert "changes the effective config of 3 selected device(s)" in out
    assert "CONFIG" in out and CFG[7:19] in next(line for line in out.splitlines() if "lab-1" in line)


def test_a_forced_rollout_shows_what_was_overridden() -> None:
    rollout = fleet_pb2.Rollout(
        id="ro_2",
        name="again",
        bundle_digest=BUNDLE,
        forced=True,
        admission=[
            "x86-avx2: no profile: admitted (unmeasured)",
            "failed-canary refusal overridden (forced): 1 earlier failure, newest lab-1 in rollout ro_1 …",
        ],
    )
    out = text_of(rollout)
    assert "overridden (forced): failed-canary refusal overridden (forced)" in out
    assert "admitted (unmeasured)" not in out  # only the overrides are called out
    assert target_text(rollout) == f"bundle {BUNDLE[7:19]}"
    both = fleet_pb2.Rollout(bundle_digest=BUNDLE, config="FleetConfig/default")
    assert target_text(both) == f"bundle {BUNDLE[7:19]}  config FleetConfig/default"


def test_wave_lines_tell_a_failed_device_from_one_an_operator_abort_sent_back() -> None:
    from edgefleet.v1 import common_pb2
    from fleetctl.rollout_cmds import wave_lines

    fail = common_pb2.CanaryVerdict(outcome=common_pb2.CanaryVerdict.OUTCOME_FAIL)
    base = {"phase": fleet_pb2.ROLLOUT_PHASE_ROLLED_BACK, "wave": 1, "waves_total": 2}
    strategy = fleet_pb2.RolloutStrategy(waves=["2", "100%"])
    failed = fleet_pb2.Rollout(
        **base,
        strategy=strategy,
        devices=[
            fleet_pb2.DeviceRolloutStatus(device_id="d1", wave=1, status="rolled_back", verdict=fail),
            fleet_pb2.DeviceRolloutStatus(device_id="d2", wave=1, status="rolled_back"),
            fleet_pb2.DeviceRolloutStatus(device_id="d3", status="pending"),
        ],
    )
    assert wave_lines(failed) == [
        "✗ wave 1/2 (2): 2 assigned, 0 succeeded, 1 failed, 1 reverted without a failure, 0 in flight",
        "  1 devices not yet assigned",
    ]
    aborted = fleet_pb2.Rollout(
        **base,
        strategy=strategy,
        devices=[fleet_pb2.DeviceRolloutStatus(device_id="d1", wave=1, status="rolled_back")],
    )
    assert wave_lines(aborted) == [
        "✓ wave 1/2 (2): 1 assigned, 0 succeeded, 0 failed, 1 reverted without a failure, 0 in flight"
    ]


def test_an_unknown_health_filter_is_a_clear_usage_error_before_any_call() -> None:
    from typer.testing import CliRunner

    from fleetctl.main import app

    result = CliRunner().invoke(app, ["--controller", "127.0.0.1:1", "get", "devices", "--health", "bogus"])
    assert result.exit_code == 2, result.output
    assert "--health must be one of starting, serving, degraded, failing, offline, disabled; got 'bogus'" in " ".join(
        result.output.replace("│", " ").split()
    )
