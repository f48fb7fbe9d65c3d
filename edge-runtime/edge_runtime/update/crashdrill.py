"""Crash drill entry point: drive an update with the directory-backed fakes and die where told.

    python -m edge_runtime.update.crashdrill --data-dir DIR --blobs BLOBS [--desired sha256:...]

Starts an ``UpdateDriver`` on ``DIR`` (journal in ``DIR/update``), recovers (an interrupted update resumes
and, with the scripted canary, finishes), prints one JSON line ``{"phase": "recovered", ...}``, then, with
``--desired``, drives that bundle (from ``BLOBS/catalog.json``) through every state and prints
``{"phase": "final", ...}``. Each line carries the record and the bundle the engine serves. A run that
reaches its end stops the driver cleanly (the clean-stop marker); a killed one does not. ``--hold-trial``:
the watch window never ends, so a candidate that reaches its trial stays there, serving.

``EDGEFLEET_CRASH_AT=<state>:<before|after>`` kills the process with SIGKILL at the first transition into
``<state>``, before or after its journal write: the closest a test can get to pulling the power cord.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from edge_runtime.update.driver import Phase, UpdateDriver
from edge_runtime.update.journal import Journal
from edge_runtime.update.record import UpdateState
from edge_runtime.update.slots import BundleSlots
from edge_runtime.update.testing import (
    DirectoryFetcher,
    ManifestVerifier,
    RecordingReporter,
    RecordingSwitcher,
    ScriptedEvaluator,
    load_catalog,
    manifests_of,
)
from edgefleet.contract.shown import shown
from edgefleet.logging import configure_logging

CRASH_ENV = "EDGEFLEET_CRASH_AT"


def parse_crash_at(value: str) -> tuple[UpdateState, Phase]:
    """``"trial:before"`` -> (UpdateState.TRIAL, "before"); raises ValueError with the accepted forms."""
    state_text, _, phase = value.partition(":")
    try:
        state = UpdateState(state_text)
    except ValueError:
        raise ValueError(
            f"{CRASH_ENV}={shown(value)}: state must be one of {', '.join(UpdateState)}, got {shown(state_text)}"
        ) from None
    if phase == "before":
        return state, "before"
    if phase == "after":
        return state, "after"
    raise ValueError(f"{CRASH_ENV}={shown(value)}: phase must be 'before' or 'after', got {shown(phase)}")


def _snapshot(phase: str, driver: UpdateDriver, switcher: RecordingSwitcher) -> str:
    return json.dumps({"phase": phase, "record": driver.record.to_dict(), "serving": switcher.serving})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_runtime.update.crashdrill")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--blobs", type=Path, required=True)
    parser.add_argument("--desired", default=None)
    parser.add_argument("--hold-trial", action="store_true", help="the watch window never ends")
    args = parser.parse_args(argv)
    configure_logging("info", json=True)

    crash_at = parse_crash_at(os.environ[CRASH_ENV]) if os.environ.get(CRASH_ENV) else None

    def boundary(before: UpdateState, after: UpdateState, phase: Phase) -> None:
        if crash_at == (after, phase) and before != after:
            os.kill(os.getpid(), signal.SIGKILL)

    catalog = load_catalog(args.blobs)
    slots = BundleSlots(args.data_dir)
    switcher = RecordingSwitcher()
    driver = UpdateDriver(
        journal=Journal(args.data_dir / "update", slots=slots),
        slots=slots,
        fetcher=DirectoryFetcher(args.blobs),
        verifier=ManifestVerifier(manifests_of(catalog.values())),
        switcher=switcher,
        evaluator=ScriptedEvaluator(watch=()) if args.hold_trial else ScriptedEvaluator(),
        reporter=RecordingReporter(),
        disk_margin_bytes=0,
        boundary_hook=boundary,
    )
    driver.start()
    print(_snapshot("recovered", driver, switcher), flush=True)
    if args.desired is not None:
        bundle = catalog.get(args.desired)
        if bundle is None:
            print(f"--desired {args.desired} is not in {args.blobs / 'catalog.json'}", file=sys.stderr)
            return 2
        driver.handle(bundle.desired())
        print(_snapshot("final", driver, switcher), flush=True)
    driver.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
