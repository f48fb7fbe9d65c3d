"""``EngineSlot``: the runtime's current engine, swapped between two frames without dropping any.

The frame loop reads ``slot.current`` once per frame and uses that engine for the whole frame; nothing
else in the frame path touches the slot. Changing the engine is therefore a single reference assignment
(atomic in CPython), and a frame that started on the old engine finishes on it.

Lifecycle: ``prepare(loader)`` builds and warms the next engine on a background thread (the frame loop keeps
running on the current one) → ``swap()`` makes it current and keeps the old one loaded → ``rollback()``
swaps back to it, or ``release_previous()`` drops it once the new one is trusted. Writers (prepare, swap,
rollback, release) serialise on one lock; the frame path never takes it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

import structlog

from edge_runtime.inference.engine import InferenceEngine
from edge_runtime.inference.errors import SwapError

log = structlog.get_logger(__name__)

EngineLoader = Callable[[], InferenceEngine]


class EngineSlot:
    """Holds the current engine, at most one staged (prepared) engine and the previous one for rollback."""

    def __init__(self, engine: InferenceEngine | None = None) -> None:
        self._current = engine
        self._staged: InferenceEngine | None = None
        self._previous: InferenceEngine | None = None
        self._pending: Future[InferenceEngine] | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> InferenceEngine:
        """The engine for the next frame. Read it once per frame."""
        engine = self._current
        if engine is None:
            raise SwapError("no engine loaded yet; call prepare(loader) and swap() before serving frames")
        return engine

    @property
    def has_engine(self) -> bool:
        return self._current is not None

    @property
    def staged(self) -> InferenceEngine | None:
        return self._staged

    @property
    def previous(self) -> InferenceEngine | None:
        return self._previous

    def prepare(self, loader: EngineLoader) -> Future[InferenceEngine]:
        """Build and warm an engine with ``loader`` on a background thread; it becomes ``staged`` when done.

        Returns a future resolving to the engine (or to the loader's exception, leaving nothing staged).
        Only one prepare runs at a time; a finished staged engine is replaced by a new prepare.
        """
        with self._lock:
            if self._pending is not None and not self._pending.done():
                raise SwapError("an engine is already being prepared; wait for its future before preparing another")
            future: Future[InferenceEngine] = Future()
            self._pending = future
            self._staged = None

        def build() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                engine = loader()
            except Exception as exc:
                log.warning("hotswap.prepare_failed", error=str(exc), error_type=type(exc).__name__)
                future.set_exception(exc)
                return
            with self._lock:
                self._staged = engine
            log.info("hotswap.prepared", bundle_digest=engine.bundle_digest, provider=engine.provider)
            future.set_result(engine)

        threading.Thread(target=build, name="engine-prepare", daemon=True).start()
        return future

    def swap(self) -> InferenceEngine:
        """Make the staged engine current; the old current is kept as ``previous``. Returns the new engine."""
        with self._lock:
            staged = self._staged
            if staged is None:
                pending = self._pending is not None and not self._pending.done()
                raise SwapError(
                    "nothing staged to swap in: "
                    + ("the prepare is still running; wait for its future" if pending else "call prepare(loader) first")
                )
            old = self._current
            self._previous, self._current, self._staged = old, staged, None
        log.info(
            "hotswap.swapped",
            bundle_digest=staged.bundle_digest,
            previous_digest=old.bundle_digest if old else None,
        )
        return staged

    def install(self, engine: InferenceEngine) -> None:
        """Make an already loaded engine current at once (start-up); the old one becomes ``previous``."""
        with self._lock:
            self._previous, self._current = self._current, engine

    def clear(self) -> InferenceEngine | None:
        """Serve nothing: drop the current and previous engines (an abandoned first-ever bundle, when
        nothing was committed before it). Returns the engine that was current."""
        with self._lock:
            current, self._current, self._previous = self._current, None, None
        if current is not None:
            log.warning("hotswap.cleared", bundle_digest=current.bundle_digest)
        return current

    def rollback(self) -> InferenceEngine:
        """Swap back to the previous engine, dropping the one rolled away from. Returns the restored one."""
        with self._lock:
            previous = self._previous
            if previous is None:
                raise SwapError("no previous engine to roll back to (never swapped, or release_previous() was called)")
            rolled_from = self._current
            self._current, self._previous = previous, None
        log.warning(
            "hotswap.rolled_back",
            bundle_digest=previous.bundle_digest,
            rolled_back_from=rolled_from.bundle_digest if rolled_from else None,
        )
        return previous

    def release_previous(self) -> InferenceEngine | None:
        """Forget the previous engine (its session is freed once no frame still uses it); returns it."""
        with self._lock:
            previous, self._previous = self._previous, None
        if previous is not None:
            log.info("hotswap.previous_released", bundle_digest=previous.bundle_digest)
        return previous
