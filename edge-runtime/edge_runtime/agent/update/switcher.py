"""The real ``EngineSwitcher``: bundles in and out of the frame path through one ``EngineSlot``.

- ``stage`` loads and warms the candidate with ``EngineSlot.prepare`` (a background thread; the frame loop
  keeps serving the current engine) and waits for it, so the driver learns at once if the bundle cannot
  load on this device. The staged engine is also what the canary's golden preflight runs.
- ``swap_to_candidate`` is ``EngineSlot.swap``: one reference change between two frames.
- ``swap_to_committed`` puts the committed bundle back: nothing to do when it already serves, ``rollback``
  when it is the previous engine still loaded, else a fresh load (start-up) installed at once.
- A candidate is (bundle, config). Every load names its config by digest (``configs`` looks the values up;
  ``None`` is the config in force) and the switcher remembers each engine's ``inference_fingerprint``
  (``edgefleet.contract.config_classes``): an engine "is" a (bundle, config) when its bundle and the
  fingerprint of the config's inference keys match. So a config candidate that changes inference is a new
  engine of the same bundle (staged, canaried, swapped like any candidate; rolled back to the engine it
  replaced), and one that does not keeps the engine serving (``swap_to_candidate`` changes nothing here).
- How a bundle is loaded comes from ``precedence.resolve_policy`` over the operator config the device
  received, with that bundle's declared policy below it: ``inference.providers`` (the bundle's own list
  unless a manifest sets one), ``inference.precision`` (which variant of a multi-precision bundle),
  ``inference.fp16`` (FP16 kernels on TensorRT/CUDA) and ``inference.conf_threshold`` (the
  post-processing threshold; the bundle's ``postprocess.conf_threshold`` unless a manifest sets one).
  TensorRT engines and timing caches go under ``DATA_DIR/cache/<bundle hex>``.
- ``inference.precision`` from the config is a preference (``strict=False``): a fleet or site asks for
  ``int8`` of bundles that may have no INT8 variant, and such a bundle is served as ``auto`` would serve
  it, the choice's ``note`` saying why, instead of failing staging. ``load_variant`` is strict by default
  for its explicit callers (``edge-runtime infer --precision``).
- Every load makes a precision choice (``load_variant``): the switcher keeps it beside each live engine
  (``choice_of``), so what the agent reports is the choice of the engine actually serving, made again at
  every start (the start-up load measures again: the choice is this device's, now), and tells its
  ``listen``-ers (the agent's precision event).
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from edge_runtime.inference import (
    EngineSlot,
    InferenceEngine,
    InferenceError,
)
from edge_runtime.precision import AUTO, VariantChoice, choice_engine_flags, choose_variant
from edge_runtime.update.errors import EngineSwitchError
from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_layout import MANIFEST_NAME
from edgefleet.contract.config_classes import inference_fingerprint
from edgefleet.contract.digests import DIGEST_PREFIX
from edgefleet.contract.errors import ContractError
from edgefleet.contract.precedence import resolve_policy

log = structlog.get_logger(__name__)

STAGE_TIMEOUT_S = 600.0


@dataclasses.dataclass(frozen=True)
class LoadedEngine:
    """A warmed engine and the precision choice that picked its model (``edge_runtime.precision``)."""

    engine: InferenceEngine
    choice: VariantChoice


def load_variant(
    bundle_dir: Path,
    digest: str,
    *,
    cache_root: Path,
    config: Mapping[str, Any] | None = None,
    intra_op_threads: int | None = None,
    config_digest: str = "",
    strict: bool = True,
) -> LoadedEngine:
    """Load the bundle in ``bundle_dir`` into a warmed engine (raises ``EngineSwitchError``).

    ``config`` is the operator config the device received (None: none yet); the ``inference`` keys are
    resolved over the bundle's own (see the module docstring). A bundle with several precision variants
    (FP32, S8S8 and U8S8 INT8, FP16) is measured on this device and the fastest variant that passed its
    accuracy gate is served (``inference.precision: auto``); a precision (``int8``: the fastest INT8 variant)
    or a variant name restricts the choice (``edge_runtime.precision.requested_variants``); ``strict``: one the
    bundle cannot honour fails the load (True) or is served as ``auto`` with the choice's ``note`` saying why
    (False: the agent's config). The choice returned names the provider of the engine actually loaded.
    """
    try:
        manifest = BundleManifest.from_json_bytes((bundle_dir / MANIFEST_NAME).read_bytes())
        inference = resolve_policy(config or {}, bundle=manifest).section("inference")
        providers = tuple(inference.get("providers") or manifest.providers)
        precision = str(inference.get("precision") or AUTO)
        fp16_configured = inference.get("fp16") is True
        post = manifest.postprocess
        threshold = inference.get("conf_threshold")
        if isinstance(threshold, int | float) and not isinstance(threshold, bool):
            post = dataclasses.replace(post, conf_threshold=float(threshold))
        cache_dir = cache_root / digest.removeprefix(DIGEST_PREFIX)
        choice = choose_variant(
            bundle_dir,
            manifest,
            providers=providers,
            cache_dir=cache_dir,
            precision=precision,
            fp16=fp16_configured,
            intra_op_threads=intra_op_threads,
            strict=strict,
        )
        fp16, int8 = choice_engine_flags(manifest, choice, fp16=fp16_configured)
        engine = InferenceEngine.load(
            choice.model_path,
            manifest.preprocess,
            post,
            list(manifest.labels),
            providers=providers,
            cache_dir=cache_dir,
            bundle_digest=digest,
            intra_op_threads=intra_op_threads,
            fp16=fp16,
            int8=int8,
            config_digest=config_digest,
        )
    except (OSError, ContractError, InferenceError) as exc:
        raise EngineSwitchError(f"bundle {digest} in {bundle_dir} cannot be loaded: {exc}") from exc
    choice = choice.served_on(engine.provider)
    log.info("inference.precision_chosen", bundle=digest, choice=choice.to_dict())
    return LoadedEngine(engine, choice)


def load_engine(
    bundle_dir: Path,
    digest: str,
    *,
    cache_root: Path,
    config: Mapping[str, Any] | None = None,
    intra_op_threads: int | None = None,
    config_digest: str = "",
) -> InferenceEngine:
    """``load_variant``'s engine (raises ``EngineSwitchError``)."""
    return load_variant(
        bundle_dir,
        digest,
        cache_root=cache_root,
        config=config,
        intra_op_threads=intra_op_threads,
        config_digest=config_digest,
    ).engine


#: Config digest -> config values (None: the config in force); raises ``LookupError`` for an unknown digest.
ConfigLookup = Callable[[str | None], Mapping[str, Any]]


@dataclasses.dataclass(eq=False, repr=False)
class SlotSwitcher:
    """``EngineSwitcher`` over an ``EngineSlot`` shared with the frame loop."""

    slot: EngineSlot
    _: dataclasses.KW_ONLY
    cache_root: Path
    configs: ConfigLookup = lambda _digest: {}
    intra_op_threads: int | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        # The inference fingerprint of the config each live engine was loaded with.
        self._fingerprints: weakref.WeakKeyDictionary[InferenceEngine, str] = weakref.WeakKeyDictionary()
        # The precision choice that picked each live engine's model.
        self._choices: weakref.WeakKeyDictionary[InferenceEngine, VariantChoice] = weakref.WeakKeyDictionary()
        self._listeners: list[Callable[[str, VariantChoice], None]] = []

    def listen(self, callback: Callable[[str, VariantChoice], None]) -> None:
        """Call ``callback(bundle digest, choice)`` after every load (staging or start-up), from the loading
        thread: the agent reports each precision choice as an event."""
        self._listeners.append(callback)

    def choice_of(self, engine: InferenceEngine | None) -> VariantChoice | None:
        """The precision choice of an engine this switcher loaded (None for another engine, or None)."""
        if engine is None:
            return None
        with self._lock:
            return self._choices.get(engine)

    def serving_precision(self, digest: str) -> str:
        """The precision variant name of the engine serving bundle ``digest`` ('' when another one serves):
        what the telemetry's metric windows carry."""
        engine = self.slot.current if self.slot.has_engine else None
        if engine is None or engine.bundle_digest != digest:
            return ""
        choice = self.choice_of(engine)
        return choice.name if choice is not None else ""

    def _values(self, digest: str, config: str | None) -> Mapping[str, Any]:
        try:
            return self.configs(config)
        except LookupError as exc:
            raise EngineSwitchError(f"config {config} for bundle {digest} is not on this device: {exc}") from exc

    def _load(self, digest: str, bundle_dir: Path, config: str | None) -> InferenceEngine:
        values = self._values(digest, config)
        loaded = load_variant(
            bundle_dir,
            digest,
            cache_root=self.cache_root,
            config=values,
            intra_op_threads=self.intra_op_threads,
            config_digest=config or "",
            strict=False,  # the config's inference.precision is a preference (module docstring)
        )
        with self._lock:
            self._fingerprints[loaded.engine] = inference_fingerprint(values)
            self._choices[loaded.engine] = loaded.choice
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(digest, loaded.choice)
            except Exception as exc:  # a report must never fail a load
                log.warning("agent.precision_listener_failed", bundle_digest=digest, error=str(exc))
        return loaded.engine

    def _is(self, engine: InferenceEngine | None, digest: str, config: str | None, *, unknown: bool = False) -> bool:
        """Whether ``engine`` is bundle ``digest`` loaded for ``config`` (same inference keys); ``unknown``:
        the answer for an engine this switcher did not load (staged by hand: it is what was staged)."""
        if engine is None or engine.bundle_digest != digest:
            return False
        with self._lock:
            loaded_for = self._fingerprints.get(engine)
        if loaded_for is None:
            return unknown
        return loaded_for == inference_fingerprint(self._values(digest, config))

    def staged_engine(self, digest: str) -> InferenceEngine | None:
        staged = self.slot.staged
        return staged if staged is not None and staged.bundle_digest == digest else None

    def stage(self, digest: str, bundle_dir: Path, config: str | None = None) -> None:
        future = self.slot.prepare(lambda: self._load(digest, bundle_dir, config))
        try:
            future.result(timeout=STAGE_TIMEOUT_S)
        except EngineSwitchError:
            raise
        except Exception as exc:
            raise EngineSwitchError(f"staging {digest} failed: {exc}") from exc

    def swap_to_candidate(self, digest: str, config: str | None = None) -> None:
        slot = self.slot
        if self._is(self.staged_engine(digest), digest, config, unknown=True):
            try:
                slot.swap()
            except InferenceError as exc:
                raise EngineSwitchError(str(exc)) from exc
            return
        if self._is(slot.current if slot.has_engine else None, digest, config):
            return  # a config change that does not change inference: the engine serving is the candidate's
        raise EngineSwitchError(
            f"candidate {digest} (config {config or 'in force'}) is not staged (staged: "
            f"{slot.staged.bundle_digest if slot.staged else 'nothing'}); it must be staged again"
        )

    def release_previous(self) -> None:
        self.slot.release_previous()

    def swap_to_committed(self, digest: str | None, bundle_dir: Path | None, config: str | None = None) -> None:
        slot = self.slot
        current = slot.current if slot.has_engine else None
        if digest is None:
            if current is not None:
                slot.clear()
            return
        if self._is(current, digest, config):
            return
        previous = slot.previous
        if self._is(previous, digest, config):
            slot.rollback()
            return
        if bundle_dir is None:
            raise EngineSwitchError(f"committed bundle {digest} has no slot directory to load from")
        engine = self._load(digest, bundle_dir, config)
        slot.install(engine)
        slot.release_previous()
        log.info("agent.engine_installed", bundle_digest=digest, config=config, provider=engine.provider)
