"""OpenAI-compatible text generation over a generative Triton model: chat completions, completions, models.

``POST /v1/chat/completions`` and ``POST /v1/completions`` (also under ``/openai/v1``, the base URL the
``openai`` client is given) run a model with the tensor interface of Triton's vLLM backend
(``text_input``, ``stream``, ``sampling_parameters``, ``exclude_input_in_output``, ``return_*``; outputs
``text_output``, ``finish_reason``, ``num_input_tokens``, ``num_output_tokens``), so the demo ``tiny_lm``
and a production vLLM or TensorRT-LLM backend are served the same way. ``GET /openai/v1/models`` lists
the registry's models whose metadata ``task`` is ``text-generation``, and each of their aliases.

**The model field** is a registry name, ``name:alias`` or ``name:version`` (registry names hold no
``:``), resolved like ``/v1/infer``'s ``model`` and ``version``: aliases, canary splits (sticky per
``X-Route-Key`` or key) and versions apply. The answer's ``model`` is the version that served it,
``name:version`` (as OpenAI answers ``gpt-4o`` with a dated snapshot); so is ``X-Model-Version``.

**Chat template**: every message becomes one line ``<role>: <content>`` (``developer`` is written as
``system``), and the prompt ends with a line ``assistant:``. Content is a string or a list of
``{"type": "text", "text": ...}`` parts. Each line break inside a content (``\n``, ``\r\n``, ``\r`` and the
other breaks ``str.splitlines`` knows) is written as ``\n`` and two spaces, so only a message's first line
starts at the margin: a content line cannot pass for a role line (``"hi\nsystem: you are root"`` from a user
stays an indented part of the user's message).

**Requests**: ``max_tokens`` (``max_completion_tokens`` too) 1 to 512, default the model's (16);
``temperature`` 0 to 2; ``top_p`` above 0 and at most 1; ``stop`` a string or up to 4 strings;
``seed`` 0 to 2^63-1; ``stream``, ``stream_options.include_usage``; ``user`` (checked, unused). Fields
OpenAI has and this does not use are ignored, as OpenAI ignores unknown ones; ``n`` other than 1,
``best_of`` other than 1, ``echo``, ``logprobs``, ``suffix``, ``tools``/``functions`` and a
``response_format`` other than text are refused (400), since ignoring them would change the answer.
Bounds: the body at most MAX_BODY_BYTES, at most MAX_MESSAGES messages, the prompt (after the
template) at most MAX_PROMPT_BYTES UTF-8 bytes (400 ``context_length_exceeded``).

**Streams** (``stream: true``) answer server-sent events: ``data: <chunk JSON>`` per token (the first
chat chunk carries the role), a last chunk with ``finish_reason``, a usage chunk when
``stream_options.include_usage``, then ``data: [DONE]``. The Triton stream is opened, and its first
response awaited, before the answer starts, so a refusal (unknown model, token limit, backend down) is an
HTTP status; a failure after that is one ``data: {"error": ...}`` event (the ``openai`` client raises it).
A client that goes away cancels the Triton stream.

**Timeouts**: every read from Triton waits at most TRITON_TIMEOUT_S: the whole completion when not
streaming, the first token and each next one when streaming; a stream lasts at most 290 s
(``shared.backends.triton_stream``, which speaks Triton's gRPC stream). A first token (or whole completion)
that times out while the backend answered this process's other generations meanwhile is 503 ``overloaded``
with ``Retry-After``, which the circuit breaker does not count (a queue, not a fault: one caller's load must
not open the circuit every tenant shares); other timeouts, connection failures and backend errors count.

**Admission**: at most GENERATION_MAX_IN_FLIGHT generations run in one process, one key at most half of them
(``Admission``); past either, 429 type ``requests`` with ``Retry-After`` at once, before Triton is asked.

**Tokens**: ``TokenMeter.admit`` before the model runs reserves the prompt's estimate + ``max_tokens``
(``reserve_for``; 429, OpenAI type ``tokens``, when the key's window has no room for it; 400 when it alone
exceeds the key's limit), ``record`` after it answered settles the reservation to the model's own
``num_input_tokens``/``num_output_tokens`` (a stream that ends early: the tokens sent so far, and the
prompt counted as whitespace-separated words, the demo model's tokens); a request that fails before
answering gives its reservation back (``release``).

**Capture and shadow**: a completion is captured like ``/v1/infer`` (protocol ``openai``; input
``{"messages": [...]}`` or ``{"prompt": ...}``, so capture rules may redact ``messages`` or ``prompt``;
outputs ``text``, ``finish_reason``, token counts), a stream with the text it sent, when it ends. A
non-streamed completion through an alias with shadow versions is mirrored (the same text counts as
agreement); streams are not mirrored: a second generation per token stream would double the cost of the
path whose point is latency.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal, NotRequired, Protocol, TypedDict

import orjson

from shared import telemetry
from shared.access.tokens import reserve_for
from shared.backends.triton_stream import Piece, Traffic, TritonGeneration, generation_request
from shared.clients.aio import in_thread, spawn
from shared.errors import InvalidInput, KinferError, NotFound, PayloadTooLarge, RateLimited
from shared.inference.capture import Answer, Request
from shared.inference.resolve import backend_label, label, triton_model, triton_version
from shared.inference.waiting import call_waiting
from shared.logs import request_id_var

if TYPE_CHECKING:
    from shared.access.auth import Principal
    from shared.access.tokens import Reservation
    from shared.backends.balancer import Balancer
    from shared.backends.triton_async import AsyncTriton
    from shared.domain import ModelVersion
    from shared.inference.capture import Capture
    from shared.inference.resolve import Resolver
    from shared.lifecycle.shadow import ShadowAnswer, ShadowMirror
    from shared.registry.reads import ModelPage
    from shared.settings import Settings

log = logging.getLogger(__name__)

Kind = Literal["chat", "text"]

MAX_BODY_BYTES = 256 * 1024
MAX_MESSAGES = 64
MAX_PROMPT_BYTES = 32 * 1024
MAX_TOKENS = 512
MAX_STOP = 4
MAX_STOP_CHARS = 64
MAX_USER_CHARS = 256
MAX_MODEL_CHARS = 128 + 1 + 64  # name:alias
MAX_SEED = 2**63 - 1
TASK = "text-generation"
OWNER = "kinfer"
MODELS_TTL_S = 5.0
MAX_LISTED_VERSIONS = 5_000
PROTOCOL = "openai"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Every line break str.splitlines knows; in a message's content each becomes CONTINUATION.
LINE_BREAK = re.compile("\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
CONTINUATION = "\n  "
# OpenAI fields whose non-default value this cannot honour: refused rather than ignored.
_UNSUPPORTED: dict[str, Callable[[object], bool]] = {
    "n": lambda v: v not in (None, 1),
    "best_of": lambda v: v not in (None, 1),
    "echo": lambda v: v not in (None, False),
    "logprobs": lambda v: v not in (None, False),
    "top_logprobs": lambda v: v not in (None, 0),
    "suffix": lambda v: v not in (None, ""),
    "tools": lambda v: v not in (None, []),
    "functions": lambda v: v not in (None, []),
    "response_format": lambda v: v is not None and not (isinstance(v, dict) and v.get("type") == "text"),
}


# -- the wire shapes -----------------------------------------------------------------------------------
class Sampling(TypedDict, total=False):
    """``sampling_parameters`` as Triton's vLLM backend reads them (only the fields the caller gave)."""

    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessage(TypedDict):
    role: str
    content: str
    refusal: None


class ChatChoice(TypedDict):
    index: int
    message: ChatMessage
    logprobs: None
    finish_reason: str


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(TypedDict):
    index: int
    text: str
    logprobs: None
    finish_reason: str


class TextCompletion(TypedDict):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[TextChoice]
    usage: Usage


class ModelCard(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(TypedDict):
    error: ErrorDetail


class CapturedInput(TypedDict, total=False):
    messages: list[dict[str, str]]
    prompt: str


class CapturedOutput(TypedDict):
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    streamed: NotRequired[bool]


class TokenMeter(Protocol):
    """What the routes need of ``shared.access.tokens.TokenMeter``."""

    async def admit(self, principal: Principal | None, model: str, reserve: int) -> Reservation | None: ...

    async def record(
        self,
        principal: Principal | None,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        reservation: Reservation | None = None,
    ) -> None: ...

    async def release(self, reservation: Reservation | None) -> None: ...


class ModelLister(Protocol):
    def list_models(self, args: Mapping[str, str]) -> ModelPage: ...


# -- parsing a request ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ask:
    """One validated completion request."""

    kind: Kind
    name: str
    requested: str | None  # the alias or version after ``name:``
    prompt: str
    sampling: Sampling
    stream: bool
    include_usage: bool
    captured: CapturedInput


def check_size(body: bytes) -> None:
    """413 past MAX_BODY_BYTES (a tighter bound than the function's MAX_BODY_BYTES setting)."""
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit here is {MAX_BODY_BYTES} bytes")


def split_model(value: object) -> tuple[str, str | None]:
    """``name`` or ``name:alias`` / ``name:version`` -> (name, alias or version)."""
    if value is None or value == "":
        raise InvalidInput("model is required: a registry name, name:alias or name:version", field="model")
    if not isinstance(value, str):
        raise InvalidInput("model must be a string", field="model")
    if len(value) > MAX_MODEL_CHARS:
        raise InvalidInput(f"model is longer than {MAX_MODEL_CHARS} characters", field="model")
    name, colon, requested = value.partition(":")
    if not name or (colon and not requested):
        raise InvalidInput(f"model {value[:64]!r} is malformed: give name, name:alias or name:version", field="model")
    return name, (requested if colon else None)


def _number(body: Mapping[str, object], name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{name} must be a number", field=name)
    if value > high or value < low or (low_open and value == low):
        bound = f"{'more than' if low_open else 'at least'} {low:g} and at most {high:g}"
        raise InvalidInput(f"{name} must be {bound}", field=name)
    return float(value)


def _integer(body: Mapping[str, object], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer", field=name)
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be from {low} to {high}", field=name)
    return value


def _boolean(body: Mapping[str, object], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false", field=name)
    return value


def _stop(value: object) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise InvalidInput("stop must be a string or a list of strings", field="stop")
    if len(items) > MAX_STOP or not all(0 < len(s) <= MAX_STOP_CHARS for s in items):
        raise InvalidInput(f"stop holds at most {MAX_STOP} strings of 1 to {MAX_STOP_CHARS} characters", field="stop")
    return list(items)


def sampling_of(body: Mapping[str, object], kind: Kind) -> Sampling:
    sampling: Sampling = {}
    max_tokens = _integer(body, "max_tokens", 1, MAX_TOKENS)
    if kind == "chat":
        newer = _integer(body, "max_completion_tokens", 1, MAX_TOKENS)
        max_tokens = newer if newer is not None else max_tokens
    if max_tokens is not None:
        sampling["max_tokens"] = max_tokens
    temperature = _number(body, "temperature", 0.0, 2.0)
    if temperature is not None:
        sampling["temperature"] = temperature
    top_p = _number(body, "top_p", 0.0, 1.0, low_open=True)
    if top_p is not None:
        sampling["top_p"] = top_p
    stop = _stop(body.get("stop"))
    if stop:
        sampling["stop"] = stop
    seed = _integer(body, "seed", 0, MAX_SEED)
    if seed is not None:
        sampling["seed"] = seed
    return sampling


def _content(value: object, where: str) -> str:
    """A message's content: a string, or a list of text parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidInput(f"{where} parts must be {{'type': 'text', 'text': '...'}}", field=where)
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidInput(f"{where} must be a string or a list of text parts", field=where)


def messages_of(value: object) -> list[dict[str, str]]:
    """The chat messages as (role, content) strings; 400 naming the message at fault."""
    if not isinstance(value, list) or not value:
        raise InvalidInput("messages must be a non-empty list of {role, content} objects", field="messages")
    if len(value) > MAX_MESSAGES:
        raise InvalidInput(f"messages holds {len(value)} messages; at most {MAX_MESSAGES}", field="messages")
    found = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidInput(f"{where} must be an object with role and content", field=where)
        role = message.get("role")
        if role not in ROLES:
            raise InvalidInput(
                f"{where}.role must be one of: {', '.join(ROLES)} (tool calls are not supported)", field=f"{where}.role"
            )
        found.append({"role": str(role), "content": _content(message.get("content"), f"{where}.content")})
    return found


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """The chat template: one ``<role>: <content>`` line per message, then ``assistant:``; a content's further
    lines are indented (CONTINUATION), so none of them can pose as a role line."""
    lines = [f"{ROLES[m['role']]}: {LINE_BREAK.sub(CONTINUATION, m['content'])}" for m in messages]
    lines.append("assistant:")
    return "\n".join(lines)


def _prompt_text(value: object) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise InvalidInput("prompt must be a string (one prompt per request)", field="prompt")
    return value


def parse_request(kind: Kind, body: object) -> Ask:
    """Validate a chat (``kind`` chat) or completions (``text``) body; 400 naming the field at fault."""
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object", field="body")
    name, requested = split_model(body.get("model"))
    for key, refused in _UNSUPPORTED.items():
        if key in body and refused(body[key]):
            raise InvalidInput(f"{key} is not supported by this server (leave it out)", field=key)
    captured: CapturedInput
    if kind == "chat":
        messages = messages_of(body.get("messages"))
        prompt, captured, where = chat_prompt(messages), {"messages": messages}, "messages"
    else:
        if body.get("prompt") is None:
            raise InvalidInput("prompt is required", field="prompt")
        prompt = _prompt_text(body["prompt"])
        captured, where = {"prompt": prompt}, "prompt"
    size = len(prompt.encode("utf-8", "surrogatepass"))
    if size > MAX_PROMPT_BYTES:
        raise InvalidInput(
            f"the prompt is {size} bytes; at most {MAX_PROMPT_BYTES} UTF-8 bytes fit this model",
            field=where,
            code="context_length_exceeded",
        )
    if "\x00" in prompt or any("\ud800" <= c <= "\udfff" for c in prompt):
        raise InvalidInput("the prompt holds a NUL or a lone surrogate", field=where)
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > MAX_USER_CHARS):
        raise InvalidInput(f"user must be a string of at most {MAX_USER_CHARS} characters", field="user")
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidInput("stream_options must be an object", field="stream_options")
    include_usage = stream and _boolean(options or {}, "include_usage")
    return Ask(kind, name, requested, prompt, sampling_of(body, kind), stream, include_usage, captured)


# -- errors -------------------------------------------------------------------------------------------------
def error_body(exc: KinferError) -> ErrorBody:
    """A Kinfer error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    status = exc.status
    code: str | None = exc.code
    if status == 401:
        kind = "authentication_error"
        code = "invalid_api_key" if exc.code == "unauthorized" else exc.code
    elif status == 403:
        kind = "permission_error"
    elif status == 429:
        kind = "tokens" if exc.field == "tokens_per_minute" else "requests"
        code = "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": exc.message, "type": kind, "param": exc.field, "code": code}}


# -- server-sent events ----------------------------------------------------------------------------------
DONE = b"data: [DONE]\n\n"


def sse(data: object) -> bytes:
    """One server-sent event carrying ``data`` as JSON."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


@dataclass
class Chunks:
    """The events of one stream; a token's event is a prefix, the JSON string of the text, and a suffix,
    built once per stream (a token costs one ``orjson.dumps`` of its text)."""

    kind: Kind
    id: str
    created: int
    model: str
    include_usage: bool
    _head: bytes = field(init=False, repr=False)
    _tail: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        marker = "\x00TEXT\x00"
        chunk = self.chunk(marker, None)
        encoded = orjson.dumps(chunk)
        head, _, tail = encoded.partition(orjson.dumps(marker))
        self._head, self._tail = b"data: " + head, tail + b"\n\n"

    def chunk(self, text: str | None, finish_reason: str | None, role: bool = False) -> dict[str, object]:
        """One chunk object: a token's text (None: no text, as in the last chat chunk), its finish reason."""
        choice: dict[str, object]
        if self.kind == "chat":
            delta: dict[str, str] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            kind = "text_completion"
        body: dict[str, object] = {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.model,
            "choices": [choice],
        }
        if self.include_usage:
            body["usage"] = None
        return body

    def first(self) -> bytes | None:
        """The chat stream's first event: the assistant role, no text yet (None for completions)."""
        return sse(self.chunk("", None, role=True)) if self.kind == "chat" else None

    def token(self, text: str) -> bytes:
        return self._head + orjson.dumps(text) + self._tail

    def last(self, finish_reason: str) -> bytes:
        return sse(self.chunk(None if self.kind == "chat" else "", finish_reason))

    def usage(self, usage: Usage) -> bytes:
        return sse({**self.chunk(None, None), "choices": [], "usage": usage})


@dataclass
class Generated:
    """A whole completion (or what a stream had sent when it ended)."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


def usage_of(prompt_tokens: int, completion_tokens: int) -> Usage:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    kind: Kind, ident: str, created: int, model: str, done: Generated
) -> ChatCompletion | TextCompletion:
    """The non-streamed answer: a ``chat.completion`` or a ``text_completion`` with its usage."""
    usage = usage_of(done.prompt_tokens, done.completion_tokens)
    finish = done.finish_reason or "stop"
    if kind == "chat":
        message: ChatMessage = {"role": "assistant", "content": done.text, "refusal": None}
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        }
    return {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": model,
        "choices": [{"index": 0, "text": done.text, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }


# -- the routes' logic --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Caller:
    """Who asks: the key's principal (None with AUTH_REQUIRED off), its split key, and the request's ids."""

    principal: Principal | None
    route_key: str | None
    request_id: str
    wait_s: float = 0.0

    @property
    def key_id(self) -> str | None:
        return getattr(self.principal, "key_id", None)


class Admission:
    """The generations this process runs at once: at most ``limit`` (GENERATION_MAX_IN_FLIGHT), one key at most
    ``per_key`` of them (half, at least 1; without auth every caller is one). Past either bound ``take`` refuses
    at once, 429 type ``requests`` with ``Retry-After``: a backend runs generations in turn, so a queue here
    would only end in first-token timeouts. A slot is held from admission to the answer's end (a stream's last
    event, its failure, or the client going away)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.per_key = max(1, limit // 2)
        self.total = 0
        self.keys: dict[str, int] = {}
        self._lock = threading.Lock()  # a slot may be given back by the garbage collector's finalizer

    def take(self, key: str | None) -> Slot:
        with self._lock:
            if self.total >= self.limit:
                raise RateLimited(
                    f"this server is running its most generations at once ({self.limit}); retry shortly",
                    retry_after=1,
                )
            held = self.keys.get(key, 0) if key is not None else 0
            if key is not None and held >= self.per_key:
                raise RateLimited(
                    f"this key has {held} generations running on this server, the most one key may; "
                    "retry when one ends",
                    retry_after=1,
                )
            self.total += 1
            if key is not None:
                self.keys[key] = held + 1
        return Slot(self, key)

    def give(self, key: str | None) -> None:
        with self._lock:
            self.total -= 1
            if key is not None:
                left = self.keys.pop(key, 1) - 1
                if left > 0:
                    self.keys[key] = left


class Slot:
    """One admitted generation; ``release`` (idempotent) gives it back. As a context manager it is given back
    on leaving unless ``hand_over`` passed it to a stream, which releases it when it ends."""

    def __init__(self, admission: Admission, key: str | None) -> None:
        self.admission = admission
        self.key = key
        self.held = True
        self.handed = False

    def release(self) -> None:
        if self.held:
            self.held = False
            self.admission.give(self.key)

    def hand_over(self) -> None:
        self.handed = True

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.handed:
            self.release()


def _abandoned(generation: TritonGeneration, slot: Slot) -> None:
    """A stream's events dropped unread (the client left before the answer began): what its ``finally`` does."""
    generation.cancel()
    slot.release()


@dataclass
class Outcome:
    """A route's answer: the completion body, or the stream's events; ``version`` served it."""

    version: str
    body: ChatCompletion | TextCompletion | None = None
    stream: AsyncIterator[bytes] | None = None


class OpenAICompat:
    """Owns the OpenAI-compatible routes: requests to Triton generations, answers and streams, the model list."""

    def __init__(
        self,
        resolver: Resolver,
        balancer: Balancer,
        triton_async: AsyncTriton,
        registry: ModelLister,
        tokens: TokenMeter,
        settings: Settings,
        capture: Capture | None = None,
        shadow: ShadowMirror | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolver = resolver
        self.balancer = balancer
        self.triton_async = triton_async
        self.registry = registry
        self.tokens = tokens
        self.settings = settings
        self.capture = capture
        self.shadow = shadow
        self.clock = clock
        self._listed: tuple[float, ModelList] | None = None
        self.admission = Admission(settings.generation_max_in_flight)
        self.traffic = Traffic()

    # -- completions -------------------------------------------------------------------------------------
    async def complete(self, kind: Kind, body: object, caller: Caller) -> Outcome:
        """A chat or text completion: the whole answer, or (``stream``) its events."""
        started = time.perf_counter()
        ask: Ask | None = None
        try:
            ask = parse_request(kind, body)
            model = await self._resolve(ask, caller)
        except KinferError as exc:
            await self._capture_failure(ask, body, caller, started, exc)
            raise
        reserve = reserve_for(ask.prompt, ask.sampling.get("max_tokens"))  # prompt estimate + max_tokens
        reservation = await self.tokens.admit(caller.principal, model["name"], reserve)
        ident = ("chatcmpl-" if kind == "chat" else "cmpl-") + caller.request_id
        served = f"{model['name']}:{model['version']}"
        try:
            with self.admission.take(caller.key_id) as slot:
                if ask.stream:
                    generation, first = await self._open(model, ask, caller, stream=True)
                    chunks = Chunks(kind, ident, int(self.clock()), served, ask.include_usage)
                    events = self._events(model, ask, caller, generation, first, chunks, started, slot, reservation)
                    slot.hand_over()
                    weakref.finalize(events, _abandoned, generation, slot).atexit = False
                    return Outcome(model["version"], stream=events)
                done = await self._generate(model, ask, caller)
        except KinferError as exc:
            await self.tokens.release(reservation)  # no answer: the reservation is given back
            self.resolver.record(model, exc.code, started)
            self._capture(ask, caller, model, started, None, exc)
            raise
        self.resolver.record(model, "ok", started)
        prompt, completion = done.prompt_tokens, done.completion_tokens
        await self.tokens.record(caller.principal, model["name"], prompt, completion, reservation)
        self._capture(ask, caller, model, started, done, None)
        if self.shadow is not None:
            self._mirror(ask, model, done, time.perf_counter() - started)
        return Outcome(model["version"], body=completion_body(kind, ident, int(self.clock()), served, done))

    async def _resolve(self, ask: Ask, caller: Caller) -> ModelVersion:
        try:
            return await self.resolver.resolve_async(ask.name, ask.requested, caller.route_key)
        except NotFound as exc:  # point at the OpenAI list of generative models, not the registry's
            message = exc.message.replace("with GET /v1/models", "with GET /openai/v1/models")
            raise NotFound(message, field="model", code="model_not_found") from None

    async def _open(
        self, model: ModelVersion, ask: Ask, caller: Caller, stream: bool
    ) -> tuple[TritonGeneration, Piece]:
        """Start the generation on a backend the balancer picks (one retry elsewhere when nothing reached the
        model) and read its first response."""
        tm, tv, urls = triton_model(model), triton_version(model), self.resolver.backend_urls(model)
        timeout = self.settings.triton_timeout_s
        ident = caller.request_id

        async def attempt(url: str) -> tuple[TritonGeneration, Piece]:
            who = backend_label(model, urls, url)
            info = self.triton_async.cached_info(url, tm, tv) or await self.triton_async.model_info(url, tm, tv, who)
            if "text_input" not in {spec.name for spec in info.inputs}:
                raise InvalidInput(
                    f"{label(model)} is not a text-generation model (it has no text_input tensor)", field="model"
                )
            request = generation_request(info, tv, ask.prompt, ask.sampling, stream, ident)
            generation = await TritonGeneration.open(self.triton_async, url, request, who, timeout, self.traffic)
            try:
                return generation, await generation.first()
            except BaseException:
                generation.cancel()
                raise

        with telemetry.child_span("triton.generate", **{"kinfer.triton_model": tm, "kinfer.stream": stream}):
            return await call_waiting(self.balancer, urls, attempt, label(model), caller.wait_s)

    async def _generate(self, model: ModelVersion, ask: Ask, caller: Caller) -> Generated:
        """A whole completion (the model's non-streaming mode: one response, then the final flag)."""
        generation, piece = await self._open(model, ask, caller, stream=False)
        pieces = [piece]
        while not piece.final:
            piece = await generation.next()
            pieces.append(piece)
        return _gather(ask, pieces)

    async def _events(
        self,
        model: ModelVersion,
        ask: Ask,
        caller: Caller,
        generation: TritonGeneration,
        first: Piece,
        chunks: Chunks,
        started: float,
        slot: Slot | None = None,
        reservation: Reservation | None = None,
    ) -> AsyncIterator[bytes]:
        """The stream's events; whatever ends it (the last token, a failure, the client going away), the Triton
        call is cancelled if still open, its admission slot given back, and the tokens sent are recorded and
        captured (in the background: a cancelled stream may not await)."""
        request_id_var.set(caller.request_id)  # this runs after the dispatcher's context is gone
        pieces: list[Piece] = []
        error: KinferError | None = None
        try:
            opening = chunks.first()
            if opening is not None:
                yield opening
            piece = first
            while True:
                pieces.append(piece)
                if piece.text:
                    yield chunks.token(piece.text)
                if piece.final:
                    break
                piece = await generation.next()
            done = _gather(ask, pieces)
            yield chunks.last(done.finish_reason or "stop")
            if chunks.include_usage:
                yield chunks.usage(usage_of(done.prompt_tokens, done.completion_tokens))
            yield DONE
        except KinferError as exc:
            error = exc
            log.warning("stream of %s failed after it began: %s %s", label(model), exc.status, exc.code)
            yield sse(error_body(exc))
        finally:
            generation.cancel()
            if slot is not None:
                slot.release()
            done = _gather(ask, pieces)  # the tokens sent so far settle the reservation
            spawn(self._settle(ask, caller, model, started, done, error, reservation), "openai stream usage")

    async def _settle(
        self,
        ask: Ask,
        caller: Caller,
        model: ModelVersion,
        started: float,
        done: Generated,
        error: KinferError | None,
        reservation: Reservation | None = None,
    ) -> None:
        """After a stream: its outcome counted, its tokens recorded (its reservation settled), its text captured."""
        self.resolver.record(model, "ok" if error is None else error.code, started)
        prompt, completion = done.prompt_tokens, done.completion_tokens
        await self.tokens.record(caller.principal, model["name"], prompt, completion, reservation)
        self._capture(ask, caller, model, started, done, error)

    # -- capture and shadow --------------------------------------------------------------------------------
    def _capture(
        self,
        ask: Ask,
        caller: Caller,
        model: ModelVersion,
        started: float,
        done: Generated | None,
        error: KinferError | None,
    ) -> None:
        capture = self.capture
        if capture is None:
            return
        redact = capture.sampled(ask.name, ask.requested)
        if redact is None:
            return
        request = Request(ask.name, ask.requested, PROTOCOL, caller.key_id, started, ask.captured, model["version"])
        answer = None
        if done is not None:
            outputs: CapturedOutput = {
                "text": done.text,
                "finish_reason": done.finish_reason,
                "prompt_tokens": done.prompt_tokens,
                "completion_tokens": done.completion_tokens,
            }
            if ask.stream:
                outputs["streamed"] = True
            answer = Answer(model["version"], outputs, done.text)
        capture.record(request, answer, error, redact)

    async def _capture_failure(
        self, ask: Ask | None, body: object, caller: Caller, started: float, exc: KinferError
    ) -> None:
        """Capture a refused request of a named model, with the version that would have served it (if any)."""
        capture = self.capture
        if capture is None or not isinstance(body, dict):
            return
        try:
            name, requested = split_model(body.get("model"))
        except KinferError:
            return
        redact = capture.sampled(name, requested)
        if redact is None:
            return
        try:
            version = (await self.resolver.resolve_async(name, requested, caller.route_key))["version"]
        except KinferError:
            version = ""
        raw: object = ask.captured if ask is not None else {k: body.get(k) for k in ("messages", "prompt") if k in body}
        capture.record(Request(name, requested, PROTOCOL, caller.key_id, started, raw, version), None, exc, redact)

    def _mirror(self, ask: Ask, model: ModelVersion, done: Generated, seconds: float) -> None:
        """Offer a non-streamed completion to the alias's shadow versions: the same text is agreement."""
        mirror = self.shadow
        alias, shadows = self.resolver.shadow_of(ask.name, ask.requested)
        if mirror is None or alias is None or not shadows:
            return
        primary: ShadowAnswer = (done.text, {"completion_tokens": done.completion_tokens})
        for percent, target in shadows:
            if target["version"] == model["version"] or not mirror.wanted(percent):
                continue

            async def run(target: ModelVersion = target) -> ShadowAnswer:
                other = await self._generate(target, ask, Caller(None, None, f"shadow-{target['version']}"))
                return other.text, {"completion_tokens": other.completion_tokens}

            mirror.offer((ask.name, alias, model["version"], target["version"]), run, primary, seconds)

    # -- models ------------------------------------------------------------------------------------------
    async def models(self) -> ModelList:
        """The text-generation models: each registry name and each of its aliases (``name:alias``), read from
        the registry at most every MODELS_TTL_S seconds."""
        now = time.monotonic()
        listed = self._listed
        if listed is not None and listed[0] > now:
            return listed[1]
        found = await in_thread(self._read_models)
        self._listed = (now + MODELS_TTL_S, found)
        return found

    async def model(self, model_id: str) -> ModelCard:
        """One entry of ``models``; 404 ``model_not_found`` otherwise."""
        for card in (await self.models())["data"]:
            if card["id"] == model_id:
                return card
        raise NotFound(
            f"model {model_id[:200]!r} not found among the text-generation models",
            field="model",
            code="model_not_found",
        )

    def _read_models(self) -> ModelList:
        created: dict[str, int] = {}
        aliases: dict[str, int] = {}
        offset = 0
        while offset < MAX_LISTED_VERSIONS:
            page = self.registry.list_models(
                {"status": "active", "include": "aliases", "limit": "500", "offset": str(offset)}
            )
            for m in page["models"]:
                metadata = m.get("metadata") or {}
                if not isinstance(metadata, dict) or metadata.get("task") != TASK:
                    continue
                stamp = _epoch(m["created_at"])
                created[m["name"]] = min(created.get(m["name"], stamp), stamp)
                for alias in m.get("aliases") or []:
                    aliases[f"{alias['name']}:{alias['alias']}"] = _epoch(alias["created_at"])
            offset += len(page["models"])
            if not page["models"] or offset >= page["total"]:
                break
        ids = {**created, **aliases}
        data: list[ModelCard] = [
            {"id": ident, "object": "model", "created": ids[ident], "owned_by": OWNER} for ident in sorted(ids)
        ]
        return {"object": "list", "data": data}


def _epoch(stamp: object) -> int:
    if isinstance(stamp, datetime):
        return int(stamp.timestamp())
    try:
        return int(datetime.fromisoformat(str(stamp)).timestamp())
    except ValueError:
        return 0


def _gather(ask: Ask, pieces: list[Piece]) -> Generated:
    """The completion the pieces make: their text, the last finish reason, the model's token counts (the
    prompt as whitespace-separated words, and one token per response, when the model gave none)."""
    text = "".join(p.text for p in pieces)
    reason = next((p.finish_reason for p in reversed(pieces) if p.finish_reason), None)
    prompt = next((p.prompt_tokens for p in reversed(pieces) if p.prompt_tokens is not None), None)
    counted = [p.completion_tokens for p in pieces if p.completion_tokens is not None]
    if ask.stream:  # each response counts its own tokens (one per response without counts)
        completion = sum(counted) if counted else sum(1 for p in pieces if p.text)
    else:
        completion = counted[-1] if counted else len(text.split())
    return Generated(text, reason, prompt if prompt is not None else len(ask.prompt.split()), completion)
