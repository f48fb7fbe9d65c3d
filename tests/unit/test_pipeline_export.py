"""PyTorch export: a real export when torch is installed, a clear error when it is not."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet_pipeline.errors import ExportError
from edgefleet_pipeline.export import export_torch


def test_missing_torch_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import torch` raise ImportError, as on a machine without torch,
    # whether or not torch is installed here.
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ExportError, match="needs torch, which is not installed"):
        export_torch(object(), None, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_opset_17_dynamic_batch(tmp_path: Path) -> None:
    torch = pytest.importorskip(
        "torch", reason="PyTorch is an optional extra (pip install 'edgefleet[torch]'); `make test` installs it"
    )
    import onnx
    import onnxruntime as ort

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten())
    path = export_torch(module, torch.zeros(1, 3, 8, 8), tmp_path / "m.onnx", output_names=("features",))
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    (out,) = session.run(["features"], {"images": x})
    expected = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)
