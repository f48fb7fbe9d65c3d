"""One PushBundle's artifacts, staged: each is streamed into a temp file of the blob store, checked against
the signed bundle.json (size while written; size and sha256 when it ends), and kept invisible. Only
``publish`` (called once the request stream ended cleanly and every check passed) renames them into place;
``discard`` removes whatever is still staged, so a refused, cancelled or dropped push leaves no file.

Worker-thread steps go through ``run_to_end``: a cancelled push waits for the step in progress before it
cleans up, so a cleanup never races a write, and a publish is never left half done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from edgefleet.contract.bundle_layout import MANIFEST_NAME
from edgefleet.contract.bundle_sections import ArtifactRef
from edgefleet.contract.shown import shown
from edgefleet_controller import errors as cerr
from edgefleet_controller.bundles.size_checks import check_staged_artifact
from edgefleet_controller.store import BlobStore
from edgefleet_controller.store.blobs import BlobWriter
from edgefleet_controller.store.errors import BlobTooLarge

T = TypeVar("T")

_FIX = "the archive was altered or corrupted; run 'fleetctl bundle verify' on it, rebuild or re-sign, push again"


async def run_to_end(fn: Callable[[], T]) -> T:
    """``fn()`` in a worker thread. If the awaiting task is cancelled meanwhile, the thread is still waited
    for (a thread cannot be interrupted) before the cancellation goes on, so what runs next — the cleanup
    — sees the step either done or not started."""
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([task])
        raise


@dataclass(eq=False)
class StagedPush:
    """The artifacts one push has sent so far, by digest; ``expected`` is what the signed manifest lists."""

    blobs: BlobStore
    expected: dict[str, ArtifactRef]
    sealed: dict[str, BlobWriter] = field(default_factory=dict)
    #: artifacts that were already stored when their bytes arrived (still verified, then not re-stored)
    stored_before: set[str] = field(default_factory=set)
    _digest: str = ""
    _writer: BlobWriter | None = None

    async def add(self, digest: str, data: bytes) -> None:
        """Stage ``data``, the next bytes of artifact ``digest`` (a new digest ends the previous artifact)."""
        if digest != self._digest:
            await self._seal_current()
            if digest not in self.expected:
                raise cerr.InvalidArgument(
                    f"bundle refused: PushBundle sent a chunk for {shown(digest)}, which {MANIFEST_NAME} does "
                    "not list; push the archive the manifest was signed with"
                )
            if digest in self.sealed:
                raise cerr.InvalidArgument(
                    f"bundle refused: artifact {shown(self.expected[digest].role)} was sent twice; send each once"
                )
            ref = self.expected[digest]
            if await run_to_end(lambda: self.blobs.has(digest)):
                self.stored_before.add(digest)
            self._digest = digest

            def open_writer() -> None:
                # assigned in the thread: a push cancelled meanwhile still finds the writer to discard
                self._writer = self.blobs.open_writer(max_size=ref.size)

            await run_to_end(open_writer)
        writer = self._writer
        assert writer is not None
        try:
            await run_to_end(lambda: writer.write(data))
        except BlobTooLarge:
            ref = self.expected[digest]
            raise cerr.InvalidArgument(
                f"bundle refused: artifact {shown(ref.role)} ({ref.path}) holds more data than {MANIFEST_NAME} "
                f"declares ({ref.size} bytes); {_FIX}"
            ) from None

    async def finish(self) -> list[ArtifactRef]:
        """End the last artifact; the listed artifacts neither sent nor stored already (to refuse)."""
        await self._seal_current()
        unsent = [d for d in self.expected if d not in self.sealed]
        stored = await run_to_end(lambda: {d for d in unsent if self.blobs.has(d)})
        return [self.expected[d] for d in unsent if d not in stored]

    def deduplicated(self) -> list[str]:
        """Artifacts stored before this push: sent and verified (then dropped), or not sent at all."""
        return [d for d in self.expected if d in self.stored_before or d not in self.sealed]

    def publish(self) -> list[str]:
        """Rename every staged artifact into the blob store (synchronous: call through ``run_to_end``);
        returns the digests this call made visible (not there before)."""
        added = []
        for digest, writer in self.sealed.items():
            existed = self.blobs.has(digest)
            writer.commit(digest)
            if not existed:
                added.append(digest)
        self.sealed.clear()
        return added

    def discard(self) -> None:
        """Remove every staged temp file (safe after ``publish`` and more than once)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        for writer in self.sealed.values():
            writer.abort()
        self.sealed.clear()

    async def _seal_current(self) -> None:
        writer, digest = self._writer, self._digest
        if writer is None:
            return
        ref = self.expected[digest]
        got, size = await run_to_end(writer.seal)
        self._writer = None
        if size != ref.size or got != digest:
            writer.abort()
            what = f"is {size} bytes" if size != ref.size else f"has {got}"
            says = f"{ref.size}" if size != ref.size else digest
            raise cerr.InvalidArgument(
                f"bundle refused: artifact {shown(ref.role)} ({ref.path}) {what}, {MANIFEST_NAME} says {says}; {_FIX}"
            )
        self.sealed[digest] = writer  # tracked first: a refusal below leaves it to ``discard``
        await run_to_end(lambda: check_staged_artifact(ref, writer.temp_path))
