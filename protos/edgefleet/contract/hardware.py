"""Hardware classes: the fleet's name for a kind of box, shared by devices, the model pipeline and the
controller's latency admission (which groups profiles and devices by it).

A Jetson is named by its device-tree model (``jetson-orin-nano``), a Raspberry Pi by its model (``rpi5``),
other arm64 boxes ``arm64``, x86 by the widest SIMD its CPU flags show (``x86-avx512``, ``x86-avx2``,
``x86-64``). ``classify`` is pure; ``read_host_facts`` reads ``/proc/cpuinfo`` and the device tree once.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path


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


def hardware_class() -> str:
    """This machine's hardware class."""
    return classify(read_host_facts())
