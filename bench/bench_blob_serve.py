"""Benchmark of blob verification on serve: what ``BlobIntegrity`` costs FetchBlob.

``run(quick=False) -> list[dict]``; ``python bench/bench_blob_serve.py [--quick]`` prints the rows.

A real in-process controller (``running_controller``: real gRPC on loopback, real SQLite, real blob directory)
serves one large artifact of a device's desired bundle to a real gRPC client, in 1 MiB chunks, from offset 0
to the end. Three ways, alternating rounds in the same run:

- **baseline, unverified**: the same controller with an integrity check that trusts every file (what serving
  was before verification);
- **verified, mark valid**: the file was verified since it last changed, so the serve costs one ``fstat`` and
  a dictionary look-up (every serve but the first after a change);
- **verified, first serve after a change**: the file is touched before the round (new mtime), so the whole
  blob is hashed before its first byte is sent — once per change per controller process.

Goals: a valid mark costs nothing measurable (>= 0.90 of unverified, noise included); the first serve after
a change pays one sequential hash of the file and stays >= 0.35 of unverified.
"""

from __future__ import annotations

import asyncio
import os
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

from edgefleet.contract.signing import generate_keypair  # noqa: E402
from edgefleet.v1 import fleet_pb2  # noqa: E402
from edgefleet_controller.bundles.blob_integrity import BlobIntegrity  # noqa: E402
from edgefleet_controller.store.blobs import StatKey  # noqa: E402
from edgefleet_testing.controller import Fleet, connected, publish_bundle, running_controller  # noqa: E402

CHUNK = 1 << 20


class TrustingIntegrity(BlobIntegrity):
    """The baseline: serving as it was before verification, every file taken as it is."""

    def is_verified(self, digest: str, key: StatKey) -> bool:
        return True


async def _throughput(c: Fleet, cred: str, digest: str, size: int) -> float:
    started = time.perf_counter()
    data = await c.fetch(cred, digest, chunk_bytes=CHUNK)
    elapsed = time.perf_counter() - started
    assert len(data) == size, (len(data), size)
    return size / elapsed / 1e6


async def _measure(work: Path, size: int, rounds: int) -> tuple[list[float], list[float], list[float]]:
    key = generate_keypair("bench")
    archive = publish_bundle(work / "w", key, extra={"payload": os.urandom(size)})
    async with running_controller(work / "data") as ctrl, connected(ctrl) as c:
        await c.trust(key)
        pushed = await c.push(archive)
        device_id, cred = await c.enroll("site-1", "bench-cam")
        await c.fleet.SetDesiredBundle(
            fleet_pb2.SetDesiredBundleRequest(device=device_id, bundle=pushed.bundle.digest), metadata=c.admin
        )
        synced = await c.sync(cred)
        payload = next(a for a in synced.desired.artifacts if a.role == "payload")
        bundles = ctrl.app.bundles
        verifying = bundles.integrity
        trusting = TrustingIntegrity(verifying.blobs, verifying.metrics, verifying.clock)
        blob = bundles.blobs.path(payload.digest)
        await _throughput(c, cred, payload.digest, size)  # warm the page cache and the channel
        unverified, marked, first = [], [], []
        for _ in range(rounds):
            bundles.integrity = trusting
            unverified.append(await _throughput(c, cred, payload.digest, size))
            bundles.integrity = verifying
            marked.append(await _throughput(c, cred, payload.digest, size))
            st = blob.stat()
            os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000))  # a change: the mark no longer holds
            first.append(await _throughput(c, cred, payload.digest, size))
        return unverified, marked, first


def run(quick: bool = False) -> list[dict[str, Any]]:
    size, rounds = (16 << 20, 3) if quick else (64 << 20, 5)
    with tempfile.TemporaryDirectory() as tmp:
        unverified, marked, first = asyncio.run(_measure(Path(tmp), size, rounds))
    base = statistics.median(unverified)
    warm, cold = statistics.median(marked), statistics.median(first)
    baseline = f"{base:.0f} MB/s (same controller, no verification)"
    mb = size >> 20
    return [
        row(
            f"blob_serve.verified_mark_valid ({mb} MB artifact, 1 MiB chunks)",
            f"{warm:.0f} MB/s",
            baseline,
            warm / base,
            ">= 0.90 (a verified, unchanged file is not hashed again)",
            warm / base >= 0.90,
        ),
        row(
            f"blob_serve.verified_first_serve_after_change ({mb} MB)",
            f"{cold:.0f} MB/s (whole blob hashed before the first byte)",
            baseline,
            cold / base,
            ">= 0.35 (one sequential hash per change of the file)",
            cold / base >= 0.35,
        ),
    ]


if __name__ == "__main__":
    raise SystemExit(run_alone(run))
