"""Triton configs written from ONNX graphs, for both ways of serving them (statically: no Triton)."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx import TensorProto, helper

from shared.errors import InvalidInput
from shared.lifecycle import onnxgraph, tritonconfig
from tests.lifecycle_support import linear_onnx


def model_of(inputs: list, outputs: list, nodes: list | None = None, metadata: dict | None = None) -> bytes:
    nodes = nodes or [helper.make_node("Identity", [inputs[0].name], [outputs[0].name])]
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if metadata:
        helper.set_model_props(model, metadata)
    return bytes(model.SerializeToString())


def load(tmp_path: Path, data: bytes) -> object:
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    return onnxgraph.load(path)


def config(tmp_path: Path, data: bytes, backend: str = "onnxruntime") -> object:
    text = onnxgraph.config_text(load(tmp_path, data), "m", backend, 64)
    return tritonconfig.parse(text)  # Triton's own ModelConfig protobuf accepts it


def test_a_dynamic_first_dimension_is_the_batch_on_the_onnxruntime_backend(tmp_path: Path) -> None:
    cfg = config(tmp_path, linear_onnx(2.0))
    assert cfg.platform == "onnxruntime_onnx" and cfg.default_model_filename == "model.onnx" and not cfg.backend
    assert cfg.max_batch_size == 64 and cfg.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in cfg.input] == [("x", [1])]
    assert [(t.name, list(t.dims)) for t in cfg.output] == [("y", [1])]
    assert not cfg.instance_group, "production: Triton puts an instance on each GPU"


def test_the_python_backend_runs_it_locally_with_one_cpu_instance(tmp_path: Path) -> None:
    cfg = config(tmp_path, linear_onnx(2.0), backend="python")
    assert cfg.backend == "python" and not cfg.platform and cfg.max_batch_size == 64
    assert [g.count for g in cfg.instance_group] == [1]
    assert b"class TritonPythonModel" in onnxgraph.runner_source()


def test_static_shapes_are_unbatched_with_full_dims(tmp_path: Path) -> None:
    cfg = config(tmp_path, linear_onnx(2.0, batched=False))
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [1]


def test_a_scalar_per_row_travels_as_one_element_reshaped(tmp_path: Path) -> None:
    data = model_of(
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["n"])],
    )
    cfg = config(tmp_path, data)
    assert list(cfg.input[0].dims) == [1] and cfg.input[0].HasField("reshape")
    assert list(cfg.input[0].reshape.shape) == [] and tritonconfig.signature(tritonconfig.render(cfg)).startswith(
        "max_batch_size 64; inputs x INT64 [1]"
    )


def test_initializers_are_not_inputs_and_class_names_become_a_parameter(tmp_path: Path) -> None:
    data = model_of(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 3])],
        metadata={"class_names": "a,b,c"},
    )
    cfg = config(tmp_path, data)
    assert [t.name for t in cfg.input] == ["x"] and cfg.parameters["class_names"].string_value == "a,b,c"


@pytest.mark.parametrize(
    "elem,word",
    [(TensorProto.STRING, "STRING"), (TensorProto.BFLOAT16, "BFLOAT16"), (TensorProto.COMPLEX64, "COMPLEX64")],
)
def test_tensor_types_kinfer_cannot_carry_are_refused_by_name(tmp_path: Path, elem: int, word: str) -> None:
    data = model_of(
        [helper.make_tensor_value_info("s", elem, ["n", 1])], [helper.make_tensor_value_info("y", elem, ["n", 1])]
    )
    with pytest.raises(InvalidInput) as err:
        onnxgraph.config_text(load(tmp_path, data), "m", "onnxruntime", 8)
    assert f"input 's' has the unsupported tensor type {word}" in err.value.message
    assert err.value.field == "artifact"


def test_not_onnx_truncated_and_invalid_graphs_are_refused(tmp_path: Path) -> None:
    for data, words in (
        (b"\x00\x01garbage", "not an ONNX model"),
        (linear_onnx(2.0)[:30], "ONNX model"),
        (
            model_of(
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                [helper.make_node("Mul", ["x", "nope"], ["y"])],
            ),
            "corrupt or invalid",
        ),
    ):
        with pytest.raises(InvalidInput) as err:
            load(tmp_path, data)
        assert words in err.value.message


def test_external_data_is_refused_with_what_to_push_instead(tmp_path: Path) -> None:
    import numpy as np
    from onnx import numpy_helper

    data = model_of(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [helper.make_node("Add", ["x", "w"], ["y"])],
    )
    import onnx

    model = onnx.load_from_string(data)
    weight = numpy_helper.from_array(np.ones(2, np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="weights.bin")
    weight.ClearField("raw_data")
    model.graph.initializer.append(weight)
    with pytest.raises(InvalidInput, match=r"\.tar\.gz"):
        load(tmp_path, model.SerializeToString())


def test_tensor_names_are_escaped_so_they_cannot_add_to_the_config(tmp_path: Path) -> None:
    # a name that, pasted between quotes, would close its string and declare a second input (and
    # a backend parameter); one with a backslash that would swallow the closing quote
    evil = 'x" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "smuggled'
    tricky = 'y\\" } ] parameters [ { key: "EXECUTION_ENV_PATH" value: { string_value: "/tmp/env" } } ] #{'
    data = model_of(
        [helper.make_tensor_value_info(evil, TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info(tricky, TensorProto.FLOAT, ["n", 2])],
        metadata={"class_names": 'a\\,b" } } ]'},
    )
    for backend in ("onnxruntime", "python"):
        cfg = config(tmp_path, data, backend)
        assert [t.name for t in cfg.input] == [evil] and [t.name for t in cfg.output] == [tricky]
        assert set(cfg.parameters) == {"class_names"} and cfg.parameters["class_names"].string_value == "a\\,b } } ]"


@pytest.mark.parametrize("name", ["x\ny", "x\x00", "x\ry", "x\x7f", "z" * 257])
def test_tensor_names_triton_cannot_carry_are_refused(tmp_path: Path, name: str) -> None:
    data = model_of(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 2])],
        nodes=[helper.make_node("Identity", ["x"], [name])],
    )
    with pytest.raises(InvalidInput) as err:
        onnxgraph.config_text(load(tmp_path, data), "m", "onnxruntime", 64)
    assert "output" in err.value.message and err.value.field == "artifact"
