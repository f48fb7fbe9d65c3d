"""Acknowledged means durable: a real writer process is SIGKILLed at random moments, again and again.

The child appends batches and prints each acknowledged ``first last`` seq range (flushed) only after
``append_many`` returned. After each kill the parent reopens the store and checks that every acknowledged
seq is present with its payload, that the epoch did not change (a kill is not corruption) and that
sequence numbers keep increasing across the restarts.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edge_runtime.telemetry import TelemetryBuffer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from edge_runtime.telemetry.buffer import TelemetryBuffer
    from edgefleet.logging import configure_logging
    from edgefleet.v1.telemetry_pb2 import DeviceEvent, MetricWindow

    configure_logging("warning")  # logs to stderr; stdout carries only acknowledgements

    buf = TelemetryBuffer(Path(sys.argv[1]), max_bytes=256 * 1024 * 1024, review_quota_bytes=0)
    print("epoch", buf.epoch, flush=True)
    n = 0
    while True:
        bodies = [MetricWindow(bundle_digest=f"w{n + i}", frames=n + i) for i in range(19)]
        bodies.append(DeviceEvent(event_id=f"e{n}", kind=DeviceEvent.KIND_ALERT))
        n += 20
        seqs = buf.append_many(bodies)
        print(seqs[0], seqs[-1], flush=True)
    """
)

ROUNDS = 6


def _run_and_kill(path: Path, rng: random.Random, stderr_path: Path) -> tuple[str, list[tuple[int, int]]]:
    with stderr_path.open("wb") as stderr:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, stderr=stderr)
    assert child.stdout is not None
    with child.stdout:
        header = child.stdout.readline().decode().split()
        if header[:1] != ["epoch"]:
            child.kill()
            child.wait(timeout=10)
            pytest.fail(f"child did not start: {header} {stderr_path.read_text()[-2000:]}")
        # Let it acknowledge a random number of batches, then kill it at a random moment in its loop.
        seen = b"".join(child.stdout.readline() for _ in range(rng.randint(1, 40)))
        time.sleep(rng.uniform(0, 0.03))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        # Lines already written before the kill are acknowledgements too; a torn last line is not.
        rest = (seen + child.stdout.read()).decode()
    assert child.returncode == -signal.SIGKILL, stderr_path.read_text()[-2000:]
    return header[1], _ranges_from(rest)


def _ranges_from(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (ln.split() for ln in text.splitlines(keepends=True) if ln.endswith("\n"))]


def test_every_acknowledged_seq_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    rng = random.Random(20250301)
    acknowledged: list[tuple[int, int]] = []
    epochs: set[str] = set()
    last_acked = 0
    for _ in range(ROUNDS):
        epoch, ranges = _run_and_kill(path, rng, tmp_path / "child.stderr")
        epochs.add(epoch)
        assert ranges, "the child acknowledged nothing before the kill"
        assert ranges[0][0] > last_acked, "sequence numbers went backwards after a restart"
        last_acked = ranges[-1][1]
        acknowledged.extend(ranges)
    assert len(epochs) == 1, f"a SIGKILL must not reset the store, got epochs {epochs}"
    buf = TelemetryBuffer(path, max_bytes=256 * 1024 * 1024, review_quota_bytes=0)
    try:
        assert buf.reset is None
        assert buf.epoch in epochs
        held = set(buf.seqs())
        wanted = {s for first, last in acknowledged for s in range(first, last + 1)}
        assert wanted <= held, f"lost acknowledged seqs: {sorted(wanted - held)[:20]}"
        for record in buf.records(sorted(rng.sample(sorted(wanted), 200))):
            proto = record.to_proto()
            assert proto.seq == record.seq
            assert proto.WhichOneof("body") in {"metrics", "event"}
        assert buf.next_seq > max(wanted)
    finally:
        buf.close()
