"""Write a tiny ONNX model, y = k * x (FP32, batch of one-element rows), to push with ``kinfer models push``.

    .venv/bin/python models/linear.py 2 /tmp/y2x.onnx     # y = 2x
    .venv/bin/python models/linear.py 3 /tmp/y3x.onnx     # y = 3x: same inputs and outputs, another answer
    .venv/bin/python models/linear.py 4 /tmp/wide.onnx --features 2   # rows of two features: another input shape

Versions of one model that answer differently: the README's lifecycle walk-through uses them.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def linear(k: float, features: int = 1) -> bytes:
    """y = k * x: input ``x`` FP32 [batch, features], output ``y`` alike, opset 17."""
    from onnx import TensorProto, checker, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor("k", TensorProto.FLOAT, [1], [k])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    checker.check_model(model)
    return bytes(model.SerializeToString())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("k", type=float, help="the factor")
    parser.add_argument("out", type=Path, help="where to write the .onnx file")
    parser.add_argument("--features", type=int, default=1, choices=range(1, 65), metavar="N", help="per row (1-64)")
    args = parser.parse_args(argv)
    args.out.write_bytes(linear(args.k, args.features))
    print(f"wrote {args.out}: y = {args.k:g} * x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
