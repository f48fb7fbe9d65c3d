"""The real ``EngineSwitcher``: bundles in and out of the frame path through one ``EngineSlot``.

- ``stage`` loads and warms the candidate with ``EngineSlot.prepare`` (a background thread; the frame loop
  keeps serving the current engine) and waits for it, so the driver learns at once if the bundle cannot
  load on this device. The staged engine is also what the canary's golden preflight runs.
- ``swap_to_candidate`` is ``EngineSlot.swap``: one reference change between two frames.
- ``swap_to_committed`` puts the committed bundle back: nothing to do when it already serves, ``rollback``
  when it is the previous engine still loaded, else a fresh load (start-up) installed at once.
- How a bundle is loaded comes from ``precedence.resolve_policy`` over the operator config the device
  received, with that bundle's declared policy below it: ``inference.providers`` (the bundle's own list
  unless a manifest sets one), ``inference.precision`` (which variant of a multi-precision bundle),
  ``inference.fp16`` (FP16 kernels on TensorRT/CUDA) and ``inference.conf_threshold`` (the
  post-processing threshold; the bundle's ``postprocess.conf_threshold`` unless a manifest sets one).
  TensorRT engines and timing caches go under ``DATA_DIR/cache/<bundle hex>``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from edge_runtime.inference import (
    EngineSlot,
    InferenceEngine,
    InferenceError,
    PostprocessSpec,
    PreprocessSpec,
)
from edge_runtime.update.errors import EngineSwitchError
from edgefleet.contract.bundle import MANIFEST_NAME, MODEL_ROLE, BundleManifest
from edgefleet.contract.errors import ContractError
from edgefleet.contract.precedence import resolve_policy

log = structlog.get_logger(__name__)

STAGE_TIMEOUT_S = 600.0


def load_engine(
    bundle_dir: Path,
    digest: str,
    *,
    cache_root: Path,
    config: Mapping[str, Any] | None = None,
    intra_op_threads: int | None = None,
) -> InferenceEngine:
    """Load the bundle in ``bundle_dir`` into a warmed engine (raises ``EngineSwitchError``).

    ``config`` is the operator config the device received (None: none yet); the ``inference`` keys are
    resolved over the bundle's own (see the module docstring). A bundle with several precision variants
    (FP32, INT8) is measured on this device and the faster variant that passed its accuracy gate is served
    (``precision: auto``); ``fp32``/``int8`` force one.
    """
    try:
        manifest = BundleManifest.from_json_bytes((bundle_dir / MANIFEST_NAME).read_bytes())
        inference = resolve_policy(config or {}, bundle=manifest).section("inference")
        providers = tuple(inference.get("providers") or manifest.providers)
        precision = str(inference.get("precision") or "auto")
        post = PostprocessSpec.from_mapping(manifest.postprocess.to_dict())
        threshold = inference.get("conf_threshold")
        if isinstance(threshold, int | float) and not isinstance(threshold, bool):
            post = dataclasses.replace(post, conf_threshold=float(threshold))
        model = bundle_dir / manifest.artifact(MODEL_ROLE).path
        int8 = False
        if manifest.precision_variants and len(manifest.precision_variants) > 1:
            from edge_runtime.precision import choose_variant

            choice = choose_variant(
                bundle_dir,
                manifest,
                providers=providers,
                cache_dir=cache_root / digest.removeprefix("sha256:"),
                only=None if precision in ("", "auto") else {precision},
                intra_op_threads=intra_op_threads,
            )
            model, int8 = choice.model_path, choice.precision == "int8"
            log.info("inference.precision_chosen", bundle=digest, choice=choice.to_dict())
        return InferenceEngine.load(
            model,
            PreprocessSpec.from_mapping(manifest.preprocess.to_dict()),
            post,
            list(manifest.labels),
            providers=providers,
            cache_dir=cache_root / digest.removeprefix("sha256:"),
            bundle_digest=digest,
            intra_op_threads=intra_op_threads,
            fp16=inference.get("fp16") is True,
            int8=int8,
        )
    except (OSError, ContractError, InferenceError) as exc:
        raise EngineSwitchError(f"bundle {digest} in {bundle_dir} cannot be loaded: {exc}") from exc


class SlotSwitcher:
    """``EngineSwitcher`` over an ``EngineSlot`` shared with the frame loop."""

    def __init__(
        self,
        slot: EngineSlot,
        *,
        cache_root: Path,
        config: Callable[[], Mapping[str, Any]] = dict,
        intra_op_threads: int | None = None,
    ) -> None:
        self.slot = slot
        self._cache_root = cache_root
        self._config = config
        self._threads = intra_op_threads
        self._lock = threading.Lock()
        self._staged_digest: str | None = None

    def _load(self, digest: str, bundle_dir: Path) -> InferenceEngine:
        return load_engine(
            bundle_dir, digest, cache_root=self._cache_root, config=self._config(), intra_op_threads=self._threads
        )

    def staged_engine(self, digest: str) -> InferenceEngine | None:
        staged = self.slot.staged
        return staged if staged is not None and staged.bundle_digest == digest else None

    def stage(self, digest: str, bundle_dir: Path) -> None:
        future = self.slot.prepare(lambda: self._load(digest, bundle_dir))
        try:
            future.result(timeout=STAGE_TIMEOUT_S)
        except EngineSwitchError:
            raise
        except Exception as exc:
            raise EngineSwitchError(f"staging {digest} failed: {exc}") from exc

    def swap_to_candidate(self, digest: str) -> None:
        if self.staged_engine(digest) is None:
            raise EngineSwitchError(
                f"candidate {digest} is not staged (staged: "
                f"{self.slot.staged.bundle_digest if self.slot.staged else 'nothing'}); it must be staged again"
            )
        try:
            self.slot.swap()
        except InferenceError as exc:
            raise EngineSwitchError(str(exc)) from exc

    def swap_to_committed(self, digest: str | None, bundle_dir: Path | None) -> None:
        slot = self.slot
        current = slot.current if slot.has_engine else None
        if digest is None:
            if current is not None:
                slot.clear()
            return
        if current is not None and current.bundle_digest == digest:
            return
        previous = slot.previous
        if previous is not None and previous.bundle_digest == digest:
            slot.rollback()
            return
        if bundle_dir is None:
            raise EngineSwitchError(f"committed bundle {digest} has no slot directory to load from")
        engine = self._load(digest, bundle_dir)
        slot.install(engine)
        slot.release_previous()
        log.info("agent.engine_installed", bundle_digest=digest, provider=engine.provider)
