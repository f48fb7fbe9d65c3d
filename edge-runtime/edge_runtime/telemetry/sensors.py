"""Device sensors for metric windows: CPU/GPU temperatures and clocks, free memory, free disk.

Sources (all optional; a device has whichever it has):
- Thermal zones: ``<root>/sys/class/thermal/thermal_zone*/temp`` (millidegrees C) named by ``type``.
- CPU clocks: ``<root>/sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq`` and ``cpuinfo_max_freq`` (kHz).
- Integrated GPU clocks (Jetson): ``<root>/sys/class/devfreq/*`` whose name is a known NVIDIA iGPU
  (``gpu``, ``ga10b``, ``gv11b``, ``gp10b``, ``gm20b``): ``cur_freq`` / ``max_freq`` (Hz).
- Discrete GPUs: ``nvidia-smi --query-gpu=temperature.gpu,clocks.sm,clocks.max.sm`` (2 s timeout).
Jetson's ``tegrastats`` is not used: everything it prints that matters here is in the sysfs files above.

What goes on the wire, per read:
- four summary readings that are ALWAYS present, so the controller can rely on their names:
  ``cpu_temp`` (hottest CPU/SoC zone), ``gpu_temp`` (hottest GPU), ``cpu_clock`` (mean current clock over
  CPUs, ``max_value`` the highest ``cpuinfo_max_freq``) and ``gpu_clock`` (the slowest GPU's SM clock and
  its maximum); throttling shows as ``value / max_value`` dropping;
- one reading per thermal zone (named by its type, ``#2``... for repeats) and per discrete GPU
  (``gpu0_temp``, ``gpu0_clock``).
A sensor that is absent, unreadable or reports ``[N/A]`` is a reading with ``missing=True`` and its name,
never a 0 that would look like a real temperature. ``max_value`` is 0 when the maximum is unknown.

The sysfs ``root`` is injectable so tests build a fake tree in a temporary directory.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import structlog

from edgefleet.v1.telemetry_pb2 import SensorReading

log = structlog.get_logger(__name__)

TEMP_C = "temp_c"
CLOCK_MHZ = "clock_mhz"
NVIDIA_SMI_QUERY = ("--query-gpu=temperature.gpu,clocks.sm,clocks.max.sm", "--format=csv,noheader,nounits")

_CPU_ZONE = re.compile(r"cpu|x86_pkg|soc|coretemp|k10temp|tctl", re.IGNORECASE)
_GPU_ZONE = re.compile(r"gpu", re.IGNORECASE)
_IGPU_DEVFREQ = re.compile(r"(^|\.)(gpu|ga10b|gv11b|gp10b|gm20b)$", re.IGNORECASE)
_CPU_DIR = re.compile(r"^cpu(\d+)$")


def missing(name: str, kind: str) -> SensorReading:
    """A sensor this device does not have, or could not read."""
    return SensorReading(name=name, kind=kind, missing=True)


def _read_number(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        # Some zones exist but fail to read (EIO/ENODATA on sleeping sensors); that is a missing value.
        return None


def read_thermal_zones(root: Path) -> list[SensorReading]:
    """One reading per thermal zone, named by its ``type``; unreadable zones are missing."""
    base = root / "sys/class/thermal"
    zones = sorted(base.glob("thermal_zone*"), key=lambda p: (len(p.name), p.name))
    seen: dict[str, int] = {}
    out: list[SensorReading] = []
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip() or zone.name
        except OSError:
            kind = zone.name
        seen[kind] = seen.get(kind, 0) + 1
        name = kind if seen[kind] == 1 else f"{kind}#{seen[kind]}"
        millideg = _read_number(zone / "temp")
        if millideg is None:
            out.append(missing(name, TEMP_C))
        else:
            out.append(SensorReading(name=name, kind=TEMP_C, value=millideg / 1000.0))
    return out


def read_cpu_clock(root: Path) -> SensorReading:
    """Mean current CPU clock over all CPUs with cpufreq, in MHz; missing when no CPU exposes one."""
    base = root / "sys/devices/system/cpu"
    current: list[float] = []
    maxima: list[float] = []
    for cpu in base.glob("cpu*"):
        if not _CPU_DIR.match(cpu.name):
            continue
        cur = _read_number(cpu / "cpufreq/scaling_cur_freq")
        top = _read_number(cpu / "cpufreq/cpuinfo_max_freq")
        if cur is not None:
            current.append(cur / 1000.0)
        if top is not None:
            maxima.append(top / 1000.0)
    if not current:
        return missing("cpu_clock", CLOCK_MHZ)
    return SensorReading(
        name="cpu_clock",
        kind=CLOCK_MHZ,
        value=sum(current) / len(current),
        max_value=max(maxima, default=0.0),
    )


def read_igpu_clocks(root: Path) -> list[SensorReading]:
    """Integrated NVIDIA GPU clocks from devfreq (Jetson), in MHz."""
    out: list[SensorReading] = []
    for dev in sorted((root / "sys/class/devfreq").glob("*")):
        if not _IGPU_DEVFREQ.search(dev.name):
            continue
        cur = _read_number(dev / "cur_freq")
        top = _read_number(dev / "max_freq")
        name = f"igpu_{dev.name}_clock"
        if cur is None:
            out.append(missing(name, CLOCK_MHZ))
        else:
            out.append(SensorReading(name=name, kind=CLOCK_MHZ, value=cur / 1e6, max_value=(top or 0.0) / 1e6))
    return out


def _smi_value(field: str) -> float | None:
    try:
        return float(field.strip())
    except ValueError:
        # "[N/A]", "[Not Supported]", "[Unknown Error]"
        return None


def parse_nvidia_smi(text: str) -> list[SensorReading]:
    """Readings from ``nvidia-smi --query-gpu=temperature.gpu,clocks.sm,clocks.max.sm`` CSV output."""
    out: list[SensorReading] = []
    for index, line in enumerate(ln for ln in text.splitlines() if ln.strip()):
        fields = [*line.split(","), "", "", ""][:3]
        temp, clock, clock_max = (_smi_value(f) for f in fields)
        temp_name, clock_name = f"gpu{index}_temp", f"gpu{index}_clock"
        out.append(
            missing(temp_name, TEMP_C) if temp is None else SensorReading(name=temp_name, kind=TEMP_C, value=temp)
        )
        out.append(
            missing(clock_name, CLOCK_MHZ)
            if clock is None
            else SensorReading(name=clock_name, kind=CLOCK_MHZ, value=clock, max_value=clock_max or 0.0)
        )
    return out


def query_nvidia_smi(binary: str | None, timeout_s: float) -> list[SensorReading]:
    """Run ``nvidia-smi`` when it exists; no binary, a failure or a timeout gives no readings."""
    path = shutil.which(binary) if binary else None
    if path is None:
        return []
    try:
        done = subprocess.run([path, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("telemetry.nvidia_smi_failed", binary=path, error=str(exc))
        return []
    if done.returncode != 0:
        log.warning("telemetry.nvidia_smi_failed", binary=path, rc=done.returncode, stderr=done.stderr.strip()[-300:])
        return []
    return parse_nvidia_smi(done.stdout)


def _hottest(name: str, readings: Sequence[SensorReading]) -> SensorReading:
    present = [r for r in readings if not r.missing]
    if not present:
        return missing(name, TEMP_C)
    return SensorReading(name=name, kind=TEMP_C, value=max(r.value for r in present))


def summarise(
    zones: Sequence[SensorReading],
    cpu_clock: SensorReading,
    gpu_clocks: Sequence[SensorReading],
    gpu_temps: Sequence[SensorReading],
) -> list[SensorReading]:
    """The four always-present summary readings: cpu_temp, gpu_temp, cpu_clock, gpu_clock."""
    cpu_zones = [z for z in zones if _CPU_ZONE.search(z.name)]
    gpu_zones = [z for z in zones if _GPU_ZONE.search(z.name)]
    clocks = [c for c in gpu_clocks if not c.missing]
    if clocks:
        slowest = min(clocks, key=lambda c: c.value / c.max_value if c.max_value else c.value)
        gpu_clock = SensorReading(name="gpu_clock", kind=CLOCK_MHZ, value=slowest.value, max_value=slowest.max_value)
    else:
        gpu_clock = missing("gpu_clock", CLOCK_MHZ)
    return [
        _hottest("cpu_temp", cpu_zones),
        _hottest("gpu_temp", [*gpu_temps, *gpu_zones]),
        cpu_clock,
        gpu_clock,
    ]


@dataclass(frozen=True, slots=True)
class SensorSnapshot:
    """One read of every sensor, ready for ``WindowAggregator.close``."""

    readings: tuple[SensorReading, ...]
    memory_free_bytes: int
    disk_free_bytes: int

    def reading(self, name: str) -> SensorReading | None:
        """The reading called ``name``, if this snapshot has one."""
        return next((r for r in self.readings if r.name == name), None)


class SensorReader:
    """Reads the device's sensors. ``root``: sysfs root; ``nvidia_smi``: binary name/path or None."""

    def __init__(
        self,
        *,
        data_dir: Path,
        root: Path = Path("/"),
        nvidia_smi: str | None = "nvidia-smi",
        timeout_s: float = 2.0,
    ) -> None:
        self.data_dir = data_dir
        self.root = root
        self.nvidia_smi = nvidia_smi
        self.timeout_s = timeout_s

    def read(self) -> SensorSnapshot:
        """Read every sensor now; never raises for a missing sensor."""
        zones = read_thermal_zones(self.root)
        smi = query_nvidia_smi(self.nvidia_smi, self.timeout_s)
        igpu = read_igpu_clocks(self.root)
        smi_temps = [r for r in smi if r.kind == TEMP_C]
        gpu_clocks = [r for r in smi if r.kind == CLOCK_MHZ] + igpu
        summary = summarise(zones, read_cpu_clock(self.root), gpu_clocks, smi_temps)
        return SensorSnapshot(
            readings=(*summary, *zones, *smi, *igpu),
            memory_free_bytes=int(psutil.virtual_memory().available),
            disk_free_bytes=_disk_free(self.data_dir),
        )


def _disk_free(path: Path) -> int:
    # The data dir may not exist yet on first boot; its nearest existing parent is on the same filesystem.
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return int(shutil.disk_usage(probe).free)
    except OSError as exc:
        log.warning("telemetry.disk_free_failed", path=str(path), error=str(exc))
        return 0
