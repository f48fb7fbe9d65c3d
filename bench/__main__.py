"""``make bench``: run every ``bench/bench_*.py`` module's ``run(quick)`` and print one markdown table.

Every figure is a ratio against a baseline measured in the same run (bare onnxruntime, a bare grpc.aio
server, raw SQLite), because these machines are shared and noisy. ``--quick`` shrinks the workloads;
``--only NAME`` runs one module; ``--json FILE`` also writes the rows.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", action="append", default=[], help="module name, e.g. bench_inference")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from edgefleet.logging import configure_logging

    configure_logging("warning")
    sys.path.insert(0, str(HERE))
    rows: list[dict[str, object]] = []
    failed: list[str] = []
    for name in discover():
        if args.only and name not in args.only and name.removeprefix("bench_") not in args.only:
            continue
        started = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(name)
            module_rows = module.run(quick=args.quick)
        except Exception as exc:  # a broken benchmark must not hide the others' figures
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        for row in module_rows:
            rows.append({"module": name, **row})
        print(f"  {name} done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    print("| benchmark | measured | baseline (same run) | ratio | goal | ok |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = r.get("ratio")
        ratio_text = f"{ratio:.3f}" if isinstance(ratio, float) else str(ratio)
        ok = "yes" if r.get("ok") else "**no**"
        print(f"| {r['benchmark']} | {r['measured']} | {r['baseline']} | {ratio_text} | {r['goal']} | {ok} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    for f in failed:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
