"""Triton Python-backend model ``tiny_lm``: a word bigram language model that streams tokens.

Decoupled mode, with the tensor interface of Triton's vLLM backend (triton-inference-server/
vllm_backend ``src/model.py`` and ``src/utils/request.py``), so a client of this model works
unchanged against vLLM:

- inputs ``text_input`` (the prompt), optional ``stream``, ``sampling_parameters`` (JSON),
  ``exclude_input_in_output``, ``return_finish_reason``, ``return_num_input_tokens``,
  ``return_num_output_tokens``; outputs ``text_output`` and, only when asked, ``finish_reason``,
  ``num_input_tokens``, ``num_output_tokens``.
- ``stream`` false: one response with the whole text (prompt + completion unless
  ``exclude_input_in_output``), flagged final. ``stream`` true: one response per token whose
  ``text_output`` is the new text only (a delta); the last one is flagged final. As vLLM does,
  every streamed response carries the asked-for extras: ``finish_reason`` is ``"None"`` until
  the last (``"stop"`` or ``"length"``), ``num_input_tokens`` is the prompt's count each time,
  ``num_output_tokens`` counts the tokens of that response (their sum is the completion's).
- stream true with ``exclude_input_in_output`` false is an error, as in vLLM.

A token is a whitespace-separated word with its leading space. The model (``bigrams.json``
beside this file, written by ``models/build.py`` with ``train``) maps a word, lower-cased and
without surrounding punctuation, to the words that followed it in the training text, with
counts; the text is read as a cycle, so every word has a successor. Temperature 0 is greedy
(the most frequent successor, ties to the first seen); above 0 it samples counts^(1/T) within
``top_p`` with ``numpy.random.default_rng(seed)`` (seed 0 by default), so answers repeat.
``stop`` strings end the completion before their first occurrence (finish reason ``"stop"``),
as vLLM does; the token that completed a stop string still counts as generated.

The maths are pure functions (``train``, ``parse_sampling``, ``generate``) so tests import this
file by path without Triton (NamedTuples, not dataclasses: those need the module in
sys.modules); ``triton_python_backend_utils`` is imported only inside Triton.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple, TypedDict

import numpy as np

MODEL_FILE = "bigrams.json"
DEFAULT_MAX_TOKENS, MAX_TOKENS = 16, 512
MAX_PROMPT_BYTES = 64 * 1024
MAX_STOP, MAX_STOP_CHARS = 16, 256
MAX_PARAMETER_BYTES = 16 * 1024
GREEDY_BELOW = 1e-5  # vLLM treats a temperature under this as greedy
_STRIP = ".,;:!?\"'()[]*-_`"


class Bigrams(TypedDict):
    """Successor counts: ``next[key(word)]`` and ``start`` (after an unknown or empty context),
    each a list of [token, count] in order of first occurrence."""

    next: dict[str, list[list[str | int]]]
    start: list[list[str | int]]


class Sampling(NamedTuple):
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0


class Generation(NamedTuple):
    """One completion: its text (after stop strings), per-token deltas (they join to ``text``),
    the finish reason and the token counts."""

    text: str
    deltas: list[str]
    finish_reason: str
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return len(self.deltas)


def key(word: str) -> str:
    """The context a word gives: lower-cased, without surrounding punctuation."""
    return word.strip(_STRIP).lower()


def count_tokens(text: str) -> int:
    return len(text.split())


def train(text: str) -> Bigrams:
    """Successor counts of every word of ``text`` (read as a cycle); ``start`` counts the first
    words of its lines."""
    words = text.split()
    if not words:
        raise ValueError("the training text holds no words")
    successors: dict[str, dict[str, int]] = {}
    for i, word in enumerate(words):
        follower = words[(i + 1) % len(words)]
        table = successors.setdefault(key(word), {})
        table[follower] = table.get(follower, 0) + 1
    starts: dict[str, int] = {}
    for line in text.splitlines():
        if line.split():
            first = line.split()[0]
            starts[first] = starts.get(first, 0) + 1
    return {
        "next": {k: [[w, c] for w, c in table.items()] for k, table in successors.items()},
        "start": [[w, c] for w, c in starts.items()],
    }


def dumps(model: Bigrams) -> str:
    """JSON with one context per line (readable diffs, the same bytes for the same model)."""
    rows = [
        f"    {json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}"
        for k, v in model["next"].items()
    ]
    start = json.dumps(model["start"], ensure_ascii=False)
    return '{\n  "next": {\n' + ",\n".join(rows) + f'\n  }},\n  "start": {start}\n}}\n'


def load_model(path: Path) -> Bigrams:
    data: Bigrams = json.loads(path.read_text(encoding="utf-8"))
    return data


def _int(params: Mapping[str, object], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError
        number = float(value)
        if not number.is_integer():
            raise ValueError
        result = int(number)
    except (ValueError, OverflowError):
        raise ValueError(f"sampling_parameters.{name} must be an integer from {low} to {high}") from None
    if not low <= result <= high:
        raise ValueError(f"sampling_parameters.{name} must be an integer from {low} to {high}, not {result}")
    return result


def _float(params: Mapping[str, object], name: str, default: float, low: float, high: float, low_open: bool) -> float:
    value = params.get(name)
    if value is None:
        return default
    bounds = f"{'more than' if low_open else 'at least'} {low:g} and at most {high:g}"
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError
        number = float(value)
    except ValueError:
        raise ValueError(f"sampling_parameters.{name} must be a number {bounds}") from None
    if not math.isfinite(number) or number > high or number < low or (low_open and number == low):
        raise ValueError(f"sampling_parameters.{name} must be a number {bounds}, not {value}")
    return number


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ValueError("sampling_parameters.stop must be a string or a list of strings")
    if len(items) > MAX_STOP or not all(0 < len(s) <= MAX_STOP_CHARS for s in items):
        raise ValueError(
            f"sampling_parameters.stop holds at most {MAX_STOP} strings of 1 to {MAX_STOP_CHARS} characters"
        )
    return tuple(items)


def parse_sampling(text: str | bytes | None) -> Sampling:
    """``sampling_parameters`` (a JSON object; vLLM's names) as a Sampling; ValueError saying what is wrong.

    Values may be strings that parse as numbers (vLLM casts them too); null keeps the default;
    names this model does not use (``n``, ``presence_penalty``, ...) are ignored.
    """
    if text is None or text == b"" or text == "":
        return Sampling()
    if len(text) > MAX_PARAMETER_BYTES:
        raise ValueError(f"sampling_parameters is longer than {MAX_PARAMETER_BYTES} bytes")
    try:
        params = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("sampling_parameters must be a JSON object") from None
    if not isinstance(params, dict):
        raise ValueError("sampling_parameters must be a JSON object")
    return Sampling(
        max_tokens=_int(params, "max_tokens", DEFAULT_MAX_TOKENS, 1, MAX_TOKENS),
        temperature=_float(params, "temperature", 0.0, 0.0, 100.0, low_open=False),
        top_p=_float(params, "top_p", 1.0, 0.0, 1.0, low_open=True),
        stop=_stop(params.get("stop")),
        seed=_int(params, "seed", 0, 0, 2**63 - 1),
    )


def _pick(candidates: list[list[str | int]], sampling: Sampling, rng: np.random.Generator) -> str:
    counts = np.array([c[1] for c in candidates], dtype=np.float64)
    if sampling.temperature < GREEDY_BELOW:
        return str(candidates[int(np.argmax(counts))][0])  # argmax: the first of equal counts
    logits = np.log(counts) / sampling.temperature
    p = np.exp(logits - logits.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    kept = int(np.searchsorted(np.cumsum(p[order]), sampling.top_p - 1e-12)) + 1
    order = order[: min(kept, len(order))]
    weights = np.cumsum(p[order])
    index = int(np.searchsorted(weights, rng.random() * weights[-1], side="right"))
    return str(candidates[int(order[min(index, len(order) - 1)])][0])


def generate(model: Bigrams, prompt: str, sampling: Sampling) -> Generation:
    """The completion of ``prompt``: up to ``max_tokens`` tokens, cut before the first stop string."""
    rng = np.random.default_rng(sampling.seed)
    words = prompt.split()
    context = key(words[-1]) if words else None
    produced = ""
    ends: list[int] = []
    finish, text = "length", None
    for _ in range(sampling.max_tokens):
        candidates = model["next"].get(context) if context is not None else None
        word = _pick(candidates or model["start"], sampling, rng)
        produced += " " + word
        ends.append(len(produced))
        found = [i for i in (produced.find(s) for s in sampling.stop) if i >= 0]
        if found:
            finish, text = "stop", produced[: min(found)]
            break
        context = key(word)
    text = produced if text is None else text
    bounds = [0] + [min(end, len(text)) for end in ends]
    deltas = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return Generation(text=text, deltas=deltas, finish_reason=finish, prompt_tokens=len(words))


class Request(NamedTuple):
    """One request's inputs, read the way vLLM's backend reads them."""

    prompt: str
    stream: bool
    prepend_input: bool
    sampling: Sampling
    finish_reason: bool = False
    num_input_tokens: bool = False
    num_output_tokens: bool = False


def read_request(
    prompt: bytes | str,
    stream: bool | None,
    exclude_input_in_output: bool | None,
    sampling_parameters: bytes | str | None,
    extras: Mapping[str, bool] | None = None,
) -> Request:
    """The inputs as a Request; ValueError for a bad prompt or parameters, and for stream with
    ``exclude_input_in_output`` false (vLLM refuses that too)."""
    raw = prompt if isinstance(prompt, bytes) else prompt.encode("utf-8")
    if len(raw) > MAX_PROMPT_BYTES:
        raise ValueError(f"text_input is {len(raw)} bytes; at most {MAX_PROMPT_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("text_input is not valid UTF-8") from None
    streaming = bool(stream)
    prepend = (not exclude_input_in_output) if exclude_input_in_output is not None else not streaming
    if prepend and streaming:
        raise ValueError("When streaming, `exclude_input_in_output` = False is not allowed.")
    extras = extras or {}
    return Request(
        prompt=text,
        stream=streaming,
        prepend_input=prepend,
        sampling=parse_sampling(sampling_parameters),
        finish_reason=bool(extras.get("return_finish_reason")),
        num_input_tokens=bool(extras.get("return_num_input_tokens")),
        num_output_tokens=bool(extras.get("return_num_output_tokens")),
    )


def responses(request: Request, generation: Generation) -> list[dict[str, np.ndarray]]:
    """The output tensors of each response, in order (the last one is sent with the final flag)."""

    def tensors(text: str, finish: str, output_tokens: int) -> dict[str, np.ndarray]:
        out = {"text_output": np.array([text.encode("utf-8")], dtype=np.object_)}
        if request.finish_reason:
            out["finish_reason"] = np.array([finish.encode("utf-8")], dtype=np.object_)
        if request.num_input_tokens:
            out["num_input_tokens"] = np.array([generation.prompt_tokens], dtype=np.uint32)
        if request.num_output_tokens:
            out["num_output_tokens"] = np.array([output_tokens], dtype=np.uint32)
        return out

    if not request.stream:
        text = (request.prompt if request.prepend_input else "") + generation.text
        return [tensors(text, generation.finish_reason, generation.completion_tokens)]
    last = len(generation.deltas) - 1
    return [
        tensors(delta, generation.finish_reason if i == last else "None", 1)
        for i, delta in enumerate(generation.deltas)
    ]


_EXTRAS = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")


class TritonPythonModel:
    """Answers each request through its response sender (decoupled); ``execute`` returns None."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise RuntimeError("tiny_lm needs model_transaction_policy { decoupled: true } in config.pbtxt")
        self._model = load_model(Path(args["model_repository"]) / args["model_version"] / MODEL_FILE)

    def execute(self, requests: list) -> None:
        for request in requests:
            self._answer(request)
        return None

    def _scalar(self, request, name: str):
        tensor = self._pb.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy().reshape(-1)[0]

    def _answer(self, request) -> None:
        pb = self._pb
        sender = request.get_response_sender()
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            parameters = self._scalar(request, "sampling_parameters")
            if parameters is None:
                parameters = request.parameters()  # vLLM reads the request's parameters then
            flags = {name: self._scalar(request, name) for name in ("stream", "exclude_input_in_output", *_EXTRAS)}
            parsed = read_request(
                self._scalar(request, "text_input"),
                None if flags["stream"] is None else bool(flags["stream"]),
                None if flags["exclude_input_in_output"] is None else bool(flags["exclude_input_in_output"]),
                parameters,
                {name: bool(flags[name]) for name in _EXTRAS if flags[name] is not None},
            )
        except ValueError as exc:
            error = pb.TritonError(str(exc), pb.TritonError.INVALID_ARG)
            sender.send(pb.InferenceResponse(error=error), flags=final)
            return
        outputs = responses(parsed, generate(self._model, parsed.prompt, parsed.sampling))
        for i, tensors in enumerate(outputs):
            if parsed.stream and sender.is_cancelled():
                sender.send(flags=final)  # the client went away: end the stream, send no more text
                return
            response = pb.InferenceResponse(output_tensors=[pb.Tensor(n, v) for n, v in tensors.items()])
            sender.send(response, flags=final if i == len(outputs) - 1 else 0)
