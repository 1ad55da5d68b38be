"""Triton Python-backend model ``vector_scorer``: z-score then softmax of a 1-D vector.

The maths lives in ``score`` (plain numpy) so tests can import this file by path
without Triton; ``triton_python_backend_utils`` is imported only inside Triton.
"""

from __future__ import annotations

import numpy as np


def score(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (softmax of z-scores, [mean, std, min, max], [argmax]) of a 1-D vector.

    A constant vector (std 0, length 1 included) gives z-scores of 0, hence a
    uniform distribution; never NaN. Raises ValueError on empty or non-finite input.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("values must hold at least one element")
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite numbers (no NaN or infinity)")
    mean, std = x.mean(), x.std()
    z = (x - mean) / std if std > 0 else np.zeros_like(x)
    exp = np.exp(z - z.max())
    probabilities = (exp / exp.sum()).astype(np.float32)
    stats = np.array([mean, std, x.min(), x.max()], dtype=np.float32)
    return probabilities, stats, np.array([int(np.argmax(x))], dtype=np.int64)


class TritonPythonModel:
    """Scores each request on its own (max_batch_size 0: one vector per request)."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils

    def execute(self, requests: list) -> list:
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        pb = self._pb
        values = pb.get_input_tensor_by_name(request, "values").as_numpy()
        try:
            probabilities, stats, argmax = score(values)
        except ValueError as exc:
            return pb.InferenceResponse(error=pb.TritonError(str(exc), pb.TritonError.INVALID_ARG))
        return pb.InferenceResponse(output_tensors=[
            pb.Tensor("probabilities", probabilities),
            pb.Tensor("stats", stats),
            pb.Tensor("argmax", argmax),
        ])
