"""The bundle spec (``*.spec.yaml``): everything needed to build a bundle except digests.

The publisher writes it; ``edgefleet_pipeline.bundle_builder`` turns it into a bundle directory. The model
path is relative to the spec file. Every key is documented in ``docs/bundle-spec.md``.

A spec may leave decisions to the build that bundle.json always states: ``inputs``/``outputs`` (inferred
from the model) and ``postprocess.softmax`` (``None`` here; ``edgefleet_pipeline.semantics`` runs the model and
resolves it from whether its outputs are already probabilities).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import yaml

from edgefleet.contract import bundle_sections as sections
from edgefleet.contract.bundle_fields import FieldReader
from edgefleet.contract.bundle_policy import CanaryDefaults, LatencySla
from edgefleet.contract.bundle_sections import Postprocess, PrecisionVariant, Preprocess, TensorSpec
from edgefleet.contract.errors import BundleFormatError
from edgefleet.contract.user_files import read_user_text


@dataclass(frozen=True)
class BundleSpec:
    """Everything needed to build a bundle except digests: parsed from a ``*.spec.yaml``.

    ``inputs``/``outputs`` are ``None`` when they are to be inferred from the model, ``postprocess.softmax``
    when the build is to decide it (``resolved`` says whether nothing is left to decide).
    """

    name: str
    version: str
    model: Path
    preprocess: Preprocess
    postprocess: Postprocess
    latency: LatencySla
    labels: tuple[str, ...] = ()
    canary: CanaryDefaults = field(default_factory=CanaryDefaults)
    providers: tuple[str, ...] = sections.DEFAULT_PROVIDERS
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    calibration: Mapping[str, object] | None = None
    precision_variants: Mapping[str, PrecisionVariant] | None = None

    @property
    def resolved(self) -> bool:
        """Whether the spec states everything bundle.json must (``postprocess.softmax`` decided)."""
        return self.postprocess.softmax is not None

    def declared(self) -> sections.DeclaredSections:
        """The sections this spec declares (every ``DeclaredSections`` key), as the bundle.json built from it
        gets them."""
        keys = sections.DeclaredSections.__required_keys__
        return cast(sections.DeclaredSections, {key: getattr(self, key) for key in keys})

    @staticmethod
    def from_dict(obj: object, *, source: str, base_dir: Path) -> BundleSpec:
        doc = FieldReader(source, obj)
        doc.known("name", "version", "model", *sections.SECTION_FIELDS, *sections.METADATA_FIELDS)
        model = Path(doc.string("model", pattern=re.compile(r"^.+$"), hint="a path to an .onnx file"))
        return BundleSpec(
            name=sections.parse_name(doc),
            version=sections.parse_version(doc),
            model=model if model.is_absolute() else base_dir / model,
            inputs=sections.parse_tensors(doc, "inputs") if doc.has("inputs") else None,
            outputs=sections.parse_tensors(doc, "outputs") if doc.has("outputs") else None,
            **sections.parse_declared(doc, canary_required=False, softmax_default=None),
        )


def load_spec(path: Path | str) -> BundleSpec:
    """Parse a bundle spec YAML file; the model path is relative to the spec file."""
    path = Path(path)
    text = read_user_text(path, BundleFormatError, what="spec file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BundleFormatError(f"{path.name}: is not valid YAML: {exc}") from None
    return BundleSpec.from_dict(data, source=path.name, base_dir=path.parent)
