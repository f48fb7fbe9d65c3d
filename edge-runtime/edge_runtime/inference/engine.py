"""``InferenceEngine``: one loaded, warmed bundle model that turns BGR frames into ``FrameResult``s.

Owns the per-frame path: preprocess → ``session.run`` → postprocess, each timed with ``perf_counter_ns``.
Everything that can be computed once is computed at load: input/output names, the output-name list,
the normaliser constants, the provider name. At load the model's declared input (rank, dtype, static
spatial sizes) is checked against the bundle's ``preprocess`` spec, so a mismatched bundle fails when it is
staged, not on the first live frame.

An engine is safe to call from several threads (onnxruntime sessions are; nothing here mutates per frame),
which lets the canary run a shadow engine on the same frames.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import structlog
from numpy.typing import NDArray

from edge_runtime.inference.errors import ModelLoadError
from edge_runtime.inference.providers import SessionInfo, create_session
from edge_runtime.inference.results import FrameResult, Timings
from edgefleet.contract.bundle_sections import Postprocess, Preprocess
from edgefleet.contract.processing.postprocess import postprocess_scored
from edgefleet.contract.processing.preprocess import Normaliser
from edgefleet.contract.shown import shown

log = structlog.get_logger(__name__)

_ONNX_DTYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint8": "tensor(uint8)"}
_NS_PER_MS = 1_000_000.0


def _check_model(
    session: ort.InferenceSession,
    model_path: Path,
    pre: Preprocess,
    post: Postprocess,
    labels: Sequence[str],
) -> None:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelLoadError(
            f"{model_path.name}: expected exactly one model input (the image), got {[i.name for i in inputs]}"
        )
    inp = inputs[0]
    if inp.type != _ONNX_DTYPES[pre.dtype]:
        raise ModelLoadError(
            f"{model_path.name}: input {shown(inp.name)} is {inp.type} but preprocess.dtype is {shown(pre.dtype)}; "
            "make them agree in bundle.json"
        )
    shape = list(inp.shape)
    if len(shape) != 4:
        raise ModelLoadError(
            f"{model_path.name}: input {shown(inp.name)} must be rank 4 (N,C,H,W or N,H,W,C), got {shape}"
        )
    for declared, expected, axis in zip(shape[1:], pre.input_shape[1:], ("1", "2", "3"), strict=True):
        if isinstance(declared, int) and declared != expected:
            raise ModelLoadError(
                f"{model_path.name}: input {shown(inp.name)} has shape {shape} but preprocess "
                f"(size={list(pre.size)}, layout={shown(pre.layout)}) produces {list(pre.input_shape)} "
                f"(axis {axis}); fix preprocess.size/layout in bundle.json"
            )
    out = session.get_outputs()[0]
    out_shape = list(out.shape)
    if post.kind == "classification":
        classes = out_shape[-1] if out_shape else None
        if len(out_shape) != 2:
            raise ModelLoadError(
                f"{model_path.name}: classification output {shown(out.name)} must be [N, classes], got {out_shape}"
            )
    else:
        if len(out_shape) != 3:
            raise ModelLoadError(
                f"{model_path.name}: {post.kind} output {shown(out.name)} must be rank 3, got {out_shape}"
            )
        per_anchor = out_shape[1] if post.kind == "yolov8" else out_shape[2]
        extra = 4 if post.kind == "yolov8" else 5
        classes = per_anchor - extra if isinstance(per_anchor, int) else None
    if isinstance(classes, int) and labels and len(labels) != classes:
        raise ModelLoadError(
            f"{model_path.name}: model has {classes} classes but bundle.json 'labels' has {len(labels)} entries"
        )


class InferenceEngine:
    """A loaded bundle model. Create with ``InferenceEngine.load``."""

    def __init__(
        self,
        session: ort.InferenceSession,
        info: SessionInfo,
        preprocess: Preprocess,
        postprocess: Postprocess,
        labels: Sequence[str],
        bundle_digest: str,
        config_digest: str = "",
    ) -> None:
        self.session = session
        self.session_info = info
        self.preprocess_spec = preprocess
        self.postprocess_spec = postprocess
        self.labels = tuple(labels)
        self.bundle_digest = bundle_digest
        # The effective config this engine was built under ("" = not tracked). A candidate is (bundle, config):
        # two engines of one bundle under different configs are different candidates, told apart by this.
        self.config_digest = config_digest
        self.provider = info.provider
        self.input_name: str = session.get_inputs()[0].name
        # Only the first output feeds postprocessing; fetching just it avoids copying auxiliary heads.
        self.output_names: list[str] = [session.get_outputs()[0].name]
        self._normalise = Normaliser(preprocess)

    @classmethod
    def load(
        cls,
        model_path: Path,
        preprocess: Preprocess,
        postprocess: Postprocess,
        labels: Sequence[str],
        *,
        providers: Sequence[str] = ("cpu",),
        cache_dir: Path,
        bundle_digest: str,
        warmup: int = 3,
        intra_op_threads: int | None = None,
        calibration_table: Path | None = None,
        fp16: bool = False,
        int8: bool = False,
        available: Sequence[str] | None = None,
        config_digest: str = "",
    ) -> InferenceEngine:
        """Create the session on the best provider, check it against the specs, warm it ``warmup`` times."""
        model_path = Path(model_path)
        session, info = create_session(
            model_path,
            providers,
            cache_dir=cache_dir,
            calibration_table=calibration_table,
            fp16=fp16,
            int8=int8,
            intra_op_threads=intra_op_threads,
            available=available,
        )
        _check_model(session, model_path, preprocess, postprocess, labels)
        engine = cls(session, info, preprocess, postprocess, labels, bundle_digest, config_digest)
        started = time.perf_counter_ns()
        engine.warm(warmup)
        log.info(
            "inference.engine_loaded",
            model=str(model_path),
            bundle_digest=bundle_digest,
            provider=engine.provider,
            warmup_runs=warmup,
            warmup_ms=round((time.perf_counter_ns() - started) / _NS_PER_MS, 3),
        )
        return engine

    def warm(self, runs: int) -> None:
        """Run the full frame path ``runs`` times on a grey frame, so lazy allocations and kernel
        selection (TensorRT engine build on first run) happen before live frames arrive."""
        h, w = self.preprocess_spec.size
        frame = np.full((h, w, 3), 114, np.uint8)
        for i in range(runs):
            self.infer(frame, -1 - i)

    def run_tensor(self, x: NDArray[Any]) -> list[NDArray[Any]]:
        """Run the model on an already preprocessed tensor; every model output, in model order."""
        names = [o.name for o in self.session.get_outputs()]
        return list(self.session.run(names, {self.input_name: x}))

    def run_model(self, tensor: NDArray[Any]) -> NDArray[Any]:
        """The model call of the frame path: the first output for one preprocessed tensor."""
        return self.session.run(self.output_names, {self.input_name: tensor})[0]  # type: ignore[no-any-return]

    def infer(self, frame_bgr: NDArray[np.uint8], frame_id: int) -> FrameResult:
        """One frame through preprocess → model → postprocess, with per-stage timings."""
        t0 = time.perf_counter_ns()
        tensor, transform = self._normalise(frame_bgr)
        t1 = time.perf_counter_ns()
        output = self.run_model(tensor)
        t2 = time.perf_counter_ns()
        outputs, top = postprocess_scored(output, self.postprocess_spec, self.labels, transform)
        t3 = time.perf_counter_ns()
        return FrameResult(
            frame_id=frame_id,
            outputs=outputs,
            top_confidence=top,
            timings=Timings(
                pre_ms=(t1 - t0) / _NS_PER_MS,
                model_ms=(t2 - t1) / _NS_PER_MS,
                post_ms=(t3 - t2) / _NS_PER_MS,
                total_ms=(t3 - t0) / _NS_PER_MS,
            ),
            provider=self.provider,
            bundle_digest=self.bundle_digest,
        )

    def __repr__(self) -> str:
        return f"InferenceEngine(bundle_digest={shown(self.bundle_digest)}, provider={shown(self.provider)})"
