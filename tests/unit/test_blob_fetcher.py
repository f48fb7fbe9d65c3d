"""BlobFetcher against a real in-process gRPC DeviceService behind the fault proxy: the chunk size adapts to
resets and grows back on a good link, stalls and blackholes are retried (never a failure), refusals and size
disagreements fail at once, a cancel or close gives up promptly keeping the bytes, and a later fetch resumes.
Also the ``ChunkSizer`` rules as plain values."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_runtime.agent.download.chunking import GROW_AFTER_CHUNKS, MIN_CHUNK_BYTES, ChunkSizer
from edge_runtime.agent.download.fetcher import BlobFetcher
from edge_runtime.agent.retry import Backoff
from edge_runtime.update.errors import FetchError, FetchInterrupted
from edgefleet.contract.digests import sha256_digest
from edgefleet_testing.blobserver import BlobServer
from edgefleet_testing.faultproxy import FaultProxy
from edgefleet_testing.waiting import wait_until

FAST = Backoff(multiplier=0.01, max_s=0.05)


@dataclass
class Link:
    blobs: BlobServer
    proxy: FaultProxy

    def fetcher(self, **kwargs: object) -> BlobFetcher:
        options: dict[str, object] = {"stall_timeout_s": 0.5, "connect_timeout_s": 0.3, "backoff": FAST, **kwargs}
        return BlobFetcher(self.proxy.address, lambda: (), **options)  # type: ignore[arg-type]


@pytest.fixture
def link() -> Iterator[Link]:
    with BlobServer() as blobs, FaultProxy(blobs.port) as proxy:
        yield Link(blobs, proxy)


def _random(size: int, seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)


def _wait_for_bytes(dest: Path, size: int) -> None:
    wait_until(lambda: dest.exists() and dest.stat().st_size >= size, 20, f"{size} bytes in {dest}", interval=0.01)


def _fetch(fetcher: BlobFetcher, digest: str, dest: Path, size: int, **kwargs: object) -> None:
    have = dest.stat().st_size if dest.exists() else 0
    fetcher.fetch(digest, dest, size, have, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- chunk sizing


def test_sizer_shrinks_to_a_quarter_of_what_a_connection_kept_and_never_below_the_floor() -> None:
    sizer = ChunkSizer(1 << 20)
    sizer.lost(delivered=0)  # the first 1 MiB chunk never completed
    assert sizer.current == 256 << 10
    sizer.lost(delivered=0)
    assert sizer.current == 64 << 10
    sizer.lost(delivered=192 << 10)  # three 64 KiB chunks, the fourth lost: a quarter, to a power of two
    assert sizer.current == 32 << 10
    sizer.lost(delivered=224 << 10)  # steady: the same link keeps the same size
    assert sizer.current == 32 << 10
    for _ in range(4):
        sizer.lost(delivered=0)
    assert sizer.current == MIN_CHUNK_BYTES
    sizer.lost(delivered=50 << 20)  # a reset after many MiB never grows the chunk
    assert sizer.current == MIN_CHUNK_BYTES


def test_sizer_grows_back_after_sustained_good_transfer_up_to_the_configured_size() -> None:
    sizer = ChunkSizer(256 << 10)
    sizer.lost(delivered=0)
    assert sizer.current == 64 << 10
    for _ in range(GROW_AFTER_CHUNKS - 1):
        sizer.kept(64 << 10)
    assert sizer.current == 64 << 10, "15 chunks (960 KiB) are not enough"
    sizer.kept(64 << 10)
    assert sizer.current == 128 << 10
    for _ in range(100):
        sizer.kept(sizer.current)
    assert sizer.current == 256 << 10, "never above --chunk-bytes"


def test_sizer_a_stall_after_chunks_arrived_is_the_link_not_the_chunk() -> None:
    sizer = ChunkSizer(1 << 20)
    sizer.stalled(delivered=3 << 20)
    assert sizer.current == 1 << 20
    sizer.stalled(delivered=0)  # nothing arrived within the limit: the chunk may be too big for the link
    assert sizer.current == 512 << 10
    assert ChunkSizer(4096).current == 4096, "a configured size below the floor is honoured"


# ------------------------------------------------------------------------------------------- over the link


def test_resetting_link_completes_with_default_flags_and_resends_little_per_reset(link: Link, tmp_path: Path) -> None:
    data = _random(6 << 20, seed=1)
    digest = link.blobs.add(data)
    link.proxy.reset_every_bytes = 256 << 10
    fetcher = link.fetcher()
    dest = tmp_path / "blob"
    _fetch(fetcher, digest, dest, len(data))

    assert dest.read_bytes() == data
    resets = link.proxy.stats.resets
    assert resets >= 20, link.proxy.stats
    assert fetcher.counters.resets >= resets - 1, (fetcher.counters, link.proxy.stats)
    # bytes_down counts gRPC and HTTP/2 framing too, and the first two resets still lose the larger chunks
    # (1 MiB, 256 KiB) before the sizer settles: the bound is a fixed 64 KiB chunk's loss per reset, the
    # issue's hand-tuned workaround, plus 1/8 for framing.
    resent_per_reset = (link.proxy.stats.bytes_down - len(data)) / resets
    assert resent_per_reset <= (64 << 10) * 9 / 8, (resent_per_reset, fetcher.counters, link.proxy.stats)
    assert fetcher.sizer.current <= 64 << 10
    asked = {size for _, size in link.blobs.requests}
    assert max(asked) == 1 << 20 and min(asked) >= MIN_CHUNK_BYTES, asked


def test_chunk_grows_back_when_the_link_recovers(link: Link, tmp_path: Path) -> None:
    fetcher = link.fetcher(chunk_bytes=256 << 10)
    link.proxy.reset_every_bytes = 100 << 10
    first = _random(2 << 20, seed=2)
    _fetch(fetcher, link.blobs.add(first), tmp_path / "first", len(first))
    shrunk = fetcher.sizer.current
    assert shrunk <= 32 << 10

    link.proxy.reset_every_bytes = 0
    second = _random(6 << 20, seed=3)
    _fetch(fetcher, link.blobs.add(second), tmp_path / "second", len(second))
    assert (tmp_path / "second").read_bytes() == second
    assert fetcher.sizer.current == 256 << 10, "back to --chunk-bytes after sustained good transfer"
    assert link.blobs.requests[-1][1] == 256 << 10


def test_blackhole_and_refused_connections_are_retried_not_failed(link: Link, tmp_path: Path) -> None:
    data = _random(3 << 20, seed=4)
    digest = link.blobs.add(data)
    link.proxy.bandwidth_bytes_per_s = 4_000_000  # ~0.8 s of transfer, so the link dies mid-download
    fetcher = link.fetcher(chunk_bytes=64 << 10)
    dest = tmp_path / "blob"
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            _fetch(fetcher, digest, dest, len(data))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    _wait_for_bytes(dest, 512 << 10)
    link.proxy.blackhole = True  # a dead link: connections stay open, nothing answers
    wait_until(
        lambda: fetcher.counters.stalls and fetcher.counters.connect_timeouts,
        20,
        "a stall, then a handshake timeout, on the blackholed link",
        interval=0.01,
    )
    link.proxy.blackhole = False
    link.proxy.refuse = True  # then the host refuses connections for a while
    time.sleep(1.0)
    link.proxy.refuse = False
    worker.join(30)

    assert outcome == [None], outcome
    assert dest.read_bytes() == data
    assert fetcher.counters.stalls >= 1, fetcher.counters
    assert fetcher.counters.connect_timeouts + fetcher.counters.resets >= 1, fetcher.counters
    assert fetcher.sizer.current == 64 << 10, "a blackhole after chunks arrived does not shrink the chunk"


def test_not_found_fails_at_once_naming_the_code(link: Link, tmp_path: Path) -> None:
    fetcher = link.fetcher()
    missing = sha256_digest(b"never stored")
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"controller refused .* NOT_FOUND: artifact .* is not desired"):
        _fetch(fetcher, missing, tmp_path / "blob", 100)
    assert time.monotonic() - started < 5
    assert fetcher.counters.connections == 1


def test_size_disagreement_fails_with_both_sizes(link: Link, tmp_path: Path) -> None:
    data = _random(100_000, seed=5)
    digest = link.blobs.add(data)
    link.blobs.claimed_size[digest] = 99_000
    with pytest.raises(FetchError, match=r"is 99000 bytes, the bundle declares 100000"):
        _fetch(link.fetcher(), digest, tmp_path / "blob", len(data))


def test_cancel_gives_up_promptly_keeping_the_bytes_and_the_next_fetch_resumes(link: Link, tmp_path: Path) -> None:
    data = _random(4 << 20, seed=6)
    digest = link.blobs.add(data)
    link.proxy.bandwidth_bytes_per_s = 2_000_000
    fetcher = link.fetcher(chunk_bytes=64 << 10, stall_timeout_s=60.0)  # only the cancel can end this one
    dest = tmp_path / "blob"
    cancel = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            _fetch(fetcher, digest, dest, len(data), cancel=cancel)
        except BaseException as exc:
            raised.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    _wait_for_bytes(dest, 256 << 10)
    link.proxy.blackhole = True
    time.sleep(0.3)
    cancelled_at = time.monotonic()
    cancel.set()
    worker.join(10)
    assert time.monotonic() - cancelled_at < 3.0, "a cancelled fetch must not wait for its 60 s stall limit"
    assert len(raised) == 1 and isinstance(raised[0], FetchInterrupted), raised
    kept = dest.stat().st_size
    assert kept >= 256 << 10 and kept % MIN_CHUNK_BYTES == 0, "whole chunks were kept"
    assert dest.read_bytes() == data[:kept]

    link.proxy.blackhole = False
    link.proxy.bandwidth_bytes_per_s = 0
    before = len(link.blobs.requests)
    _fetch(fetcher, digest, dest, len(data))
    assert dest.read_bytes() == data
    assert fetcher.counters.resumes == 1
    assert link.blobs.requests[before][0] == kept, "the resumed fetch asked from the bytes kept"

    fetcher.close()
    with pytest.raises(FetchInterrupted, match="closed"):
        _fetch(fetcher, link.blobs.add(_random(1000, seed=7)), tmp_path / "after-close", 1000)
