"""Device-side choice between a bundle's precision variants (FP32, QDQ INT8, …): measured here, on this device.

The builder's latency figures were taken on the builder's machine; what is fast there (VNNI INT8 kernels)
can be slow here (a CPU without them, where QDQ INT8 runs *slower* than FP32), and TensorRT on a Jetson is
different again. So the agent calls ``choose_variant`` at every load of a bundle (staging, and again at each
start): every variant that may be served is loaded on the providers the device will use and timed on the
same preprocessed frame, and the fastest is served. The choice and its figures are reported
(``VariantChoice.to_dict`` in the reported state's ``details.precision``, ``summary`` as the reason of a
``KIND_PRECISION_CHOSEN`` event, the variant's name in each metric window).

Owns:
- ``eligible_variants`` (pure): which variants may be served. The reference (FP32, the ``model`` artifact)
  always; any other variant only when its ``metrics`` carry accuracy figures that passed: a numeric
  ``accuracy_loss`` ≤ ``max_accuracy_loss`` (default 1%, the builder's default bound) and no
  ``accuracy_passed: false``. A variant without accuracy figures is never served: nobody measured what it
  costs in accuracy. Refused variants are never timed, and the reason is reported.
- ``interleaved_latency`` (pure apart from the callables it is given, clock injectable): runs are
  interleaved round-robin, rotating which variant goes first each round, so clock, thermal and background
  drift hit every variant alike.
- ``built_refusals`` (pure): the candidates the builder left out (the reference variant's ``metrics.refused``)
  are reported among the refused variants, so an operator sees why a device cannot serve U8S8 at all.
- ``requested_variants`` (pure): what an operator's ``inference.precision`` asks for. ``auto`` (or empty):
  every eligible variant. A precision (``fp32``, ``fp16``, ``int8``): every variant OF that precision, so
  ``int8`` means "the fastest INT8 variant here", S8S8 or U8S8 alike. Any other value: one variant by exact
  name (``int8-u8s8``). A precision wins over a variant of the same name (``int8`` is the class even when the
  S8S8 variant is named ``int8``). A value naming neither is a ``VariantError`` listing what the bundle has.
- ``choose_variant`` (the shell): loads the engines, measures, and applies the rule of
  ``edgefleet.contract.precision.select_precision``: the lowest p50 wins, but a lower precision must be at
  least ``min_speedup`` (1.05×) faster than FP32 to replace it; a 1% difference is noise and FP32 is the
  safer artifact. Any number of variants (FP32, S8S8, U8S8, FP16) is measured in one interleaved run. With
  a single servable variant nothing is measured or loaded (``provider`` is then left to whoever loads it).
  When the request leaves FP32 out, the fastest requested variant is chosen and ``speedup`` is 1.0 against
  itself (``reference`` says so: FP32 was not measured). A variant this device cannot load (an FP16 model
  whose ops its provider lacks) is refused with the loader's reason and the others are measured; only when
  none loads is the bundle refused.
- Strict or preferred requests (``choose_variant(strict=...)``). An explicit request (``edge-runtime infer
  --precision``, ``edge-runtime profile --precision``: ``strict=True``, the default) that the bundle cannot
  honour is a ``VariantError``. ``inference.precision`` from an operator's config manifest is fleet- or
  site-wide while bundles vary (``farm-b`` asks ``int8`` of every bundle it gets), so the agent's switcher
  passes ``strict=False``: a request naming nothing the bundle has, or whose variants none may be served or
  loaded here, is served as ``auto`` would be, and the choice says so (``requested`` keeps the request,
  ``note``: ``inference.precision int8 requested; bundle has fp32 only: serving fp32``, in ``summary`` and
  ``to_dict``). Failing every such device's staging would turn a site preference into an outage.
- ``provider_refusal`` (pure): a U8S8 variant is refused where TensorRT would run it (TensorRT takes signed
  INT8 Q/DQ only), before anything is loaded.
- ``engine_flags`` (pure): the TensorRT flags a variant is loaded with (``choice_engine_flags``: those of a
  choice; the switcher and ``edge_runtime.profiling`` both load the chosen variant with them). INT8 for any
  INT8 variant (a QDQ model carries its own scales; TensorRT only needs INT8 enabled to honour them). FP16
  for an FP16 variant: its weights are already FP16, but TensorRT builds a weakly typed network in FP32
  unless FP16 kernels are enabled, which would serve an FP16 model at FP32 speed; its accuracy gate was
  measured on FP16 compute. For other variants FP16 only when the operator sets ``inference.fp16``.

Errors: ``VariantError`` (an ``InferenceError``, so code that guards bundle loading with
``except InferenceError`` catches it) when a bundle names a variant whose artifact it lacks, when
``inference.precision`` names no variant of the bundle, or when nothing requested may be served or loaded.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import structlog
from numpy.typing import NDArray

from edge_runtime.inference import InferenceEngine, InferenceError
from edge_runtime.inference.providers import CPU, TENSORRT, resolve_preference
from edge_runtime.sources import SyntheticScene
from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_layout import MODEL_ROLE
from edgefleet.contract.bundle_sections import PRECISIONS, PrecisionVariant
from edgefleet.contract.hardware import hardware_class
from edgefleet.contract.precision import MIN_SPEEDUP, LatencyFigures, select_precision
from edgefleet.contract.processing.preprocess import preprocess
from edgefleet.contract.request_bounds import MAX_REASON_CHARS
from edgefleet.contract.shown import shown

log = structlog.get_logger(__name__)

REFERENCE = "fp32"
DEFAULT_MAX_ACCURACY_LOSS = 0.01
DEFAULT_RUNS = 30
DEFAULT_WARMUP = 5
AUTO = "auto"
#: The longest ``VariantChoice.summary`` (an event reason) and refusal reason (a loader's error can be long).
SUMMARY_CHARS = MAX_REASON_CHARS
REFUSAL_CHARS = 300


class VariantError(InferenceError):
    """A bundle's precision variants cannot be served: a variant names an artifact the bundle lacks."""


@dataclass(frozen=True)
class VariantChoice:
    """The variant to serve, its model file, and the figures that chose it.

    ``figures``: model-only latency per measured variant (empty when only one was eligible, so nothing
    was measured); ``refused``: variant → why it may not be served; ``speedup``: reference p50 / chosen p50.
    """

    name: str
    model_path: Path
    figures: Mapping[str, LatencyFigures]
    precision: str = REFERENCE
    speedup: float = 1.0
    reference: str = REFERENCE
    refused: Mapping[str, str] = field(default_factory=dict)
    hardware_class: str = "unknown"
    provider: str = ""
    requested: str = AUTO
    #: Variant name -> its ``quant_format``/``activation_type`` words from the bundle (``U8S8 QDQ``), if any.
    kinds: Mapping[str, str] = field(default_factory=dict)
    #: Why the request was not served as asked (a config preference the bundle cannot honour); '' when it was.
    note: str = ""

    @property
    def measured(self) -> bool:
        return bool(self.figures)

    def served_on(self, provider: str) -> VariantChoice:
        """This choice, with the provider of the engine actually serving it."""
        return dataclasses.replace(self, provider=provider)

    def summary(self) -> str:
        """One line: ``int8-u8s8 (U8S8 QDQ) on CPUExecutionProvider, 3.1x vs fp32: fp32 p50 24.9 ms, int8
        44.3 ms, int8-u8s8 7.8 ms (measured on the device)``; refused variants follow with their reasons."""
        kind = self.kinds.get(self.name) or self.precision.upper()
        text = f"{self.name} ({kind}) on {self.provider or 'an unknown provider'}"
        if self.measured:
            # The reference is the chosen one itself when the request left FP32 out (nothing to compare with).
            left_out = self.reference == self.name and self.precision != REFERENCE
            versus = f"{REFERENCE} not measured" if left_out else f"{self.speedup:.1f}x vs {self.reference}"
            p50s = ", ".join(
                f"{name} {'p50 ' if i == 0 else ''}{milliseconds(fig.p50_ms)} ms"
                for i, (name, fig) in enumerate(sorted(self.figures.items()))
            )
            text += f", {versus}: {p50s} (measured on the device)"
        else:
            text += ", the only servable variant (nothing measured)"
        if self.note:
            text += f"; {self.note}"
        elif self.requested != AUTO:
            text += f"; inference.precision {self.requested}"
        if self.refused:
            text += "; refused: " + "; ".join(self.refused[n] for n in sorted(self.refused))
        # An event's reason is bounded on the wire (request_bounds.MAX_REASON_CHARS): the whole choice, with
        # every refusal, is in the reported state's details.
        return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"

    def numbers(self) -> dict[str, float]:
        """The event's numbers: ``speedup`` and ``p50_ms.<variant>`` per measured variant."""
        out = {"speedup": round(self.speedup, 4)}
        out.update({f"p50_ms.{name}": round(fig.p50_ms, 4) for name, fig in sorted(self.figures.items())})
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "chosen": self.name,
            "precision": self.precision,
            "kind": self.kinds.get(self.name, ""),
            "model": self.model_path.name,
            "speedup": round(self.speedup, 4),
            "reference": self.reference,
            "hardware_class": self.hardware_class,
            "measured_on": "device",
            "provider": self.provider,
            "requested": self.requested,
            "note": self.note,
            "measured": self.measured,
            "figures": {name: fig.to_dict() for name, fig in sorted(self.figures.items())},
            "refused": dict(sorted(self.refused.items())),
        }


def milliseconds(value: float) -> str:
    """``24.9`` (one decimal from 1 ms up), ``0.35`` below."""
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def _reference_name(variants: Mapping[str, PrecisionVariant]) -> str | None:
    marked = [n for n, v in variants.items() if v.metrics.get("reference") is True]
    if marked:
        return sorted(marked)[0]
    if REFERENCE in variants:
        return REFERENCE
    plain = [n for n, v in variants.items() if v.artifact == MODEL_ROLE]
    return sorted(plain)[0] if plain else None


def _accuracy_refusal(name: str, variant: PrecisionVariant, max_accuracy_loss: float) -> str | None:
    metrics = variant.metrics
    if metrics.get("accuracy_passed") is False:
        return f"{name}: its accuracy check failed when it was built (accuracy_passed: false)"
    loss = metrics.get("accuracy_loss")
    if loss is None:
        return f"{name}: no accuracy figures (metrics.accuracy_loss missing); rebuild it with a calibration set"
    if isinstance(loss, bool) or not isinstance(loss, int | float) or not math.isfinite(loss):
        return f"{name}: metrics.accuracy_loss must be a number, got {shown(loss)}"
    if loss > max_accuracy_loss + 1e-12:
        return f"{name}: accuracy loss {loss:.2%} is above the bound {max_accuracy_loss:.2%}"
    return None


def built_refusals(manifest: BundleManifest) -> dict[str, str]:
    """Candidates the builder tried and left out of the bundle, with its reasons (the reference variant's
    ``metrics.refused``), as ``name → "name: refused when the bundle was built: reason"``."""
    reference = _reference_name(dict(manifest.precision_variants or {}))
    variants = manifest.precision_variants or {}
    refused = variants[reference].metrics.get("refused") if reference is not None and reference in variants else None
    if not isinstance(refused, Mapping):
        return {}
    return {
        str(name): f"{name}: refused when the bundle was built: {str(reason)[:REFUSAL_CHARS] or 'no reason given'}"
        for name, reason in sorted(refused.items())
        if str(name) not in variants
    }


def eligible_variants(
    manifest: BundleManifest, *, max_accuracy_loss: float = DEFAULT_MAX_ACCURACY_LOSS
) -> tuple[str, dict[str, PrecisionVariant], dict[str, str]]:
    """``(reference name, variants that may be served, refused variant → reason)``.

    A bundle without ``precision_variants`` (or whose variants name no reference) gets an implicit
    ``fp32`` reference on the ``model`` artifact.
    """
    declared = dict(manifest.precision_variants or {})
    for name, variant in declared.items():
        if variant.artifact not in manifest.artifacts:
            raise VariantError(
                f"bundle {manifest.ref}: precision variant {shown(name)} names artifact "
                f"{shown(variant.artifact)}, which "
                f"the bundle does not have (artifacts: {', '.join(sorted(manifest.artifacts))}); rebuild it"
            )
    reference = _reference_name(declared)
    if reference is None:
        reference = REFERENCE
        declared[reference] = PrecisionVariant(MODEL_ROLE, REFERENCE, {"reference": True})
    eligible: dict[str, PrecisionVariant] = {}
    refused: dict[str, str] = {}
    for name, variant in sorted(declared.items()):
        reason = None if name == reference else _accuracy_refusal(name, variant, max_accuracy_loss)
        if reason is None:
            eligible[name] = variant
        else:
            refused[name] = reason
    return reference, eligible, refused


def variant_kind(name: str, variant: PrecisionVariant) -> str:
    """A variant's kind in words: ``U8S8 QDQ``, ``S8S8 QDQ``, ``FP16``, ``FP32``; an INT8 variant's activation
    type from its build metrics (``activation_type``), else from its name (``…u8s8…``), else signed."""
    metrics = variant.metrics
    if variant.precision != "int8":
        return variant.precision.upper()
    activation = str(metrics.get("activation_type") or ("uint8" if "u8s8" in name else "int8"))
    pair = {"uint8": "U8S8", "int8": "S8S8"}.get(activation, activation.upper())
    return f"{pair} {str(metrics.get('quant_format') or 'qdq').upper()}"


def requested_variants(request: str, manifest: BundleManifest, known: Collection[str]) -> set[str] | None:
    """The variant names ``request`` (an ``inference.precision`` value) allows; None = all (``auto``).

    ``known``: every variant of the bundle, servable or refused. Raises ``VariantError`` for a request that
    names neither a precision the bundle has nor one of its variants.
    """
    if request in ("", AUTO):
        return None
    declared = dict(manifest.precision_variants or {})
    precision_of = {name: declared[name].precision if name in declared else REFERENCE for name in known}
    if request in PRECISIONS:
        of_precision = {name for name, p in precision_of.items() if p == request}
        if of_precision:
            return of_precision
    if request in precision_of:
        return {request}
    has = ", ".join(f"{name} ({precision_of[name]})" for name in sorted(precision_of))
    built = built_refusals(manifest).get(request)
    raise VariantError(
        f"bundle {manifest.ref} has no precision variant {shown(request)} (it has: {has}"
        f"{'; ' + built if built else ''}); "
        f"set inference.precision to auto, a precision ({', '.join(PRECISIONS)}) the bundle has, "
        "or one of its variant names"
    )


def serving_provider(providers: Sequence[str], available: Sequence[str]) -> str:
    """The onnxruntime provider that would run first for bundle-style ``providers`` on a device offering
    ``available`` (the CPU provider when none of the others is there)."""
    have = set(available)
    return next((name for name in resolve_preference(providers) if name in have), CPU)


def provider_refusal(name: str, variant: PrecisionVariant, provider: str) -> str | None:
    """Why ``variant`` may not run on ``provider``, or None: TensorRT takes signed INT8 Q/DQ only, so a U8S8
    variant is a CPU candidate (not loaded, not timed: a TensorRT engine build is minutes on a Jetson)."""
    if provider == TENSORRT and variant_kind(name, variant).startswith("U8S8"):
        return f"{name}: U8S8 QDQ cannot run on TensorRT (it takes signed INT8 only); its S8S8 variants can"
    return None


def engine_flags(variant: PrecisionVariant, *, fp16: bool = False) -> tuple[bool, bool]:
    """``(fp16, int8)`` TensorRT flags to load ``variant`` with (see the module docstring)."""
    return fp16 or variant.precision == "fp16", variant.precision == "int8"


def choice_engine_flags(manifest: BundleManifest, choice: VariantChoice, *, fp16: bool = False) -> tuple[bool, bool]:
    """``(fp16, int8)`` TensorRT flags to load the variant ``choice`` picked from ``manifest`` with; ``fp16``:
    the operator's ``inference.fp16``."""
    declared = (manifest.precision_variants or {}).get(choice.name)
    variant = declared if declared is not None else PrecisionVariant(MODEL_ROLE, choice.precision)
    return engine_flags(variant, fp16=fp16)


def interleaved_latency(
    runners: Mapping[str, Callable[[], object]],
    *,
    runs: int,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> dict[str, LatencyFigures]:
    """Time each runner ``runs`` times, round-robin with a rotating first runner; figures per runner.

    ``clock`` returns nanoseconds; tests inject one to check the rule without real timing.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    order = list(runners)
    samples: dict[str, list[int]] = {name: [] for name in order}
    for i in range(runs):
        shift = i % len(order) if order else 0
        for name in order[shift:] + order[:shift]:
            start = clock()
            runners[name]()
            samples[name].append(clock() - start)
    return {name: LatencyFigures.from_samples_ns(s) for name, s in samples.items()}


def _load(
    bundle_dir: Path,
    manifest: BundleManifest,
    variant: PrecisionVariant,
    *,
    providers: Sequence[str],
    cache_dir: Path,
    warmup: int,
    intra_op_threads: int | None,
    fp16: bool,
) -> InferenceEngine:
    fp16, int8 = engine_flags(variant, fp16=fp16)
    return InferenceEngine.load(
        bundle_dir / manifest.artifact(variant.artifact).path,
        manifest.preprocess,
        manifest.postprocess,
        list(manifest.labels),
        providers=tuple(providers),
        cache_dir=cache_dir,
        bundle_digest=manifest.digest,
        warmup=warmup,
        intra_op_threads=intra_op_threads,
        fp16=fp16,
        int8=int8,
    )


def choose_variant(
    bundle_dir: Path,
    manifest: BundleManifest,
    *,
    providers: Sequence[str] | None = None,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    cache_dir: Path | None = None,
    max_accuracy_loss: float = DEFAULT_MAX_ACCURACY_LOSS,
    min_speedup: float = MIN_SPEEDUP,
    precision: str = AUTO,
    only: Collection[str] | None = None,
    fp16: bool = False,
    intra_op_threads: int | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
    available: Sequence[str] | None = None,
    strict: bool = True,
) -> VariantChoice:
    """Benchmark the servable variants of the bundle in ``bundle_dir`` on this device and choose one.

    ``providers``: bundle-style names (``tensorrt``, ``cuda``, ``cpu``), default the bundle's own list;
    ``cache_dir``: TensorRT engine/timing caches (default: a temporary directory, removed afterwards);
    ``precision``: the operator's ``inference.precision`` (``requested_variants``); ``only``: several such
    requests at once (their union); ``fp16``: the operator's ``inference.fp16``; ``available``: the device's
    onnxruntime providers (default: ``onnxruntime.get_available_providers()``); ``strict``: a request the
    bundle cannot honour is a ``VariantError`` (True) or a preference, served as ``auto`` with a ``note``
    (False: a config manifest's; see the module docstring).
    """
    bundle_dir = Path(bundle_dir)
    requests = [r for r in (precision, *(only or ())) if r not in ("", AUTO)]

    def attempt(asked: Sequence[str]) -> VariantChoice:
        return _choose(
            bundle_dir,
            manifest,
            asked,
            providers=providers,
            runs=runs,
            warmup=warmup,
            cache_dir=cache_dir,
            max_accuracy_loss=max_accuracy_loss,
            min_speedup=min_speedup,
            fp16=fp16,
            intra_op_threads=intra_op_threads,
            clock=clock,
            available=available,
        )

    if strict or not requests:
        return attempt(requests)
    _, eligible, refused = eligible_variants(manifest, max_accuracy_loss=max_accuracy_loss)
    known = {*eligible, *refused}
    missing = [r for r in requests if not _names_something(r, manifest, known)]
    kept = [r for r in requests if r not in missing]
    asked = ",".join(requests)
    has = _has(manifest, known)
    if kept:
        try:
            choice = attempt(kept)
        except VariantError as exc:
            why = f"no {','.join(kept)} variant may be served on this device"
            log.warning("precision.request_not_served", bundle=manifest.ref, requested=asked, error=str(exc))
        else:
            if not missing:
                return choice
            note = f"inference.precision {','.join(missing)} requested; bundle has {has}: ignored"
            return dataclasses.replace(choice, requested=asked, note=note)
    else:
        why = f"bundle has {has}"
    fallback = attempt([])
    note = f"inference.precision {asked} requested; {why}: serving {fallback.name}"
    log.warning("precision.request_preferred", bundle=manifest.ref, requested=asked, note=note)
    return dataclasses.replace(fallback, requested=asked, note=note)


def _names_something(request: str, manifest: BundleManifest, known: Collection[str]) -> bool:
    try:
        requested_variants(request, manifest, known)
    except VariantError:
        return False
    return True


def _has(manifest: BundleManifest, known: Collection[str]) -> str:
    """What a bundle has, for a note: ``fp32 only``, or ``fp32, int8, int8-u8s8 (int8)``."""
    declared = manifest.precision_variants or {}
    precision_of = {name: declared[name].precision if name in declared else REFERENCE for name in known}
    names = [n if precision_of[n] == n else f"{n} ({precision_of[n]})" for n in sorted(precision_of)]
    return f"{names[0]} only" if len(names) == 1 else ", ".join(names)


def _choose(
    bundle_dir: Path,
    manifest: BundleManifest,
    requests: Sequence[str],
    *,
    providers: Sequence[str] | None,
    runs: int,
    warmup: int,
    cache_dir: Path | None,
    max_accuracy_loss: float,
    min_speedup: float,
    fp16: bool,
    intra_op_threads: int | None,
    clock: Callable[[], int],
    available: Sequence[str] | None,
) -> VariantChoice:
    """``choose_variant`` for ``requests`` (precisions or variant names, none: ``auto``), strictly."""
    reference, eligible, refused = eligible_variants(manifest, max_accuracy_loss=max_accuracy_loss)
    known = {*eligible, *refused}
    wanted = tuple(providers) if providers else tuple(manifest.providers)
    first = serving_provider(wanted, ort.get_available_providers() if available is None else available)
    for name in sorted(eligible):
        reason = None if name == reference else provider_refusal(name, eligible[name], first)
        if reason is not None:
            refused[name] = reason
            del eligible[name]
    allowed: set[str] | None = None
    for request in requests:
        names = requested_variants(request, manifest, known)
        if names is not None:
            allowed = names if allowed is None else allowed | names
    shown_request = ",".join(r for r in requests if r not in ("", AUTO)) or AUTO
    if allowed is not None:
        for name in sorted(set(eligible) - allowed):
            refused[name] = f"{name}: not requested (inference.precision {shown_request})"
            del eligible[name]
        if not eligible:
            raise VariantError(
                f"bundle {manifest.ref}: no requested variant may be served "
                f"(inference.precision {shown_request}): {'; '.join(refused[n] for n in sorted(allowed))}"
            )
    for name, reason in built_refusals(manifest).items():
        refused.setdefault(name, reason)
    hw = hardware_class()
    declared = dict(manifest.precision_variants or {})
    kinds = {name: variant_kind(name, declared[name]) for name in known if name in declared}
    figures: dict[str, LatencyFigures] = {}
    chosen, speedup, chosen_provider, ref = next(iter(eligible)), 1.0, "", reference
    if len(eligible) > 1:
        with tempfile.TemporaryDirectory(prefix="edgefleet-variants-") as tmp:
            cache = Path(cache_dir) if cache_dir is not None else Path(tmp)
            engines: dict[str, InferenceEngine] = {}
            for name, variant in eligible.items():
                try:
                    engines[name] = _load(
                        bundle_dir,
                        manifest,
                        variant,
                        providers=wanted,
                        cache_dir=cache,
                        warmup=warmup,
                        intra_op_threads=intra_op_threads,
                        fp16=fp16,
                    )
                except InferenceError as exc:
                    # One variant this device cannot run (an FP16 op its provider lacks) must not cost the others.
                    refused[name] = f"{name}: cannot be loaded on this device: {str(exc)[:REFUSAL_CHARS]}"
                    log.warning("precision.variant_unloadable", bundle=manifest.ref, variant=name, error=str(exc))
            if not engines:
                raise VariantError(
                    f"bundle {manifest.ref}: no precision variant can be loaded on this device: "
                    + "; ".join(refused[n] for n in sorted(eligible))
                )
            for name in sorted(set(eligible) - set(engines)):
                del eligible[name]
            chosen = next(iter(engines))
            if len(engines) > 1:
                h, w = manifest.preprocess.size
                frame = SyntheticScene(seed=0, width=max(w, 32), height=max(h, 32)).render(0)
                runners: dict[str, Callable[[], object]] = {}
                for name, engine in engines.items():
                    tensor = np.ascontiguousarray(preprocess(frame, engine.preprocess_spec)[0])
                    runners[name] = _runner(engine, tensor)
                figures = interleaved_latency(runners, runs=runs, clock=clock)
                # With the reference left out (by the request, or unloadable), the fastest one is compared
                # against itself.
                ref = reference if reference in figures else min(figures, key=lambda n: figures[n].p50_ms)
                decision = select_precision(
                    figures, eligible=set(figures), reference=ref, min_speedup=min_speedup, hardware_class=hw
                )
                chosen, speedup = decision.chosen, decision.speedup
            elif chosen != reference:
                ref = chosen
            chosen_provider = engines[chosen].provider
    elif reference not in eligible:
        ref = chosen
    variant = eligible[chosen]
    choice = VariantChoice(
        name=chosen,
        model_path=bundle_dir / manifest.artifact(variant.artifact).path,
        figures=figures,
        precision=variant.precision,
        speedup=speedup,
        reference=ref,
        refused=refused,
        hardware_class=hw,
        provider=chosen_provider,
        requested=shown_request,
        kinds=kinds,
    )
    log.info(
        "precision.variant_chosen",
        bundle=manifest.ref,
        chosen=chosen,
        requested=shown_request,
        provider=chosen_provider,
        speedup=round(speedup, 4),
        figures={n: f.to_dict() for n, f in figures.items()},
        refused=sorted(refused),
    )
    return choice


def _runner(engine: InferenceEngine, tensor: NDArray[Any]) -> Callable[[], object]:
    def run() -> object:
        return engine.run_model(tensor)

    return run
