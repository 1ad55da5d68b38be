"""Build the demo Triton model repository deterministically.

    .venv/bin/python models/build.py [--out models/repository] [--production models/production]

Writes ``iris_classifier`` (scikit-learn LogisticRegression on the bundled iris
data, exported to ONNX, served by the Python backend through onnxruntime) and
``vector_scorer`` (numpy, variable-length FP32 vector) for the local Triton, and
``production/iris_classifier`` (the same ONNX file for the NGC image's
onnxruntime backend). Fixed seeds and a fixed graph name: two builds give
byte-identical ONNX files.

Two text models, numpy only: ``text_sentiment`` (binary naive Bayes trained on
``data/sentiment.tsv``, weights in ``1/weights.json``) and ``tiny_lm`` (a word
bigram model of the Zen of Python, which ships with Python as ``this.s``,
decoupled, with the tensor interface of Triton's vLLM backend; ``1/bigrams.json``).
Their weights are rounded or integer counts, so every build writes the same bytes.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import importlib.util
import io
import logging
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
DATA = HERE / "data"
CLASS_NAMES = ("setosa", "versicolor", "virginica")
FEATURE_NAMES = ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")
OPSET = 17
SEED = 0

IRIS_TENSORS = """\
input [
  { name: "features" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "label" data_type: TYPE_INT64 dims: [ 1 ] },
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" }
]
parameters [
  { key: "class_names" value: { string_value: "%(classes)s" } },
  { key: "feature_names" value: { string_value: "%(features)s" } }
]
dynamic_batching { max_queue_delay_microseconds: 200 }
"""

IRIS_LOCAL = """\
name: "iris_classifier"
backend: "python"
max_batch_size: 64
%(tensors)sinstance_group [ { kind: KIND_CPU count: 1 } ]
"""

# No instance_group: Triton puts one instance on each GPU, or on the CPU without one.
IRIS_PRODUCTION = """\
name: "iris_classifier"
platform: "onnxruntime_onnx"
max_batch_size: 64
%(tensors)s"""

VECTOR_SCORER = """\
name: "vector_scorer"
backend: "python"
max_batch_size: 0
input [
  { name: "values" data_type: TYPE_FP32 dims: [ -1 ] }
]
output [
  { name: "probabilities" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "stats" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "argmax" data_type: TYPE_INT64 dims: [ 1 ] }
]
parameters [
  { key: "stats_order" value: { string_value: "mean,std,min,max" } }
]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

TEXT_SENTIMENT = """\
name: "text_sentiment"
backend: "python"
max_batch_size: 64
input [
  { name: "text" data_type: TYPE_STRING dims: [ 1 ] }
]
output [
  { name: "label" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 2 ] label_filename: "labels.txt" }
]
parameters [
  { key: "class_names" value: { string_value: "negative,positive" } }
]
dynamic_batching { max_queue_delay_microseconds: 200 }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

# The inputs and outputs of Triton's vLLM backend (src/model.py, auto_complete_config) that a
# text-only client uses; decoupled, no Triton batching (the engine batches).
TINY_LM = """\
name: "tiny_lm"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [
  { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "stream" data_type: TYPE_BOOL dims: [ 1 ] optional: true },
  { name: "sampling_parameters" data_type: TYPE_STRING dims: [ 1 ] optional: true },
  { name: "exclude_input_in_output" data_type: TYPE_BOOL dims: [ 1 ] optional: true },
  { name: "return_finish_reason" data_type: TYPE_BOOL dims: [ 1 ] optional: true },
  { name: "return_num_input_tokens" data_type: TYPE_BOOL dims: [ 1 ] optional: true },
  { name: "return_num_output_tokens" data_type: TYPE_BOOL dims: [ 1 ] optional: true }
]
output [
  { name: "text_output" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "finish_reason" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "num_input_tokens" data_type: TYPE_UINT32 dims: [ -1 ] },
  { name: "num_output_tokens" data_type: TYPE_UINT32 dims: [ -1 ] }
]
parameters [
  { key: "tokenizer" value: { string_value: "whitespace" } },
  { key: "max_tokens_limit" value: { string_value: "512" } }
]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def train_iris():
    """Fit a standardised LogisticRegression on all 150 iris rows (fixed seed)."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=SEED))
    model.fit(features.astype(np.float32), labels)
    return model


def iris_to_onnx(model) -> bytes:
    """Export to ONNX: input ``features`` [N,4] FP32, outputs ``label`` [N,1] INT64, ``probabilities`` [N,3]."""
    from onnx import helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    onx = convert_sklearn(
        model,
        initial_types=[("features", FloatTensorType([None, 4]))],
        options={LogisticRegression: {"zipmap": False}},
        target_opset=OPSET,
    )
    _reshape_label(onx, helper, numpy_helper)
    onx.graph.name = "iris_classifier"  # skl2onnx names it with a random uuid
    onx.doc_string = "Iris classifier; classes: " + ",".join(CLASS_NAMES)
    _dedupe_opsets(onx)
    for value in list(onx.graph.input) + list(onx.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    helper.set_model_props(onx, {"class_names": ",".join(CLASS_NAMES)})
    import onnx

    onnx.checker.check_model(onx)
    return onx.SerializeToString()


def _reshape_label(onx, helper, numpy_helper) -> None:
    """Make ``label`` [N, 1] (Triton dims [1]) instead of skl2onnx's [N]."""
    from onnx import TensorProto

    for node in onx.graph.node:
        node.output[:] = ["label_1d" if out == "label" else out for out in node.output]
    onx.graph.initializer.append(numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "label_shape"))
    onx.graph.node.append(helper.make_node("Reshape", ["label_1d", "label_shape"], ["label"], name="LabelColumn"))
    label = next(out for out in onx.graph.output if out.name == "label")
    label.CopyFrom(helper.make_tensor_value_info("label", TensorProto.INT64, [None, 1]))


def _dedupe_opsets(onx) -> None:
    """Keep one opset import per domain (skl2onnx may list the default domain twice)."""
    seen: dict[str, int] = {}
    for entry in onx.opset_import:
        seen[entry.domain] = max(seen.get(entry.domain, 0), entry.version)
    del onx.opset_import[:]
    for domain, version in sorted(seen.items()):
        entry = onx.opset_import.add()
        entry.domain, entry.version = domain, version


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")


def _iris_tensors() -> str:
    return IRIS_TENSORS % {"classes": ",".join(CLASS_NAMES), "features": ",".join(FEATURE_NAMES)}


def write_iris(model_dir: Path, onnx_bytes: bytes, config: str, model_py: bool) -> None:
    """Write one iris_classifier model folder (config, labels, 1/model.onnx, maybe 1/model.py)."""
    _write(model_dir / "config.pbtxt", config)
    _write(model_dir / "labels.txt", "\n".join(CLASS_NAMES) + "\n")
    _write(model_dir / "1" / "model.onnx", onnx_bytes)
    if model_py:
        shutil.copyfile(SOURCES / "iris_classifier.py", model_dir / "1" / "model.py")


def write_vector_scorer(model_dir: Path) -> None:
    _write(model_dir / "config.pbtxt", VECTOR_SCORER)
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SOURCES / "vector_scorer.py", model_dir / "1" / "model.py")


def load_source(name: str) -> ModuleType:
    """A model source of ``src/`` as a module (its pure functions; Triton is not needed)."""
    spec = importlib.util.spec_from_file_location(f"kinfer_build_{name}", SOURCES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def zen_of_python() -> str:
    """The Zen of Python, as the standard library ships it (``this.s``, rot13); importing prints it."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


def write_text_sentiment(model_dir: Path) -> None:
    source = load_source("text_sentiment")
    weights = source.train(source.read_examples(DATA / "sentiment.tsv"))
    _write(model_dir / "config.pbtxt", TEXT_SENTIMENT)
    _write(model_dir / "labels.txt", "\n".join(source.CLASS_NAMES) + "\n")
    _write(model_dir / "1" / source.WEIGHTS_FILE, source.dumps(weights))
    shutil.copyfile(SOURCES / "text_sentiment.py", model_dir / "1" / "model.py")


def write_tiny_lm(model_dir: Path) -> None:
    source = load_source("tiny_lm")
    _write(model_dir / "config.pbtxt", TINY_LM)
    _write(model_dir / "1" / source.MODEL_FILE, source.dumps(source.train(zen_of_python())))
    shutil.copyfile(SOURCES / "tiny_lm.py", model_dir / "1" / "model.py")


def build(out: Path, production: Path | None = None) -> bytes:
    """Write the local repository at ``out`` (and the production one); return the ONNX bytes."""
    onnx_bytes = iris_to_onnx(train_iris())
    tensors = _iris_tensors()
    write_iris(out / "iris_classifier", onnx_bytes, IRIS_LOCAL % {"tensors": tensors}, model_py=True)
    write_vector_scorer(out / "vector_scorer")
    write_text_sentiment(out / "text_sentiment")
    write_tiny_lm(out / "tiny_lm")
    if production is not None:
        write_iris(production / "iris_classifier", onnx_bytes, IRIS_PRODUCTION % {"tensors": tensors}, model_py=False)
    return onnx_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "repository", help="local (Python backend) repository")
    parser.add_argument(
        "--production", type=Path, default=HERE / "production", help="NGC (onnxruntime backend) repository"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    onnx_bytes = build(args.out, args.production)
    log.info("wrote %s and %s (model.onnx: %d bytes)", args.out, args.production, len(onnx_bytes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
