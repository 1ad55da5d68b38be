"""The demo model build: deterministic, documented tensors, a model that really classifies iris."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

MODELS = Path(__file__).resolve().parents[2] / "models"
FP32, INT64 = model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_INT64


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"kinfer_test_{path.parent.parent.name}_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("build")
    load(MODELS / "build.py").build(out / "repository", out / "production")
    return out / "repository", out / "production"


def config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def tensors(entries) -> dict[str, tuple[int, list[int]]]:
    return {t.name: (t.data_type, list(t.dims)) for t in entries}


def test_two_builds_give_identical_onnx_bytes(built, tmp_path):
    repository, _ = built
    load(MODELS / "build.py").build(tmp_path / "again")
    first = (repository / "iris_classifier/1/model.onnx").read_bytes()
    assert (tmp_path / "again/iris_classifier/1/model.onnx").read_bytes() == first


def split_floats(data: bytes) -> tuple[bytes, np.ndarray]:
    """An ONNX model as (its bytes with every float weight zeroed, those weights in order)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(data)
    weights: list[np.ndarray] = []
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.floats:
                weights.append(np.array(attr.floats, dtype=np.float64))
                attr.floats[:] = [0.0] * len(attr.floats)
            if attr.type == onnx.AttributeProto.FLOAT:
                weights.append(np.array([attr.f]))
                attr.f = 0.0
            if attr.HasField("t"):
                tensors.append(attr.t)
    for tensor in tensors:
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind == "f":
            weights.append(array.astype(np.float64).ravel())
            tensor.CopyFrom(numpy_helper.from_array(np.zeros_like(array), tensor.name))
    return model.SerializeToString(), np.concatenate(weights) if weights else np.zeros(0)


def test_committed_repository_is_what_the_script_builds(built):
    """Byte for byte, but for the fitted weights: the solver's last bits depend on the CPU's BLAS kernels."""
    repository, production = built
    for folder, names in (
        (
            repository,
            (
                "iris_classifier/1/model.py",
                "iris_classifier/config.pbtxt",
                "iris_classifier/labels.txt",
                "vector_scorer/1/model.py",
                "vector_scorer/config.pbtxt",
            ),
        ),
        (production, ("iris_classifier/config.pbtxt", "iris_classifier/labels.txt")),
    ):
        for name in names:
            assert (MODELS / folder.name / name).read_bytes() == (folder / name).read_bytes(), name
        committed, fresh = (
            split_floats((base / "iris_classifier/1/model.onnx").read_bytes())
            for base in (MODELS / folder.name, folder)
        )
        assert committed[0] == fresh[0], f"{folder.name}: the ONNX graph differs beyond its weights"
        assert committed[1].size == fresh[1].size > 0
        np.testing.assert_allclose(committed[1], fresh[1], rtol=1e-4, atol=1e-5)


def test_iris_configs_declare_the_contract(built):
    repository, production = built
    local = config(repository / "iris_classifier/config.pbtxt")
    prod = config(production / "iris_classifier/config.pbtxt")
    assert (local.backend, prod.platform) == ("python", "onnxruntime_onnx")
    for cfg in (local, prod):
        assert cfg.name == "iris_classifier" and cfg.max_batch_size == 64
        assert 0 < cfg.dynamic_batching.max_queue_delay_microseconds <= 500
        assert tensors(cfg.input) == {"features": (FP32, [4])}
        assert tensors(cfg.output) == {"label": (INT64, [1]), "probabilities": (FP32, [3])}
        assert cfg.parameters["class_names"].string_value == "setosa,versicolor,virginica"
    assert (repository / "iris_classifier/labels.txt").read_text().split() == ["setosa", "versicolor", "virginica"]


def test_vector_scorer_config_declares_the_contract(built):
    cfg = config(built[0] / "vector_scorer/config.pbtxt")
    assert (cfg.backend, cfg.max_batch_size) == ("python", 0)
    assert tensors(cfg.input) == {"values": (FP32, [-1])}
    assert tensors(cfg.output) == {"probabilities": (FP32, [-1]), "stats": (FP32, [4]), "argmax": (INT64, [1])}


def test_onnx_graph_uses_the_triton_tensor_names_and_classifies_iris(built):
    from sklearn.datasets import load_iris

    model = load(built[0] / "iris_classifier/1/model.py")
    session = model.make_session(built[0] / "iris_classifier/1/model.onnx")
    assert [i.name for i in session.get_inputs()] == ["features"]
    assert [(o.name, o.shape[1:]) for o in session.get_outputs()] == [("label", [1]), ("probabilities", [3])]
    features, labels = load_iris(return_X_y=True)
    label, probabilities = model.predict(session, features.astype(np.float32))
    assert label.shape == (150, 1) and label.dtype == np.int64
    assert (label[:, 0] == labels).mean() > 0.9
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities.argmax(axis=1) == label[:, 0]).all()


@pytest.fixture(scope="module")
def score():
    return load(MODELS / "repository/vector_scorer/1/model.py").score


def test_vector_scorer_zscore_softmax(score):
    values = np.array([1.0, 2.0, 3.0, 10.0, -4.0], dtype=np.float32)
    probabilities, stats, argmax = score(values)
    z = (values - values.mean()) / values.std()
    expected = np.exp(z) / np.exp(z).sum()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5)
    np.testing.assert_allclose(stats, [values.mean(), values.std(), -4.0, 10.0], rtol=1e-6)
    assert probabilities.dtype == stats.dtype == np.float32 and argmax.tolist() == [3]


@pytest.mark.parametrize("values", [[7.5], [2.0, 2.0, 2.0]])
def test_vector_scorer_constant_input_is_uniform_not_nan(score, values):
    probabilities, stats, argmax = score(np.array(values, dtype=np.float32))
    np.testing.assert_allclose(probabilities, np.full(len(values), 1 / len(values)))
    assert stats.tolist() == [values[0], 0.0, values[0], values[0]] and argmax.tolist() == [0]


def test_vector_scorer_large_values_do_not_overflow(score):
    probabilities, _, _ = score(np.array([1e30, -1e30, 0.0], dtype=np.float32))
    assert np.isfinite(probabilities).all() and probabilities.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("values", [[], [1.0, float("nan")], [float("inf")]])
def test_vector_scorer_rejects_empty_and_non_finite(score, values):
    with pytest.raises(ValueError):
        score(np.array(values, dtype=np.float32))
