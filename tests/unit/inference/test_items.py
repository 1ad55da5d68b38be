"""The vectorised batch path: which chunks qualify, and that anything unusual falls back."""

from __future__ import annotations

import numpy as np
import pytest

from shared.backends.triton import ModelInfo, TensorSpec
from shared.inference.items import uniform_rows


def iris() -> ModelInfo:
    return ModelInfo(
        "iris_classifier",
        (TensorSpec("features", "FP32", (4,)),),
        (TensorSpec("label", "INT64", (1,)), TensorSpec("probabilities", "FP32", (3,))),
        64,
    )


def test_uniform_rows_become_one_array() -> None:
    items = [{"data": [5.1, 3.5, 1.4, 0.2]}, {"features": [6, 3, 5, 2]}]
    array = uniform_rows(iris(), items)
    assert array is not None and array.shape == (2, 4) and array.dtype == np.float32


@pytest.mark.parametrize(
    "items",
    [
        [{"data": [1, 2, 3, 4]}, {"data": []}],
        [{"data": [1, 2, 3, 4]}, {"data": [1, 2, 3]}],
        [{"data": [1, 2, 3, 4]}, {"data": ["a", 2, 3, 4]}],
        [{"data": [1, 2, 3, 4]}, {"data": [float("nan"), 2, 3, 4]}],
        [{"data": [[1, 2, 3, 4], [1, 2, 3, 4]]}],
        [{"data": [1, 2, 3, 4], "extra": 1}],
        [{"other": [1, 2, 3, 4]}],
        ["not an object"],
        [],
    ],
)
def test_anything_unusual_takes_the_general_path(items: list) -> None:
    assert uniform_rows(iris(), items) is None
