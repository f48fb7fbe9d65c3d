"""What ``edge-runtime status`` prints: the update journal's record and the runtime's last ``status.json``,
judged for whether the runtime that wrote it still runs.

The runtime is *running* when the pid in ``status.json`` is alive, is an edge runtime (its
``/proc/<pid>/cmdline`` names ``edge-runtime`` or ``edge_runtime``: a pid reused by another program, or a
zombie, is not) and the file is fresh: written less than ``STALE_INTERVALS`` of its own ``status_interval_s``
ago (at least ``STALE_MIN_S``). Otherwise the document says ``running: false`` with the reason and the
last-seen time, and the last status no longer claims anything live: its health becomes
``UNKNOWN (not running; last status at …)``, ``online`` false, ``serving`` null (``last_serving`` keeps the
digest). ``judge`` takes the clock and the process probe as arguments, so it is tested with plain values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edgefleet.contract.shown import shown

#: Exit code of ``edge-runtime status`` when the runtime is not running (LSB's "program is not running").
NOT_RUNNING_EXIT = 3
STALE_INTERVALS = 10
STALE_MIN_S = 5.0
DEFAULT_INTERVAL_S = 0.5
_PROGRAM_NAMES = ("edge-runtime", "edge_runtime")

#: ``pid`` → why it is not a live edge runtime, or None when it is one.
ProcessProbe = Callable[[int], str | None]


@dataclass(frozen=True)
class Liveness:
    running: bool
    #: Why it is not running; empty when it is.
    reason: str
    last_status_at: str | None


def probe_process(pid: int, proc: Path = Path("/proc")) -> str | None:
    """Why ``pid`` is not a live edge runtime, or None when it is one."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} is not alive"
    except PermissionError:
        pass  # alive, another user's
    if not proc.is_dir():
        return None  # no /proc (not Linux): the pid's liveness is all there is to know
    try:
        # "<pid> (<comm>) <state> ...": the state follows the last ')' (comm may hold anything)
        state = (proc / str(pid) / "stat").read_text(errors="replace").rpartition(")")[2].split()[0]
        args = [a.decode(errors="replace") for a in (proc / str(pid) / "cmdline").read_bytes().split(b"\0") if a]
    except FileNotFoundError:
        return f"process {pid} is not alive"
    except (OSError, IndexError):
        return None
    if state == "Z":
        return f"process {pid} has exited (a zombie not yet reaped)"
    # An empty command line is a process between fork and exec: it cannot be told from a runtime.
    if not args or any(name in arg for arg in args for name in _PROGRAM_NAMES):
        return None
    return f"pid {pid} now belongs to another program ({shown(' '.join(args))}), not an edge runtime"


def judge(status: Mapping[str, Any] | None, now: datetime, probe: ProcessProbe = probe_process) -> Liveness:
    """Whether the runtime that wrote ``status`` (the parsed ``status.json``; None when absent or
    unreadable) still runs at ``now`` (aware)."""
    if status is None:
        return Liveness(False, "no readable status.json: the runtime has not run on this data dir", None)
    at = status.get("at")
    pid = status.get("pid")
    try:
        written = datetime.fromisoformat(str(at))
        if written.tzinfo is None:  # the runtime writes UTC with its offset; a naive time cannot be compared
            raise ValueError(at)
    except ValueError:
        return Liveness(False, f"status.json has no valid 'at' time (got {shown(str(at))})", None)
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return Liveness(False, f"status.json has no valid pid (got {shown(str(pid))})", written.isoformat())
    dead = probe(pid)
    if dead is not None:
        return Liveness(False, dead, written.isoformat())
    interval = status.get("status_interval_s")
    interval_s = float(interval) if isinstance(interval, int | float) and interval > 0 else DEFAULT_INTERVAL_S
    limit = max(STALE_MIN_S, STALE_INTERVALS * interval_s)
    age = (now - written).total_seconds()
    if age > limit:
        return Liveness(
            False,
            f"process {pid} is alive but status.json is {age:.1f} s old (written every {interval_s:g} s; "
            f"stale after {limit:g} s): the runtime is hung",
            written.isoformat(),
        )
    return Liveness(True, "", written.isoformat())


def status_document(update: Mapping[str, Any], status: Mapping[str, Any] | None, liveness: Liveness) -> dict[str, Any]:
    """The JSON document ``edge-runtime status`` prints."""
    out: dict[str, Any] = {"running": liveness.running, "last_status_at": liveness.last_status_at, "update": update}
    if not liveness.running:
        out["not_running_reason"] = liveness.reason
    if status is not None:
        runtime = dict(status)
        if not liveness.running:
            runtime["health"] = f"UNKNOWN (not running; last status at {liveness.last_status_at or 'unknown'})"
            runtime["online"] = False
            runtime["last_serving"] = runtime.get("serving")
            runtime["serving"] = None
        out["runtime"] = runtime
    return out
