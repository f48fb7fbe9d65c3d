"""Sensors from a fake sysfs tree and a stand-in nvidia-smi executable; missing sensors stay missing."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edge_runtime.telemetry import SensorReader, SensorSnapshot, parse_nvidia_smi
from edge_runtime.telemetry.sensors import NVIDIA_SMI_QUERY


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _jetson_like_tree(root: Path) -> None:
    thermal = root / "sys/class/thermal"
    for i, (kind, milli) in enumerate(
        [("CPU-therm", "48500"), ("GPU-therm", "51000"), ("acpitz", "40000"), ("acpitz", "41000")]
    ):
        _write(thermal / f"thermal_zone{i}/type", kind + "\n")
        _write(thermal / f"thermal_zone{i}/temp", milli + "\n")
    # A zone that exists but cannot be read (EIO on real hardware): here, garbage.
    _write(thermal / "thermal_zone4/type", "soc-thermal\n")
    _write(thermal / "thermal_zone4/temp", "\n")
    cpus = root / "sys/devices/system/cpu"
    for i, cur in enumerate(["1200000", "1400000", "1000000", "1400000"]):
        _write(cpus / f"cpu{i}/cpufreq/scaling_cur_freq", cur)
        _write(cpus / f"cpu{i}/cpufreq/cpuinfo_max_freq", "1510400")
    (cpus / "cpufreq").mkdir()  # not a cpuN directory; ignored
    _write(root / "sys/class/devfreq/17000000.ga10b/cur_freq", "306000000")
    _write(root / "sys/class/devfreq/17000000.ga10b/max_freq", "624750000")
    _write(root / "sys/class/devfreq/3d00000.pcie/cur_freq", "1")


def _by_name(snapshot: SensorSnapshot) -> dict[str, tuple[str, float, bool, float]]:
    return {r.name: (r.kind, r.value, r.missing, r.max_value) for r in snapshot.readings}


def test_reads_zones_clocks_and_igpu_from_sysfs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _jetson_like_tree(root)
    snap = SensorReader(data_dir=tmp_path, root=root, nvidia_smi=None).read()
    got = _by_name(snap)
    assert got["cpu_temp"] == ("temp_c", 48.5, False, 0.0)
    assert got["gpu_temp"] == ("temp_c", 51.0, False, 0.0)
    assert got["cpu_clock"] == ("clock_mhz", 1250.0, False, 1510.4)
    assert got["gpu_clock"] == ("clock_mhz", 306.0, False, 624.75)
    assert got["CPU-therm"] == ("temp_c", 48.5, False, 0.0)
    assert got["acpitz"][1] == 40.0
    assert got["acpitz#2"][1] == 41.0
    # Unreadable zone: reported, by name, as missing — never as 0 °C.
    assert got["soc-thermal"][2] is True
    assert got["igpu_17000000.ga10b_clock"][1] == 306.0
    assert not any(name.startswith("igpu_3d00000") for name in got)
    assert snap.memory_free_bytes > 0
    assert snap.disk_free_bytes > 0


def test_everything_missing_on_a_bare_root(tmp_path: Path) -> None:
    snap = SensorReader(data_dir=tmp_path / "not-yet-created", root=tmp_path / "empty", nvidia_smi=None).read()
    summary = {r.name: r for r in snap.readings}
    assert set(summary) == {"cpu_temp", "gpu_temp", "cpu_clock", "gpu_clock"}
    for reading in summary.values():
        assert reading.missing
        assert reading.value == 0.0  # the proto default; ``missing`` is what says "no value"
    assert summary["cpu_temp"].kind == "temp_c"
    assert summary["gpu_clock"].kind == "clock_mhz"
    # Free disk of a data dir that does not exist yet comes from its nearest existing parent.
    assert snap.disk_free_bytes > 0


def _fake_nvidia_smi(tmp_path: Path, output: str, rc: int = 0) -> Path:
    script = tmp_path / "bin/nvidia-smi"
    args_file = tmp_path / "nvidia-smi.args"
    _write(script, f"#!/bin/sh\necho \"$@\" > {args_file}\nprintf '%s' '{output}'\nexit {rc}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_nvidia_smi_gpus_are_read_and_the_slowest_clock_summarised(tmp_path: Path) -> None:
    smi = _fake_nvidia_smi(tmp_path, "45, 1980, 1980\n67, 1410, 1980\n")
    snap = SensorReader(data_dir=tmp_path, root=tmp_path / "empty", nvidia_smi=str(smi)).read()
    got = _by_name(snap)
    assert (tmp_path / "nvidia-smi.args").read_text().split() == list(NVIDIA_SMI_QUERY)
    assert got["gpu0_temp"] == ("temp_c", 45.0, False, 0.0)
    assert got["gpu1_clock"] == ("clock_mhz", 1410.0, False, 1980.0)
    assert got["gpu_temp"][1] == 67.0
    assert got["gpu_clock"][1:] == (1410.0, False, 1980.0)
    assert got["cpu_temp"][2] is True


def test_nvidia_smi_failure_leaves_gpu_missing(tmp_path: Path) -> None:
    smi = _fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed", rc=9)
    got = _by_name(SensorReader(data_dir=tmp_path, root=tmp_path, nvidia_smi=str(smi)).read())
    assert got["gpu_temp"][2] is True
    assert got["gpu_clock"][2] is True


def test_absent_nvidia_smi_binary_is_not_an_error(tmp_path: Path) -> None:
    reader = SensorReader(data_dir=tmp_path, root=tmp_path, nvidia_smi=str(tmp_path / "no-such-binary"))
    assert _by_name(reader.read())["gpu_temp"][2] is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[N/A], 1200, 1500\n", [("gpu0_temp", True, 0.0), ("gpu0_clock", False, 1200.0)]),
        ("50, [Not Supported], [Not Supported]\n", [("gpu0_temp", False, 50.0), ("gpu0_clock", True, 0.0)]),
        ("50\n", [("gpu0_temp", False, 50.0), ("gpu0_clock", True, 0.0)]),
        ("\n", []),
    ],
)
def test_parse_nvidia_smi_marks_unavailable_fields_missing(text: str, expected: list[tuple[str, bool, float]]) -> None:
    assert [(r.name, r.missing, r.value) for r in parse_nvidia_smi(text)] == expected
