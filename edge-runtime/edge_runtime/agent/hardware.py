"""The device's hardware profile: hardware class, ORT providers, cores, RAM, free disk (reported on Sync).

The hardware class comes from ``edgefleet.contract.hardware``, shared with the model pipeline and the
controller's latency admission, so profiles and devices name the same boxes the same way.
"""

from __future__ import annotations

import os
import platform
import shutil
from importlib import metadata
from pathlib import Path

import onnxruntime as ort
import psutil

from edgefleet.contract.hardware import HostFacts, classify, hardware_class, read_host_facts
from edgefleet.v1 import common_pb2

__all__ = ["HostFacts", "classify", "hardware_class", "hardware_profile", "read_host_facts"]


def _runtime_version() -> str:
    try:
        return metadata.version("edgefleet-edge-runtime")
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
