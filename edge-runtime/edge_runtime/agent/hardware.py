"""The device's hardware profile: hardware class, ORT providers, cores, RAM, free disk (reported on Sync).

``hardware_class`` is decided from facts read once (``HostFacts``) by the pure ``classify``: a Jetson is
named by its device-tree model (``jetson-orin-nano``), a Raspberry Pi by its model (``rpi5``), other
arm64 boxes ``arm64``, x86 by the widest SIMD its CPU flags show (``x86-avx512``, ``x86-avx2``,
``x86-64``). Latency admission on the controller groups devices by this string.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import onnxruntime as ort
import psutil

from edgefleet.v1 import common_pb2


@dataclass(frozen=True)
class HostFacts:
    machine: str
    cpu_flags: frozenset[str]
    cpu_model: str
    device_model: str


def classify(facts: HostFacts) -> str:
    """The hardware class for latency admission, from host facts (pure)."""
    model = facts.device_model.lower()
    if "jetson" in model or "nvidia" in model:
        words = re.findall(r"[a-z0-9]+", model.replace("nvidia", ""))
        words = [w for w in words if w not in ("developer", "kit", "engineering", "reference", "module")]
        return "-".join(["jetson", *[w for w in words if w != "jetson"]][:3])
    if "raspberry pi" in model:
        found = re.search(r"raspberry pi (\d+)", model)
        return f"rpi{found.group(1)}" if found else "rpi"
    if facts.machine in ("x86_64", "amd64"):
        if "avx512f" in facts.cpu_flags:
            return "x86-avx512"
        if "avx2" in facts.cpu_flags:
            return "x86-avx2"
        return "x86-64"
    if facts.machine in ("aarch64", "arm64"):
        return "arm64"
    return facts.machine or "unknown"


def read_host_facts() -> HostFacts:
    flags: set[str] = set()
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features") and not flags:
                flags.update(value.split())
            fields.setdefault(key, value.strip())
    except OSError:
        pass
    # x86 names the CPU in "model name" ("model" is a number there); ARM boards use "model" or "hardware".
    cpu_model = fields.get("model name") or fields.get("hardware") or fields.get("model") or platform.processor()
    device_model = ""
    for candidate in (Path("/proc/device-tree/model"), Path("/sys/firmware/devicetree/base/model")):
        try:
            device_model = candidate.read_text(errors="replace").strip("\x00\n ")
            break
        except OSError:
            continue
    return HostFacts(platform.machine().lower(), frozenset(flags), cpu_model, device_model)


def _runtime_version() -> str:
    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def hardware_profile(data_dir: Path, facts: HostFacts | None = None) -> common_pb2.HardwareProfile:
    """The profile to report now (free disk is read each call)."""
    facts = facts or read_host_facts()
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(facts.machine, facts.machine)
    return common_pb2.HardwareProfile(
        hardware_class=classify(facts),
        execution_providers=list(ort.get_available_providers()),
        cpu_model=facts.cpu_model,
        cpu_cores=os.cpu_count() or 1,
        ram_bytes=psutil.virtual_memory().total,
        disk_free_bytes=shutil.disk_usage(data_dir).free,
        runtime_version=_runtime_version(),
        platform=f"{platform.system().lower()}/{machine}",
    )
