"""``edgefleet_testing.bundles.make_bundle`` works from a relative directory, as an operator trying it by hand
passes one."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.contract.bundle_archive import read_archive_manifest
from edgefleet.contract.signing import generate_keypair
from edgefleet_testing.bundles import make_bundle


def test_make_bundle_accepts_a_relative_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bundle = make_bundle(Path("b-1.0.0"), generate_keypair("k1"), version="1.0.0", seed=1)
    assert bundle.archive == tmp_path / "b-1.0.0" / "classifier-1.0.0.efb" and bundle.archive.is_file()
    assert read_archive_manifest(bundle.archive)[0].digest == bundle.digest
