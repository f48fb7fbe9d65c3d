"""What every benchmark module shares: the row format ``python -m bench`` tabulates, and running one
module alone (``python bench/bench_x.py [--quick]``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]


def row(benchmark: str, measured: str, baseline: str, ratio: float, goal: str, ok: bool) -> Row:
    return {
        "benchmark": benchmark,
        "measured": measured,
        "baseline": baseline,
        "ratio": round(ratio, 4),
        "goal": goal,
        "ok": bool(ok),
    }


def run_alone(run: Callable[..., list[Row]], child: Callable[[str, str], None] | None = None) -> int:
    """Run one module's ``run(quick)``, print its rows; exit code 1 when a goal is missed. With ``child``,
    ``--role ROLE ARG`` runs ``child(ROLE, ARG)`` instead: the module re-executed as one of its own
    subprocesses (load generators, probes)."""
    if child is not None and len(sys.argv) >= 4 and sys.argv[1] == "--role":
        child(sys.argv[2], sys.argv[3])
        return 0
    from edgefleet.logging import configure_logging

    configure_logging("warning")
    started = time.perf_counter()
    rows = run(quick="--quick" in sys.argv[1:])
    for r in rows:
        mark = "ok  " if r["ok"] else "MISS"
        print(f"{mark} {r['benchmark']}: {r['measured']} vs {r['baseline']} (ratio {r['ratio']}, goal {r['goal']})")
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0 if all(r["ok"] for r in rows) else 1
