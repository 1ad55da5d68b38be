"""Triton Python-backend model ``iris_classifier``: runs ``model.onnx`` with onnxruntime.

One onnxruntime session per model instance (made in ``initialize``); ``execute``
stacks every request of a dynamic batch into one ``run`` and splits the result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_session(onnx_path: str | Path):
    """Open a single-threaded onnxruntime CPU session (Triton batches, not ORT threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def predict(session, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (label [N, 1] int64, probabilities [N, 3] float32) for features [N, 4]."""
    label, probabilities = session.run(["label", "probabilities"], {"features": features})
    return label.astype(np.int64).reshape(-1, 1), probabilities.astype(np.float32)


class TritonPythonModel:
    """Concatenates the requests of a batch into one onnxruntime call."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self._session = make_session(path)

    def execute(self, requests: list) -> list:
        pb = self._pb
        parts = [pb.get_input_tensor_by_name(r, "features").as_numpy() for r in requests]
        features = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
        try:
            label, probabilities = predict(self._session, features)
        except Exception as exc:  # onnxruntime raises its own types; answer each request
            return [pb.InferenceResponse(error=pb.TritonError(f"onnxruntime failed: {exc}")) for _ in requests]
        bounds = np.cumsum([0] + [len(p) for p in parts])
        return [
            pb.InferenceResponse(output_tensors=[
                pb.Tensor("label", label[lo:hi]),
                pb.Tensor("probabilities", probabilities[lo:hi]),
            ])
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]
