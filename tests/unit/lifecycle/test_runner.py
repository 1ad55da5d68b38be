"""The Python-backend runner that serves pushed ONNX files locally, run against a stand-in for Triton's
``triton_python_backend_utils``: batches concatenate into one onnxruntime run and split back."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from shared.lifecycle import onnxgraph, tritonconfig
from tests.lifecycle_support import linear_onnx


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class Response:
    def __init__(self, output_tensors: list | None = None, error: Any = None) -> None:
        self.outputs, self.error = output_tensors or [], error


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> Any:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = Tensor  # type: ignore[attr-defined]
    pb.InferenceResponse = Response  # type: ignore[attr-defined]
    pb.TritonError = str  # type: ignore[attr-defined]
    pb.get_input_tensor_by_name = lambda request, name: Tensor(name, request[name])  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    module = types.ModuleType("model")
    exec(compile(onnxgraph.runner_source(), "model.py", "exec"), module.__dict__)  # noqa: S102
    return module


def start(runner: Any, tmp_path: Path, data: bytes) -> Any:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(data)
    text = onnxgraph.config_text(onnxgraph.load(tmp_path / "1" / "model.onnx"), "m", "python", 8)
    from google.protobuf.json_format import MessageToDict

    config = MessageToDict(tritonconfig.parse(text), preserving_proto_field_name=True)
    model = runner.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path), "model_version": "1"})
    return model


def test_a_dynamic_batch_runs_once_and_splits_per_request(runner: Any, tmp_path: Path) -> None:
    model = start(runner, tmp_path, linear_onnx(3.0))
    requests = [{"x": np.array([[1.0]], np.float32)}, {"x": np.array([[2.0], [4.0]], np.float32)}]
    out = model.execute(requests)
    assert [r.outputs[0].array.tolist() for r in out] == [[[3.0]], [[6.0], [12.0]]]


def test_a_scalar_per_row_is_reshaped_both_ways(runner: Any, tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    model = start(runner, tmp_path, data)
    out = model.execute([{"x": np.array([[1.0], [2.0]], np.float32)}])
    assert out[0].outputs[0].array.tolist() == [[-1.0], [-2.0]]


def test_an_onnxruntime_error_answers_every_request(runner: Any, tmp_path: Path) -> None:
    model = start(runner, tmp_path, linear_onnx(3.0))
    out = model.execute([{"x": np.array([[1.0, 2.0]], np.float32)}])
    assert out[0].error and "onnxruntime failed" in out[0].error
