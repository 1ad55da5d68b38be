"""Small model files for lifecycle tests, generated with onnx.helper (y = k * x) and packaged Triton folders."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def linear_onnx(k: float, batched: bool = True, name: str = "x") -> bytes:
    """An ONNX model y = k * x: input ``x`` FP32 [batch, 1] (or [1] unbatched), output ``y`` alike
    (``models/linear.py`` writes the batched one for the README)."""
    from onnx import TensorProto, helper

    shape: list[int | str] = ["batch", 1] if batched else [1]
    graph = helper.make_graph(
        [helper.make_node("Mul", [name, "k"], ["y"])],
        "linear",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [helper.make_tensor("k", TensorProto.FLOAT, [1], [k])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


PY_MODEL = """
import numpy as np
class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb
        self.pb = pb
        if {broken!r}:
            raise RuntimeError("this version refuses to load")
    def execute(self, requests):
        pb = self.pb
        return [pb.InferenceResponse(output_tensors=[pb.Tensor("y", (pb.get_input_tensor_by_name(r, "x").as_numpy()
                * {k}).astype(np.float32))]) for r in requests]
"""

PY_CONFIG = """name: "whatever"
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def package(files: dict[str, bytes | str], top: str = "") -> bytes:
    """A .tar.gz of ``files`` (name -> content), optionally under one top-level folder."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def python_package(k: float, broken: bool = False, top: str = "") -> bytes:
    return package({"config.pbtxt": PY_CONFIG, "1/model.py": PY_MODEL.format(k=k, broken=broken)}, top)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def table_onnx(values: tuple[float, ...] = (10.0, 20.0, 30.0, 40.0)) -> bytes:
    """An ONNX lookup y = table[int(x)]: input ``x`` FP32 [batch, 1], output ``y`` alike. An x outside the
    table makes the model raise at run time (onnxruntime: indices out of bounds), as an id outside an
    embedding table does: Triton answers INTERNAL for that request only."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64), helper.make_node("Gather", ["t", "i"], ["y"])],
        "table",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("t", TensorProto.FLOAT, [len(values)], list(values))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())
