"""Benchmark of downloads over a bad link: what resets cost the adaptive ``BlobFetcher``.

``run(quick=False) -> list[dict]``; ``python bench/bench_download.py [--quick]`` prints the rows.

A real in-process gRPC ``DeviceService`` (``edgefleet_testing.blobserver``) serves one random artifact to the
real ``BlobFetcher`` with default flags (``--chunk-bytes`` 1 MiB) through the fault proxy, twice in the same
run, alternating rounds, both capped at 32 Mbit/s (a link, not loopback, is the limit):

- **baseline, clean link**: the proxy forwards everything;
- **resets every 256 KiB**: the proxy resets each connection after 256 KiB downstream (the issue's link).

Rows: the bytes re-sent per reset, counted by the proxy ((bytes down − artifact size) / resets), against the
1 MiB a fixed chunk loses per reset (goal: <= 64 KiB, a 16th); and the download rate through resets against
the clean link's (goal: >= 0.6 of it: the re-sent bytes, plus a new TCP connection and HTTP/2 handshake per
reset).
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchlib import row, run_alone  # noqa: E402

from edge_runtime.agent.download.fetcher import DEFAULT_CHUNK_BYTES, BlobFetcher  # noqa: E402
from edgefleet_testing.blobserver import BlobServer  # noqa: E402
from edgefleet_testing.faultproxy import FaultProxy  # noqa: E402

RESET_EVERY = 256 << 10
CAP_BYTES_PER_S = 4_000_000  # bytes/s, per direction


def _round(server: BlobServer, digest: str, size: int, work: Path, reset_every: int) -> tuple[float, float, int]:
    """One download from scratch: (MB/s, bytes re-sent per reset, resets)."""
    with FaultProxy(server.port) as proxy:
        proxy.reset_every_bytes = reset_every
        proxy.bandwidth_bytes_per_s = CAP_BYTES_PER_S
        fetcher = BlobFetcher(proxy.address, lambda: ())
        dest = work / f"blob-{time.monotonic_ns()}"
        started = time.perf_counter()
        fetcher.fetch(digest, dest, size, 0)
        elapsed = time.perf_counter() - started
        fetcher.close()
        assert dest.stat().st_size == size
        dest.unlink()
        resets = proxy.stats.resets
        resent = (proxy.stats.bytes_down - size) / resets if resets else 0.0
        return size / elapsed / 1e6, resent, resets


def run(quick: bool = False) -> list[dict[str, Any]]:
    size, rounds = (8 << 20, 2) if quick else (16 << 20, 3)
    clean: list[float] = []
    bad: list[tuple[float, float, int]] = []
    with tempfile.TemporaryDirectory() as tmp, BlobServer() as server:
        digest = server.add(random.Random(1).randbytes(size))
        for _ in range(rounds):
            clean.append(_round(server, digest, size, Path(tmp), 0)[0])
            bad.append(_round(server, digest, size, Path(tmp), RESET_EVERY))
    base_rate = statistics.median(clean)
    rate = statistics.median(r for r, _, _ in bad)
    resent = statistics.median(p for _, p, _ in bad)
    resets = statistics.median(n for _, _, n in bad)
    mb = size >> 20
    return [
        row(
            f"download.resent_per_reset ({mb} MB, resets every 256 KiB, default 1 MiB chunks)",
            f"{resent / 1024:.1f} KiB per reset ({resets:.0f} resets)",
            f"{DEFAULT_CHUNK_BYTES >> 10} KiB (a fixed chunk loses it whole; never completes at 1 MiB)",
            resent / DEFAULT_CHUNK_BYTES,
            "<= 0.0625 (64 KiB per reset)",
            resent <= 64 << 10,
        ),
        row(
            f"download.rate_through_resets ({mb} MB, resets every 256 KiB)",
            f"{rate:.1f} MB/s",
            f"{base_rate:.1f} MB/s (same fetcher and proxy, no resets; both capped at 32 Mbit/s)",
            rate / base_rate,
            ">= 0.6 of the clean link",
            rate / base_rate >= 0.6,
        ),
    ]


if __name__ == "__main__":
    raise SystemExit(run_alone(run))
