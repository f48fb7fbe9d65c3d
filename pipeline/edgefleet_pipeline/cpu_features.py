"""What the builder's CPU offers INT8 kernels: VNNI or not, and so whether ``reduce_range`` is advisable.

onnxruntime's quantization guide: on x86 without VNNI, U8S8 kernels accumulate pairs of u8×s8 products in
16 bits (``vpmaddubsw``), which can saturate; quantizing weights to 7 bits (``reduce_range=True``) avoids
it at a small accuracy cost. With VNNI (``avx512_vnni``, ``avx_vnni``) or AMX-INT8 the dot product
accumulates in 32 bits and full-range weights are safe; ARM has no such saturation.

Decisions:
- Linux ``/proc/cpuinfo`` flags are the source: no extra dependency, and it is what the kernel detected.
  The path is a parameter so tests parse sample texts; ``vnni_in_cpuinfo`` is the pure parser.
- ``None`` means "not known" (not x86, or no readable cpuinfo), and ``reduce_range_recommended`` is then
  False: reduce_range costs accuracy everywhere, and the saturation it prevents is an x86-without-VNNI fact.
"""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
#: cpuinfo flags that give 32-bit-accumulating INT8 dot products.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def vnni_in_cpuinfo(text: str) -> bool | None:
    """From a ``/proc/cpuinfo`` text: True when x86 flags include a VNNI flag, False when x86 flags do not,
    None when the text has no x86 ``flags`` line (ARM lists ``Features``)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return not VNNI_FLAGS.isdisjoint(value.split())
    return None


def cpu_has_vnni(cpuinfo: Path = CPUINFO, *, machine: str | None = None) -> bool | None:
    """Whether this x86 CPU has VNNI; None when not x86 or not known. ``machine`` defaults to
    ``platform.machine()``."""
    arch = (machine if machine is not None else platform.machine()).lower()
    if arch not in _X86_MACHINES:
        return None
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return vnni_in_cpuinfo(text)


def reduce_range_recommended(cpuinfo: Path = CPUINFO, *, machine: str | None = None) -> bool:
    """True only on x86 known to lack VNNI, where U8S8 should be quantized with ``reduce_range=True``."""
    return cpu_has_vnni(cpuinfo, machine=machine) is False
