"""Triton Python-backend model ``text_sentiment``: binary naive Bayes sentiment of English text.

``tokens``, ``train`` and ``classify`` are plain Python/numpy so that ``models/build.py`` trains
with the very tokenizer the model serves with, and tests import this file by path without
Triton; ``triton_python_backend_utils`` is imported only inside Triton. The weights
(``weights.json`` beside this file: a bias and one log-likelihood ratio per token) come from
``models/data/sentiment.tsv``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np

CLASS_NAMES = ("negative", "positive")
MAX_TEXT_BYTES = 2000
ALPHA = 1.0  # Laplace smoothing
DIGITS = 6  # weights are rounded, so two builds write the same bytes on any libm
WEIGHTS_FILE = "weights.json"

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[.,!?;:]")
_NEGATIONS = frozenset({"not", "no", "never", "nothing", "nobody", "none", "neither", "nor", "cannot", "without"})
_PUNCTUATION = frozenset(".,!?;:")


class Weights(TypedDict):
    """A trained model: log prior ratio and per-token log-likelihood ratios (positive vs negative)."""

    classes: list[str]
    bias: float
    weights: dict[str, float]


def tokens(text: str) -> list[str]:
    """Lower-cased words; a word after a negation ("not", "no", "...n't") up to the next
    punctuation mark becomes ``not_<word>`` (so "not good" and "good" weigh differently)."""
    words: list[str] = []
    negated = False
    for token in _TOKEN.findall(text.lower().replace("\u2019", "'")):
        if token in _PUNCTUATION:
            negated = False
            continue
        words.append(f"not_{token}" if negated else token)
        if token in _NEGATIONS or token.endswith("n't"):
            negated = True
    return words


def read_examples(path: Path) -> list[tuple[str, str]]:
    """(label, text) rows of a ``label<TAB>text`` file; ``#`` comments and blank lines skipped."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        label, _, text = line.partition("\t")
        if label not in CLASS_NAMES or not text.strip():
            raise ValueError(f"{path}:{number}: expected 'negative|positive<TAB>text', got {line!r}")
        rows.append((label, text))
    return rows


def train(examples: Iterable[tuple[str, str]]) -> Weights:
    """Binary multinomial naive Bayes (each token counted once per example), Laplace smoothing."""
    counts: dict[str, list[int]] = {}
    docs = [0, 0]
    for label, text in examples:
        cls = CLASS_NAMES.index(label)
        docs[cls] += 1
        for token in set(tokens(text)):
            counts.setdefault(token, [0, 0])[cls] += 1
    if not all(docs):
        raise ValueError("training data needs examples of both classes")
    vocab = len(counts)
    totals = [sum(c[i] for c in counts.values()) + ALPHA * vocab for i in (0, 1)]
    weights = {
        token: round(math.log((pos + ALPHA) / totals[1]) - math.log((neg + ALPHA) / totals[0]), DIGITS)
        for token, (neg, pos) in sorted(counts.items())
    }
    return {"classes": list(CLASS_NAMES), "bias": round(math.log(docs[1] / docs[0]), DIGITS), "weights": weights}


def dumps(weights: Weights) -> str:
    return json.dumps(weights, indent=0, sort_keys=True, ensure_ascii=False) + "\n"


def load_weights(path: Path) -> Weights:
    data: Weights = json.loads(path.read_text(encoding="utf-8"))
    return data


def classify(texts: Sequence[str], weights: Weights) -> tuple[list[str], np.ndarray]:
    """(label per text, [N, 2] FP32 probabilities [p(negative), p(positive)]). Tokens the model
    never saw weigh nothing; a text without known tokens gets the prior (0.5 each: "negative")."""
    table, bias = weights["weights"], weights["bias"]
    scores = np.array([bias + sum(table.get(t, 0.0) for t in tokens(text)) for text in texts], dtype=np.float64)
    positive = 0.5 * (1.0 + np.tanh(0.5 * scores))  # the logistic function, without overflow
    probabilities = np.stack([1.0 - positive, positive], axis=1).astype(np.float32)
    labels = [CLASS_NAMES[1] if p > 0.5 else CLASS_NAMES[0] for p in positive]
    return labels, probabilities.reshape(len(texts), 2)


def decode_texts(values: np.ndarray) -> list[str]:
    """The ``text`` tensor ([N, 1] BYTES) as strings; ValueError for non-UTF-8 or over-long rows."""
    texts = []
    for row, value in enumerate(np.asarray(values, dtype=np.object_).reshape(-1)):
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        if len(raw) > MAX_TEXT_BYTES:
            raise ValueError(f"text[{row}] is {len(raw)} bytes; at most {MAX_TEXT_BYTES} bytes of UTF-8 per text")
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"text[{row}] is not valid UTF-8") from None
    return texts


class TritonPythonModel:
    """Classifies each request of a dynamic batch on its own (one bad request fails alone)."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        self._weights = load_weights(Path(args["model_repository"]) / args["model_version"] / WEIGHTS_FILE)

    def execute(self, requests: list) -> list:
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        pb = self._pb
        values = pb.get_input_tensor_by_name(request, "text").as_numpy()
        try:
            texts = decode_texts(values)
        except ValueError as exc:
            return pb.InferenceResponse(error=pb.TritonError(str(exc), pb.TritonError.INVALID_ARG))
        labels, probabilities = classify(texts, self._weights)
        label = np.array([[name.encode("utf-8")] for name in labels], dtype=np.object_).reshape(len(texts), 1)
        return pb.InferenceResponse(
            output_tensors=[pb.Tensor("label", label), pb.Tensor("probabilities", probabilities)]
        )
