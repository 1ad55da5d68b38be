"""Push options in the generated ``config.pbtxt`` (statically: Triton's own ModelConfig parses each), and
how two configs' signatures are compared for aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.domain import TritonOptions
from shared.errors import InvalidInput
from shared.lifecycle import onnxgraph, tritonconfig
from tests.lifecycle_support import linear_onnx


def text(tmp_path: Path, data: bytes, options: TritonOptions | None = None, backend: str = "onnxruntime") -> str:
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    return onnxgraph.config_text(onnxgraph.load(path), "m", backend, 64, options)


def config(tmp_path: Path, data: bytes, options: TritonOptions | None = None, backend: str = "onnxruntime") -> Any:
    return tritonconfig.parse(text(tmp_path, data, options, backend))


def groups(cfg: Any) -> list[tuple[str, int]]:
    from tritonclient.grpc import model_config_pb2

    return [(model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind), g.count) for g in cfg.instance_group]


def test_without_options_the_defaults_stay(tmp_path: Path) -> None:
    onnx = config(tmp_path, linear_onnx(2.0))
    assert onnx.max_batch_size == 64 and onnx.HasField("dynamic_batching") and not onnx.instance_group
    python = config(tmp_path, linear_onnx(2.0), backend="python")
    assert groups(python) == [("KIND_CPU", 1)]


def test_every_option_is_written(tmp_path: Path) -> None:
    options: TritonOptions = {"max_batch_size": 8, "max_queue_delay_us": 500, "instances": 3, "device": "gpu"}
    cfg = config(tmp_path, linear_onnx(2.0), options)
    assert cfg.max_batch_size == 8 and cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert groups(cfg) == [("KIND_GPU", 3)]
    off = config(tmp_path, linear_onnx(2.0), {"dynamic_batching": False, "device": "cpu"}, backend="python")
    assert off.max_batch_size == 64 and not off.HasField("dynamic_batching") and groups(off) == [("KIND_CPU", 1)]
    count_only = config(tmp_path, linear_onnx(2.0), {"instances": 2})
    assert groups(count_only) == [("KIND_AUTO", 2)]  # onnxruntime: Triton picks the device


def test_max_batch_size_0_keeps_the_full_shapes(tmp_path: Path) -> None:
    cfg = config(tmp_path, linear_onnx(2.0), {"max_batch_size": 0})
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert [list(t.dims) for t in (*cfg.input, *cfg.output)] == [[-1, 1], [-1, 1]]


@pytest.mark.parametrize(
    "options,field,words",
    [
        ({"max_batch_size": 8}, "triton_config.max_batch_size", "input 'x' has the fixed shape [1]"),
        ({"dynamic_batching": True}, "triton_config.dynamic_batching", "this model has none"),
        ({"max_queue_delay_us": 100}, "triton_config.max_queue_delay_us", "dynamic batching, which is off"),
    ],
)
def test_options_a_graph_without_a_batch_dimension_cannot_take(
    tmp_path: Path, options: TritonOptions, field: str, words: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        text(tmp_path, linear_onnx(2.0, batched=False), options)
    assert caught.value.field == field and words in caught.value.message


def test_signatures_compare_names_datatypes_and_the_shapes_callers_see(tmp_path: Path) -> None:
    batched = text(tmp_path, linear_onnx(2.0))
    assert tritonconfig.difference(batched, text(tmp_path, linear_onnx(3.0), {"max_batch_size": 8}), "a", "b") == ""
    assert tritonconfig.difference(batched, text(tmp_path, linear_onnx(3.0), {"max_batch_size": 0}), "a", "b") == ""
    unbatched = text(tmp_path, linear_onnx(2.0, batched=False))
    assert tritonconfig.difference(batched, unbatched, "v1", "v2") == (
        "input 'x' is FP32 [-1, 1] in v1, FP32 [1] in v2; output 'y' is FP32 [-1, 1] in v1, FP32 [1] in v2"
    )
    renamed = text(tmp_path, linear_onnx(2.0, name="features"))
    assert tritonconfig.difference(batched, renamed, "v1", "v2") == "input 'features' only in v2; input 'x' only in v1"
