"""The request coalescer with a fake Triton: merging, each caller its own rows, errors per caller."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from shared.backends import coalesce
from shared.backends.coalesce import Coalescer
from shared.backends.triton import ModelInfo, TensorSpec
from shared.errors import InvalidInput, ModelError, Unavailable

IRIS = ModelInfo("iris", (TensorSpec("features", "FP32", (4,)),), (TensorSpec("score", "FP32", (1,)),), 8)


class FakeTriton:
    """Answers each row with its first feature; rejects a batch holding a row whose first feature is < 0."""

    def __init__(self, delay: float = 0.0, fail: BaseException | None = None) -> None:
        self.batches: list[int] = []
        self.delay, self.fail = delay, fail

    async def infer(
        self,
        url: str,
        info: ModelInfo,
        arrays: Mapping[str, np.ndarray],
        headers: Any = None,
        version: str | None = None,
        label: str | None = None,
    ) -> dict[str, np.ndarray]:
        rows = arrays["features"]
        self.batches.append(len(rows))
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        if (rows[:, 0] < 0).any():
            raise InvalidInput("the model rejected the input")
        if (rows[:, 0] > 1000).any():  # e.g. an id outside the model's embedding table
            raise ModelError("the model failed on this input")
        return {"score": rows[:, :1].copy()}


def row(x: float) -> dict[str, np.ndarray]:
    return {"features": np.array([[x, 0, 0, 0]], np.float32)}


async def many(c: Coalescer, values: list[float]) -> list[Any]:
    return await asyncio.gather(*(c.infer("h:1", IRIS, row(v)) for v in values), return_exceptions=True)


def test_requests_arriving_together_become_one_triton_request_and_each_gets_its_row() -> None:
    triton = FakeTriton()
    answers = asyncio.run(many(Coalescer(triton.infer, 0.002), [1, 2, 3, 4, 5]))
    assert triton.batches == [5]
    assert [a["score"].tolist() for a in answers] == [[[1.0]], [[2.0]], [[3.0]], [[4.0]], [[5.0]]]


def test_batches_never_exceed_max_batch_size() -> None:
    triton = FakeTriton()
    answers = asyncio.run(many(Coalescer(triton.infer, 0.002), list(range(20))))
    assert sum(triton.batches) == 20 and max(triton.batches) <= IRIS.max_batch_size
    assert [float(a["score"][0, 0]) for a in answers] == [float(i) for i in range(20)]


def test_while_requests_are_in_flight_new_ones_wait_and_merge() -> None:
    triton = FakeTriton(delay=0.01)

    async def waves() -> list[Any]:
        c = Coalescer(triton.infer, 0.05)
        first = []
        for i in range(coalesce.PIPELINE):  # each goes alone: the pipeline had room when it came
            first.append(asyncio.ensure_future(c.infer("h:1", IRIS, row(i))))
            await asyncio.sleep(0.001)
        later = [asyncio.ensure_future(c.infer("h:1", IRIS, row(10 + i))) for i in range(6)]
        return await asyncio.gather(*first, *later)

    answers = asyncio.run(waves())
    assert triton.batches == [1] * coalesce.PIPELINE + [6]  # the six that came while it was full went together
    assert [float(a["score"][0, 0]) for a in answers[-6:]] == [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]


def test_one_callers_bad_input_fails_only_that_caller() -> None:
    triton = FakeTriton()
    answers = asyncio.run(many(Coalescer(triton.infer, 0.002), [1, -1, 3]))
    assert triton.batches[0] == 3 and sorted(triton.batches[1:]) == [1, 1, 1]  # merged, then each alone
    assert isinstance(answers[1], InvalidInput)
    assert float(answers[0]["score"][0, 0]) == 1.0 and float(answers[2]["score"][0, 0]) == 3.0


def test_a_model_that_fails_on_one_callers_input_fails_only_that_caller() -> None:
    triton = FakeTriton()
    answers = asyncio.run(many(Coalescer(triton.infer, 0.002), [1, 5000, 3, 4]))
    assert triton.batches[0] == 4 and sorted(triton.batches[1:]) == [1, 1, 1, 1]
    assert isinstance(answers[1], ModelError) and answers[1].status == 422
    assert [float(answers[i]["score"][0, 0]) for i in (0, 2, 3)] == [1.0, 3.0, 4.0]


def test_a_backend_failure_reaches_every_caller_as_one_exception() -> None:
    failure = Unavailable("the Triton backend of model 'iris' version '1' is unavailable")
    answers = asyncio.run(many(Coalescer(FakeTriton(fail=failure).infer, 0.002), [1, 2, 3]))
    assert all(a is failure for a in answers)  # the balancer counts it against the breaker once


def test_wait_zero_disables_coalescing_and_batches_are_sent_alone() -> None:
    triton = FakeTriton()
    asyncio.run(many(Coalescer(triton.infer, 0), [1, 2, 3]))
    assert triton.batches == [1, 1, 1]
    c = Coalescer(triton.infer, 0.002)
    two = {"features": np.ones((2, 4), np.float32)}
    asyncio.run(c.infer("h:1", IRIS, two))
    assert triton.batches[-1] == 2  # several rows: not coalesced


@pytest.mark.parametrize("info", [ModelInfo("v", (TensorSpec("values", "FP32", (-1,)),), (), 0)])
def test_unbatched_models_are_never_merged(info: ModelInfo) -> None:
    assert not Coalescer.eligible(info, {"values": np.ones(3, np.float32)})
