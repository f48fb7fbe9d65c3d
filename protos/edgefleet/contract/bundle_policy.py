"""The policy a bundle declares for itself: its latency SLA and its default canary thresholds.

A config manifest may override the canary defaults per fleet, site or device
(``edgefleet.contract.precedence``); the bundle's values are the floor of that precedence.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from edgefleet.contract.bundle_fields import FieldReader, section_dict


@dataclass(frozen=True)
class LatencySla:
    """End-to-end (pre + model + post) latency bound at a percentile."""

    sla_ms: float
    percentile: float = 95.0

    def to_dict(self) -> dict[str, object]:
        return section_dict(self)

    @staticmethod
    def parse(doc: FieldReader) -> LatencySla:
        doc.known("sla_ms", "percentile")
        return LatencySla(
            sla_ms=doc.number("sla_ms", gt=0.0), percentile=doc.number("percentile", 95.0, ge=50.0, lt=100.0)
        )


@dataclass(frozen=True)
class GoldenTolerance:
    """How close a device's outputs on the golden inputs must be to the reference (``np.allclose``)."""

    atol: float = 1e-3
    rtol: float = 1e-3

    def to_dict(self) -> dict[str, object]:
        return section_dict(self)

    @staticmethod
    def parse(doc: FieldReader) -> GoldenTolerance:
        doc.known("atol", "rtol")
        default = GoldenTolerance()
        return GoldenTolerance(
            atol=doc.number("atol", default.atol, ge=0.0), rtol=doc.number("rtol", default.rtol, ge=0.0)
        )


@dataclass(frozen=True)
class CanaryDefaults:
    """The bundle's default canary policy; a config manifest may override it per fleet/site/device."""

    min_frames: int = 200
    min_seconds: float = 30.0
    headroom: float = 0.2
    max_p95_ratio: float = 1.10
    psi_max: float = 0.25
    ks_alpha: float = 0.01
    min_agreement: float = 0.9
    golden_tolerance: GoldenTolerance = field(default_factory=GoldenTolerance)

    def to_dict(self) -> dict[str, object]:
        return section_dict(self)

    @staticmethod
    def parse(doc: FieldReader) -> CanaryDefaults:
        doc.known(*(f.name for f in fields(CanaryDefaults)))
        default = CanaryDefaults()  # an absent field takes the type's own default: one value, not two
        return CanaryDefaults(
            min_frames=doc.integer("min_frames", default.min_frames, ge=1),
            min_seconds=doc.number("min_seconds", default.min_seconds, ge=0.0),
            headroom=doc.number("headroom", default.headroom, ge=0.0, lt=1.0),
            max_p95_ratio=doc.number("max_p95_ratio", default.max_p95_ratio, ge=1.0),
            psi_max=doc.number("psi_max", default.psi_max, gt=0.0),
            ks_alpha=doc.number("ks_alpha", default.ks_alpha, gt=0.0, lt=1.0),
            min_agreement=doc.number("min_agreement", default.min_agreement, ge=0.0, le=1.0),
            golden_tolerance=GoldenTolerance.parse(doc.sub("golden_tolerance", required=False)),
        )
