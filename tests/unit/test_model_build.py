"""The demo model build: deterministic, documented tensors, a model that really classifies iris."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

MODELS = Path(__file__).resolve().parents[2] / "models"
FP32, INT64 = model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_INT64
STRING, BOOL, UINT32 = model_config_pb2.TYPE_STRING, model_config_pb2.TYPE_BOOL, model_config_pb2.TYPE_UINT32
TEXT_FILES = (
    "text_sentiment/config.pbtxt",
    "text_sentiment/labels.txt",
    "text_sentiment/1/model.py",
    "text_sentiment/1/weights.json",
    "tiny_lm/config.pbtxt",
    "tiny_lm/1/model.py",
    "tiny_lm/1/bigrams.json",
)


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


def test_two_builds_give_identical_text_models(built, tmp_path):
    repository, _ = built
    load(MODELS / "build.py").build(tmp_path / "again")
    for name in TEXT_FILES:
        assert (tmp_path / "again" / name).read_bytes() == (repository / name).read_bytes(), name
    assert sorted(p.name for p in repository.iterdir()) == sorted(p.name for p in (MODELS / "repository").iterdir())


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
                *TEXT_FILES,
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


# --- text_sentiment ---------------------------------------------------------------------------


def test_text_sentiment_config_declares_the_contract(built):
    cfg = config(built[0] / "text_sentiment/config.pbtxt")
    assert (cfg.name, cfg.backend, cfg.max_batch_size) == ("text_sentiment", "python", 64)
    assert 0 < cfg.dynamic_batching.max_queue_delay_microseconds <= 500
    assert tensors(cfg.input) == {"text": (STRING, [1])}
    assert tensors(cfg.output) == {"label": (STRING, [1]), "probabilities": (FP32, [2])}
    assert cfg.parameters["class_names"].string_value == "negative,positive"
    assert (built[0] / "text_sentiment/labels.txt").read_text().split() == ["negative", "positive"]


@pytest.fixture(scope="module")
def sentiment():
    return load(MODELS / "repository/text_sentiment/1/model.py")


@pytest.fixture(scope="module")
def weights(sentiment):
    return sentiment.load_weights(MODELS / "repository/text_sentiment/1/weights.json")


def test_sentiment_tokens_mark_negation_until_punctuation(sentiment):
    assert sentiment.tokens("Not GOOD, but fine!") == ["not", "not_good", "but", "fine"]
    assert sentiment.tokens("It isn\u2019t bad. Great") == ["it", "isn't", "not_bad", "great"]
    assert sentiment.tokens("") == []


def test_sentiment_weights_are_the_trained_naive_bayes(sentiment, weights):
    rows = sentiment.read_examples(MODELS / "data/sentiment.tsv")
    assert sentiment.train(rows) == weights and len(rows) > 200
    assert weights["weights"]["great"] > 0 > weights["weights"]["awful"]
    labels, _ = sentiment.classify([text for _, text in rows], weights)
    assert np.mean([got == want for got, (want, _) in zip(labels, rows, strict=True)]) > 0.95


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("a great film", "positive"),
        ("dull and awful", "negative"),
        ("I loved it, highly recommended", "positive"),
        ("not good at all", "negative"),
        ("not bad", "positive"),
        ("what a waste of money", "negative"),
    ],
)
def test_sentiment_classifies_unseen_phrasings(sentiment, weights, text, label):
    labels, probabilities = sentiment.classify([text], weights)
    assert labels == [label] and probabilities.shape == (1, 2) and probabilities.dtype == np.float32
    assert probabilities[0, 1] > 0.5 if label == "positive" else probabilities[0, 0] >= 0.5


def test_sentiment_probabilities_sum_to_one_without_overflow(sentiment, weights):
    texts = ["", "zzz unknown words", "great " * 400, "awful " * 400]
    labels, probabilities = sentiment.classify(texts, weights)
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert labels[2:] == ["positive", "negative"]


def test_sentiment_decodes_utf8_and_bounds_length(sentiment):
    values = np.array([["café".encode()], [b"x" * 2000]], dtype=np.object_)
    assert sentiment.decode_texts(values) == ["café", "x" * 2000]
    with pytest.raises(ValueError, match=r"text\[1\] is 2001 bytes"):
        sentiment.decode_texts(np.array([[b"ok"], [b"x" * 2001]], dtype=np.object_))
    with pytest.raises(ValueError, match=r"text\[0\] is not valid UTF-8"):
        sentiment.decode_texts(np.array([[b"\xff"]], dtype=np.object_))


def test_sentiment_training_data_is_checked(sentiment, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("neutral\tmeh\n")
    with pytest.raises(ValueError, match="bad.tsv:1"):
        sentiment.read_examples(bad)
    with pytest.raises(ValueError, match="both classes"):
        sentiment.train([("positive", "good")])


# --- tiny_lm ----------------------------------------------------------------------------------


def test_tiny_lm_config_has_the_vllm_backend_interface(built):
    cfg = config(built[0] / "tiny_lm/config.pbtxt")
    assert (cfg.name, cfg.backend, cfg.max_batch_size) == ("tiny_lm", "python", 0)
    assert cfg.model_transaction_policy.decoupled is True
    assert tensors(cfg.input) == {
        "text_input": (STRING, [1]),
        "stream": (BOOL, [1]),
        "sampling_parameters": (STRING, [1]),
        "exclude_input_in_output": (BOOL, [1]),
        "return_finish_reason": (BOOL, [1]),
        "return_num_input_tokens": (BOOL, [1]),
        "return_num_output_tokens": (BOOL, [1]),
    }
    assert [t.name for t in cfg.input if not t.optional] == ["text_input"]
    assert tensors(cfg.output) == {
        "text_output": (STRING, [-1]),
        "finish_reason": (STRING, [-1]),
        "num_input_tokens": (UINT32, [-1]),
        "num_output_tokens": (UINT32, [-1]),
    }


@pytest.fixture(scope="module")
def lm():
    return load(MODELS / "repository/tiny_lm/1/model.py")


@pytest.fixture(scope="module")
def bigrams(lm):
    return lm.load_model(MODELS / "repository/tiny_lm/1/bigrams.json")


def test_tiny_lm_is_trained_on_the_zen_of_python(lm, bigrams):
    zen = load(MODELS / "build.py").zen_of_python()
    assert zen.startswith("The Zen of Python, by Tim Peters") and lm.train(zen) == bigrams
    assert bigrams["next"]["better"] == [["than", 8]]
    assert bigrams["next"]["those"] == [["The", 1]]  # read as a cycle: no word without a successor
    with pytest.raises(ValueError):
        lm.train("  \n")


def test_tiny_lm_greedy_is_deterministic_and_counts_tokens(lm, bigrams):
    out = lm.generate(bigrams, "Beautiful is", lm.Sampling(max_tokens=5))
    assert out.text == " better than ugly. Explicit is" and out.deltas == [
        " better",
        " than",
        " ugly.",
        " Explicit",
        " is",
    ]
    assert (out.finish_reason, out.prompt_tokens, out.completion_tokens) == ("length", 2, 5)
    assert lm.generate(bigrams, "Beautiful is", lm.Sampling(max_tokens=5)) == out


def test_tiny_lm_unknown_or_empty_context_starts_a_line(lm, bigrams):
    for prompt in ("", "   ", "qwertyuiop"):
        out = lm.generate(bigrams, prompt, lm.Sampling(max_tokens=2))
        assert out.deltas == [" Although", " practicality"]  # the most frequent first word of a line
    assert lm.generate(bigrams, "", lm.Sampling(max_tokens=1)).prompt_tokens == 0


def test_tiny_lm_stop_cuts_before_the_stop_string_and_keeps_deltas_whole(lm, bigrams):
    out = lm.generate(bigrams, "Beautiful is", lm.Sampling(max_tokens=50, stop=("than ug",)))
    assert (out.text, out.finish_reason) == (" better ", "stop")
    assert out.deltas == [" better", " ", ""] and "".join(out.deltas) == out.text  # no text sent then taken back
    first = lm.generate(bigrams, "Beautiful is", lm.Sampling(max_tokens=50, stop=("nope", "ugly", "better")))
    assert (first.text, first.completion_tokens) == (" ", 1)  # " better": cut before "better"


def test_tiny_lm_sampling_is_seeded_and_top_p_narrows(lm, bigrams):
    def run(**kw):
        return lm.generate(bigrams, "Errors should", lm.Sampling(max_tokens=40, temperature=1.0, **kw)).text

    assert run(seed=4) == run(seed=4)
    assert len({run(seed=s) for s in range(8)}) > 1
    greedy = lm.generate(bigrams, "Errors should", lm.Sampling(max_tokens=40)).text
    assert {run(seed=s, top_p=1e-9) for s in range(5)} == {greedy}  # only the most likely word is left
    assert lm.generate(bigrams, "x", lm.Sampling(max_tokens=512, temperature=3.0)).completion_tokens == 512


def test_tiny_lm_parses_vllm_sampling_parameters(lm):
    assert lm.parse_sampling(None) == lm.parse_sampling("{}") == lm.Sampling(16, 0.0, 1.0, (), 0)
    parsed = lm.parse_sampling(b'{"max_tokens": "8", "temperature": 0.5, "top_p": 0.9, "stop": "x", "seed": 3, "n": 1}')
    assert parsed == lm.Sampling(8, 0.5, 0.9, ("x",), 3)
    assert lm.parse_sampling('{"max_tokens": null, "stop": null}') == lm.Sampling()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[1]", "JSON object"),
        ("{", "JSON object"),
        ('{"max_tokens": 0}', "max_tokens must be an integer from 1 to 512"),
        ('{"max_tokens": 513}', "from 1 to 512, not 513"),
        ('{"max_tokens": 2.5}', "max_tokens must be an integer"),
        ('{"max_tokens": true}', "max_tokens must be an integer"),
        ('{"temperature": -0.1}', "temperature must be a number at least 0"),
        ('{"temperature": "hot"}', "temperature must be a number"),
        ('{"top_p": 0}', "top_p must be a number more than 0"),
        ('{"top_p": 1.5}', "top_p"),
        ('{"stop": [1]}', "stop must be a string or a list of strings"),
        ('{"stop": [""]}', "stop holds at most 16 strings of 1 to 256"),
        ('{"stop": ' + json.dumps(["a"] * 17) + "}", "stop holds at most 16"),
        ('{"seed": -1}', "seed must be an integer"),
        ('{"stop": "' + "x" * 20000 + '"}', "longer than"),
    ],
)
def test_tiny_lm_rejects_bad_sampling_parameters(lm, text, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        lm.parse_sampling(text)


def test_tiny_lm_reads_inputs_like_vllm(lm):
    read = lm.read_request
    assert read(b"hi", None, None, None).prepend_input is True  # stream false: prompt + completion
    assert read(b"hi", True, None, None).prepend_input is False  # stream: the completion only
    assert read(b"hi", False, True, None).prepend_input is False
    with pytest.raises(ValueError, match="When streaming, `exclude_input_in_output` = False is not allowed"):
        read(b"hi", True, False, None)
    with pytest.raises(ValueError, match="at most 65536"):
        read(b"x" * 65537, False, None, None)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        read(b"\xc3", False, None, None)
    flags = read("hi", False, None, None, {"return_finish_reason": True, "return_num_output_tokens": False})
    assert (flags.finish_reason, flags.num_input_tokens, flags.num_output_tokens) == (True, False, False)


def test_tiny_lm_responses_match_the_vllm_backend(lm, bigrams):
    extras = {"return_finish_reason": True, "return_num_input_tokens": True, "return_num_output_tokens": True}
    once = lm.read_request(b"Beautiful is", False, None, '{"max_tokens": 3}', extras)
    [whole] = lm.responses(once, lm.generate(bigrams, once.prompt, once.sampling))
    assert whole["text_output"].tolist() == [b"Beautiful is better than ugly."]
    assert whole["finish_reason"].tolist() == [b"length"]
    assert whole["num_input_tokens"].dtype == whole["num_output_tokens"].dtype == np.uint32
    assert (whole["num_input_tokens"].tolist(), whole["num_output_tokens"].tolist()) == ([2], [3])
    stream = lm.read_request(b"Beautiful is", True, None, '{"max_tokens": 3}', extras)
    parts = lm.responses(stream, lm.generate(bigrams, stream.prompt, stream.sampling))
    assert [p["text_output"].tolist() for p in parts] == [[b" better"], [b" than"], [b" ugly."]]
    assert [p["finish_reason"].tolist() for p in parts] == [[b"None"], [b"None"], [b"length"]]
    assert [p["num_output_tokens"].tolist() for p in parts] == [[1], [1], [1]]  # deltas, as vLLM sends
    plain = lm.read_request(b"Beautiful is", True, None, '{"max_tokens": 3}')
    assert [sorted(p) for p in lm.responses(plain, lm.generate(bigrams, plain.prompt, plain.sampling))] == [
        ["text_output"]
    ] * 3
