"""Run a bundle through the edge runtime inside the OpenVINO virtualenv and print what happened, as JSON.

Run by ``test_openvino_provider.py`` as ``.venv-openvino/bin/python tests/integration/openvino_probe.py``: that
venv holds ``onnxruntime-openvino`` instead of ``onnxruntime`` (``make openvino-venv``), so this file imports
only what that venv has (the contract, the edge runtime, numpy, OpenCV), never pytest or the testing package.

The bundle is loaded the way a device stages one (``load_engine``: bundle.json, its providers, the config
resolution, ``InferenceEngine.load``); each frame is read with OpenCV, run through the engine's frame path
(labels and confidences) and through the model alone on the contract's preprocessing (the raw first output,
saved as ``<out>/<frame>.npy`` for the caller to compare with onnxruntime's CPU provider).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import structlog
from onnxruntime.capi import _pybind_state

from edge_runtime.agent.hardware import hardware_profile
from edge_runtime.agent.update.switcher import load_engine
from edge_runtime.inference.providers import create_session, select_providers, session_options
from edgefleet.contract.bundle import BundleManifest
from edgefleet.contract.bundle_layout import MANIFEST_NAME, MODEL_ROLE
from edgefleet.contract.processing.preprocess import preprocess


def _graph_providers(model: Path, manifest: BundleManifest, cache_dir: Path, work: Path) -> list[str]:
    """The providers onnxruntime's profiler saw running the model's nodes, under the options the runtime picks.

    OpenVINO takes the graph as fused subgraphs; a node it refused would show up here as a CPU node."""
    opts = session_options()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(work / "profile")
    session = ort.InferenceSession(
        str(model), sess_options=opts, providers=select_providers(manifest.providers, cache_dir=cache_dir)
    )
    tensor = np.zeros(manifest.preprocess.input_shape, np.float32)
    session.run(None, {session.get_inputs()[0].name: tensor})
    events = json.loads(Path(session.end_profiling()).read_text())
    return sorted({e["args"]["provider"] for e in events if e.get("cat") == "Node" and "provider" in e["args"]})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--frames", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # stdout carries the report alone: the runtime's logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

    manifest = BundleManifest.from_json_bytes((args.bundle / MANIFEST_NAME).read_bytes())
    digest = manifest.digest
    engine = load_engine(args.bundle, digest, cache_root=args.cache, intra_op_threads=1)
    cache_dir = args.cache / digest.removeprefix("sha256:")
    frames: dict[str, dict[str, object]] = {}
    for path in sorted(args.frames.glob("*.png")):
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        result = engine.infer(frame, len(frames))
        raw = engine.run_model(preprocess(frame, manifest.preprocess)[0])
        np.save(args.out / f"{path.stem}.npy", raw)
        frames[path.stem] = {
            "labels": [o.label for o in result.outputs],
            "confidences": [o.confidence for o in result.outputs],
            "provider": result.provider,
        }
    info = engine.session_info
    model = args.bundle / manifest.artifact(MODEL_ROLE).path
    # An OpenVINO device this box lacks: onnxruntime drops the provider, and the runtime must say so.
    _, missing = create_session(model, manifest.providers, cache_dir=cache_dir, openvino_device="NPU")
    report = {
        "onnxruntime": ort.__version__,
        "available": ort.get_available_providers(),
        "hardware_providers": list(hardware_profile(args.cache).execution_providers),
        "session": {
            "requested": list(info.requested),
            "active": list(info.active),
            "fell_back": info.fell_back,
            "unavailable": list(info.unavailable),
        },
        "provider": engine.provider,
        "graph_providers": _graph_providers(model, manifest, cache_dir, args.out),
        "openvino_devices": list(_pybind_state.get_available_openvino_device_ids()),
        "npu_session": {"active": list(missing.active), "fell_back": missing.fell_back},
        "cache_files": sorted(
            str(p.relative_to(cache_dir)) for p in cache_dir.rglob("*") if p.is_file() and "profile" not in p.name
        ),
        "frames": frames,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
