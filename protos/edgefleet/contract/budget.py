"""Latency budgeting: the largest bundle whose measured p95 fits an SLA on one hardware class.

Owns ``rank_candidates`` (pure: numbers in, a ranked decision with its arithmetic out), the latency-profile
JSON document that ``edge-runtime profile -o json`` writes and ``fleetctl budget --profile FILE`` reads
(``PROFILE_FORMAT``; parsed by ``candidate_from_profile``), and ``parse_latency_ms`` for SLAs like ``40ms``.

Decisions, written down:
- The rule is the controller's admission rule: a candidate fits when
  ``p95 <= sla × (1 − headroom − thermal_buffer)``; p95 is end to end (pre + model + post), as measured on
  the device. Each line shows that arithmetic, e.g.
  ``p95 31.2 ms <= 40 ms × (1 − 0.20) = 32.0 ms: fits``.
- "Largest model" is measured by ``size_bytes``: the bytes of the bundle's ``model`` artifact (the FP32
  reference ONNX). It tracks parameter count, and unlike the bundle's total size it does not grow because a
  publisher also shipped an INT8 variant or a calibration table. Where the model artifact's size is unknown
  the bundle's total artifact bytes stand in (``size_basis`` says which).
- Candidates are ranked by size (largest first), then p95 (fastest first), then ref; the first that fits is
  chosen. A candidate without a profile never fits: an unmeasured budget is no budget.
- Several profiles of one bundle on one hardware class (several devices, several runs) are merged by
  taking the slowest p95 (``merge_candidates``): the budget must hold on every device of the class.
- A bundle that failed its canary (``failed_canary``: what the controller recorded, e.g. ``lab-1 in rollout
  ro_…: canary FAIL: confidence drift …``) is never chosen, however well it fits: it is known to be bad on
  live frames. Its line says so and why. Offline (``--profile FILE``) there is no such record to consult.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from edgefleet.contract.errors import BudgetError
from edgefleet.contract.shown import shown

PROFILE_FORMAT = "edgefleet.latency-profile/v1"
SIZE_MODEL = "model artifact"
SIZE_BUNDLE = "bundle"

_LATENCY_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|us|µs)?\s*$", re.IGNORECASE)
_UNIT_MS = {"ms": 1.0, "s": 1000.0, "us": 0.001, "µs": 0.001}


def parse_latency_ms(text: str) -> float:
    """``"40ms"``, ``"40 ms"``, ``"40"`` (milliseconds), ``"0.04s"`` or ``"500us"`` → milliseconds (> 0)."""
    match = _LATENCY_RE.match(text)
    if match is None:
        raise BudgetError(f"latency must look like 40ms, 0.04s or 40 (milliseconds), got {shown(text)}")
    value = float(match.group(1)) * _UNIT_MS[(match.group(2) or "ms").lower()]
    if not value > 0 or not math.isfinite(value):
        raise BudgetError(f"latency must be > 0, got {shown(text)}")
    return value


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BudgetError(f"{name} must be a number, got {shown(value)}")
    if not 0.0 <= value < 1.0:
        raise BudgetError(f"{name} must be a fraction >= 0 and < 1 (0.2 = 20%), got {shown(value)}")


def budget_ms(sla_ms: float, headroom: float, thermal_buffer: float) -> float:
    """``sla × (1 − headroom − thermal_buffer)``; raises ``BudgetError`` when that leaves no budget."""
    if isinstance(sla_ms, bool) or not isinstance(sla_ms, int | float) or not (math.isfinite(sla_ms) and sla_ms > 0):
        raise BudgetError(f"SLA must be > 0 ms, got {shown(sla_ms)}")
    _check_fraction("headroom", headroom)
    _check_fraction("thermal buffer", thermal_buffer)
    if headroom + thermal_buffer >= 1.0:
        raise BudgetError(
            f"headroom + thermal buffer must be < 1, got {headroom:g} + {thermal_buffer:g}; "
            "they would leave no latency budget"
        )
    return sla_ms * (1.0 - headroom - thermal_buffer)


def budget_formula(sla_ms: float, headroom: float, thermal_buffer: float) -> str:
    """``40 ms × (1 − 0.20)`` or, with a thermal buffer, ``40 ms × (1 − 0.20 − 0.10)``."""
    terms = f"1 − {headroom:.2f}" + (f" − {thermal_buffer:.2f}" if thermal_buffer else "")
    return f"{sla_ms:g} ms × ({terms})"


def _pair(p95: float, budget: float) -> tuple[str, str]:
    # One decimal reads best; where both round to the same text the comparison would look wrong, so show more.
    a, b = f"{p95:.1f}", f"{budget:.1f}"
    if a == b and p95 != budget:
        a, b = f"{p95:.3f}", f"{budget:.3f}"
    return a, b


def format_size(size_bytes: int) -> str:
    """``12.3 MB`` / ``456.0 kB`` / ``789 B`` (decimal units, as download sizes are shown)."""
    if size_bytes >= 1_000_000:
        return f"{size_bytes / 1_000_000:.1f} MB"
    if size_bytes >= 1_000:
        return f"{size_bytes / 1_000:.1f} kB"
    return f"{size_bytes} B"


@dataclass(frozen=True)
class BudgetCandidate:
    """One bundle on one hardware class, with its measured end-to-end latency (None = never profiled)."""

    ref: str
    digest: str
    hardware_class: str
    p95_ms: float | None
    size_bytes: int
    p50_ms: float | None = None
    samples: int = 0
    source: str = ""
    size_basis: str = SIZE_MODEL
    #: why the bundle is known to be bad (a failed canary the controller recorded); "" = no failure known
    failed_canary: str = ""

    @property
    def label(self) -> str:
        return self.ref or self.digest


@dataclass(frozen=True)
class CandidateLine:
    """A ranked candidate, whether it fits, and the arithmetic that decided it."""

    rank: int
    candidate: BudgetCandidate
    fits: bool
    line: str
    margin_ms: float | None


@dataclass(frozen=True)
class BudgetResult:
    """Every candidate in rank order, the budget, and the chosen candidate (None when none fits)."""

    sla_ms: float
    headroom: float
    thermal_buffer: float
    budget_ms: float
    formula: str
    lines: tuple[CandidateLine, ...]
    chosen: BudgetCandidate | None

    @property
    def summary(self) -> str:
        """``chosen: NAME@VER (p95 31.2 ms <= 32.0 ms)``, or why nothing was chosen."""
        if self.chosen is not None and self.chosen.p95_ms is not None:
            p95, budget = _pair(self.chosen.p95_ms, self.budget_ms)
            return f"chosen: {self.chosen.label} (p95 {p95} ms <= {budget} ms)"
        measured = [c.candidate for c in self.lines if c.candidate.p95_ms is not None]
        if not measured:
            return (
                f"none fits: no candidate has a profile; budget {self.formula} = {self.budget_ms:.1f} ms; "
                "run 'edge-runtime profile' on a device of this class"
            )
        excluded = [c.candidate for c in self.lines if c.candidate.failed_canary]
        if excluded and len(excluded) == len(self.lines):
            return (
                f"none fits: every candidate failed its canary ({', '.join(c.label for c in excluded)}); "
                "publish a fixed bundle"
            )
        measured = [c for c in measured if not c.failed_canary] or measured
        fastest = min(measured, key=lambda c: c.p95_ms or 0.0)
        p95, budget = _pair(fastest.p95_ms or 0.0, self.budget_ms)
        return (
            f"none fits: the fastest, {fastest.label}, has p95 {p95} ms > {self.formula} = {budget} ms; "
            "raise the SLA, lower the headroom, or use a smaller or INT8 model"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "sla_ms": self.sla_ms,
            "headroom": self.headroom,
            "thermal_buffer": self.thermal_buffer,
            "budget_ms": round(self.budget_ms, 4),
            "formula": self.formula,
            "chosen": self.chosen.label if self.chosen is not None else None,
            "summary": self.summary,
            "candidates": [
                {
                    "rank": c.rank,
                    "ref": c.candidate.ref,
                    "digest": c.candidate.digest,
                    "hardware_class": c.candidate.hardware_class,
                    "size_bytes": c.candidate.size_bytes,
                    "size_basis": c.candidate.size_basis,
                    "p50_ms": c.candidate.p50_ms,
                    "p95_ms": c.candidate.p95_ms,
                    "samples": c.candidate.samples,
                    "source": c.candidate.source,
                    "fits": c.fits,
                    "failed_canary": c.candidate.failed_canary,
                    "margin_ms": None if c.margin_ms is None else round(c.margin_ms, 4),
                    "line": c.line,
                }
                for c in self.lines
            ],
        }


def _check_candidate(candidate: BudgetCandidate) -> None:
    p95 = candidate.p95_ms
    if p95 is not None and (isinstance(p95, bool) or not math.isfinite(p95) or p95 < 0):
        raise BudgetError(f"candidate {candidate.label}: p95 must be a finite number >= 0 ms, got {shown(p95)}")
    if candidate.size_bytes < 0:
        raise BudgetError(f"candidate {candidate.label}: size must be >= 0 bytes, got {candidate.size_bytes}")


def _rank_key(c: BudgetCandidate) -> tuple[int, int, float, str]:
    return (-c.size_bytes, c.p95_ms is None, c.p95_ms if c.p95_ms is not None else 0.0, c.label)


def rank_candidates(
    candidates: Iterable[BudgetCandidate], sla_ms: float, headroom: float, thermal_buffer: float
) -> BudgetResult:
    """Rank by size (largest first) and choose the first whose p95 ≤ sla × (1 − headroom − thermal_buffer)."""
    budget = budget_ms(sla_ms, headroom, thermal_buffer)
    formula = budget_formula(sla_ms, headroom, thermal_buffer)
    ranked = sorted(candidates, key=_rank_key)
    lines: list[CandidateLine] = []
    chosen: BudgetCandidate | None = None
    for rank, cand in enumerate(ranked, start=1):
        _check_candidate(cand)
        head = f"{cand.label} ({format_size(cand.size_bytes)})"
        if cand.p95_ms is None:
            line = f"{head}: no profile on {cand.hardware_class or 'this class'}: does not fit (unmeasured)"
            lines.append(CandidateLine(rank, cand, False, line, None))
            continue
        fits = cand.p95_ms <= budget
        p95, shown_budget = _pair(cand.p95_ms, budget)
        verdict = "fits" if fits else "too slow"
        if cand.failed_canary:
            fits = False
            verdict = f"excluded: failed its canary ({cand.failed_canary})"
        if fits and chosen is None:
            chosen = cand
            verdict = "fits: chosen"
        line = f"{head}: p95 {p95} ms {'<=' if fits else '>'} {formula} = {shown_budget} ms: {verdict}"
        lines.append(CandidateLine(rank, cand, fits, line, budget - cand.p95_ms))
    return BudgetResult(
        sla_ms=float(sla_ms),
        headroom=float(headroom),
        thermal_buffer=float(thermal_buffer),
        budget_ms=budget,
        formula=formula,
        lines=tuple(lines),
        chosen=chosen,
    )


def merge_candidates(candidates: Iterable[BudgetCandidate]) -> list[BudgetCandidate]:
    """One candidate per (bundle, hardware class): the slowest p95 wins, samples add up; order kept."""
    merged: dict[tuple[str, str], BudgetCandidate] = {}
    for cand in candidates:
        key = (cand.digest or cand.ref, cand.hardware_class)
        seen = merged.get(key)
        if seen is None:
            merged[key] = cand
            continue
        slower = seen
        if cand.p95_ms is not None and (seen.p95_ms is None or cand.p95_ms > seen.p95_ms):
            slower = cand
        merged[key] = replace(
            slower,
            samples=seen.samples + cand.samples,
            size_bytes=max(seen.size_bytes, cand.size_bytes),
            ref=seen.ref or cand.ref,
            failed_canary=seen.failed_canary or cand.failed_canary,
        )
    return list(merged.values())


# ------------------------------------------------------------------------------ the profile JSON document


def _field(doc: Mapping[str, object], path: str, source: str) -> object:
    value: object = doc
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise BudgetError(f"{source}: field '{path}' is required in a latency profile ({PROFILE_FORMAT})")
        value = value[part]
    return value


def _number(doc: Mapping[str, object], path: str, source: str, *, optional: bool = False) -> float | None:
    try:
        value = _field(doc, path, source)
    except BudgetError:
        if optional:
            return None
        raise
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise BudgetError(f"{source}: field '{path}' must be a number >= 0, got {shown(value)}")
    return float(value)


def _text(doc: Mapping[str, object], path: str, source: str) -> str:
    value = _field(doc, path, source)
    if not isinstance(value, str):
        raise BudgetError(f"{source}: field '{path}' must be a string, got {shown(value)}")
    return value


def candidate_from_profile(document: object, *, source: str) -> BudgetCandidate:
    """A ``BudgetCandidate`` from one latency-profile document (``edge-runtime profile -o json``)."""
    if not isinstance(document, Mapping):
        raise BudgetError(f"{source}: a latency profile must be a JSON object, got {type(document).__name__}")
    fmt = document.get("format")
    if fmt != PROFILE_FORMAT:
        raise BudgetError(
            f"{source}: field 'format' must be {PROFILE_FORMAT!r}, got {shown(fmt)}; "
            "write it with 'edge-runtime profile --output json'"
        )
    model_bytes = _number(document, "bundle.model_bytes", source, optional=True)
    bundle_bytes = _number(document, "bundle.bundle_bytes", source, optional=True)
    if model_bytes:
        size, basis = int(model_bytes), SIZE_MODEL
    else:
        size, basis = int(bundle_bytes or 0), SIZE_BUNDLE
    return BudgetCandidate(
        ref=_text(document, "bundle.ref", source),
        digest=_text(document, "bundle.digest", source),
        hardware_class=_text(document, "hardware_class", source),
        p95_ms=_number(document, "stages.total.p95_ms", source),
        p50_ms=_number(document, "stages.total.p50_ms", source, optional=True),
        size_bytes=size,
        samples=1,
        source=f"file {source}",
        size_basis=basis,
    )


def select_candidates(
    candidates: Sequence[BudgetCandidate], bundles: Sequence[str], hardware_class: str
) -> list[BudgetCandidate]:
    """Candidates on ``hardware_class`` (all when empty) naming one of ``bundles`` (ref or digest; all when
    empty). A requested bundle with no candidate becomes an unmeasured candidate, so it shows in the table."""
    wanted = [b for b in bundles if b]
    out = [
        c
        for c in candidates
        if (not hardware_class or c.hardware_class == hardware_class)
        and (not wanted or c.ref in wanted or c.digest in wanted)
    ]
    for name in wanted:
        if not any(name in (c.ref, c.digest) for c in out):
            is_digest = name.startswith("sha256:")
            out.append(
                BudgetCandidate(
                    ref="" if is_digest else name,
                    digest=name if is_digest else "",
                    hardware_class=hardware_class,
                    p95_ms=None,
                    size_bytes=0,
                )
            )
    return out
